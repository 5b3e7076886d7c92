//! What the public API adds around every route: validators and caching headers on answers,
//! CORS for the configured browser origins, and gzip for clients that accept it.
//!
//! Guarantee: a `200` answer under `/v1/` and `/openapi.json` carries a weak `ETag` that is a
//! hash of its JSON body (the same body gives the same tag, whatever its encoding on the wire),
//! `Cache-Control: private, max-age=5` and `Vary: Authorization`; a request whose
//! `If-None-Match` names that tag gets `304` with no body. Cross-origin requests are answered
//! only for the origins in `cors_allowed_origins` (none by default). Bodies are gzip-compressed
//! only when the client sends `Accept-Encoding: gzip`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use xxhash_rust::xxh64::xxh64;

use crate::config::{Config, ConfigError};
use crate::error::QueryError;

/// Answers change as events arrive, so clients and private caches may reuse one for a few
/// seconds only; the ETag makes revalidating after that cheap.
pub(crate) const CACHE_CONTROL: &str = "private, max-age=5";

/// How long a browser may reuse a CORS preflight answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Wraps the public router in the ETag, CORS and compression layers `config` asks for.
pub(crate) fn wrap(router: Router, config: &Config) -> Result<Router, ConfigError> {
    let mut router = router.layer(middleware::from_fn(conditional));
    if let Some(cors) = cors(config)? {
        router = router.layer(cors);
    }
    // Outermost, so that the ETag is computed over the uncompressed body.
    Ok(router.layer(CompressionLayer::new().gzip(true)))
}

fn cors(config: &Config) -> Result<Option<CorsLayer>, ConfigError> {
    let allow_origin = match config.cors_origins()? {
        None => AllowOrigin::any(),
        Some(origins) if origins.is_empty() => return Ok(None),
        Some(origins) => AllowOrigin::list(origins),
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET])
            .allow_headers([header::AUTHORIZATION, header::IF_NONE_MATCH])
            .expose_headers([header::ETAG])
            .max_age(CORS_MAX_AGE),
    ))
}

/// Adds `ETag`, `Cache-Control` and `Vary` to cacheable answers and turns a matching
/// `If-None-Match` into `304`.
async fn conditional(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let cacheable =
        request.method() == Method::GET && (path.starts_with("/v1/") || path == "/openapi.json");
    if !cacheable {
        return next.run(request).await;
    }
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The answers are whole JSON documents built in memory; reading one back cannot run long.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => return QueryError::Internal(error.to_string()).into_response(),
    };
    let etag = format!("W/\"{:016x}\"", xxh64(&bytes, 0));
    let etag = HeaderValue::from_str(&etag).expect("a quoted hex digest is a valid header value");
    let headers = &mut parts.headers;
    headers.insert(header::ETAG, etag.clone());
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    // The answer depends on the tenant of the key.
    headers.append(header::VARY, HeaderValue::from_static("authorization"));
    if if_none_match.is_some_and(|value| matches_etag(&value, &etag)) {
        headers.remove(header::CONTENT_TYPE);
        headers.remove(header::CONTENT_LENGTH);
        parts.status = StatusCode::NOT_MODIFIED;
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Weak comparison (RFC 9110, 13.1.2): `*`, or any listed tag whose opaque part equals ours.
fn matches_etag(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let ours = opaque(etag.to_str().unwrap_or_default());
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || opaque(tag) == ours)
}

fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_if_none_match_compares_weakly_and_reads_lists() {
        let etag = HeaderValue::from_static("W/\"00ff\"");
        for matching in ["W/\"00ff\"", "\"00ff\"", "\"aa\", W/\"00ff\"", "*"] {
            assert!(
                matches_etag(&HeaderValue::from_static(matching), &etag),
                "{matching}"
            );
        }
        for other in ["W/\"00fe\"", "", "00ff"] {
            assert!(
                !matches_etag(&HeaderValue::from_static(other), &etag),
                "{other}"
            );
        }
    }
}
