//! Request body formats: which content types and encodings ingest reads, and gzip decoding with
//! a hard bound.
//!
//! Guarantee: decoding a gzip body never holds more than `limit + 1` decoded bytes, however
//! far the body would expand (a gzip bomb is refused after `limit + 1` bytes, not after it has
//! filled memory).

use std::borrow::Cow;
use std::io::Read;

use axum::http::{HeaderMap, header};
use flate2::bufread::GzDecoder;

use schemas::tenant::Tenant;
use schemas::{BodyFormat, Limits, Record, parse_events};

use crate::error::ApiError;
use crate::tenant_rules;

/// How the body bytes are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The event format named by the `Content-Type` header: `application/json` (one event or an
/// array) or `application/x-ndjson`; parameters such as `charset` are ignored.
pub fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default();
    let media_type = value.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(BodyFormat::Json)
    } else if media_type.eq_ignore_ascii_case("application/x-ndjson") {
        Ok(BodyFormat::NdJson)
    } else {
        Err(ApiError::UnsupportedMediaType { found: value })
    }
}

/// The encoding named by the `Content-Encoding` header: none, `identity` or `gzip`.
pub fn body_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    match value.trim() {
        v if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") => {
            Ok(Encoding::Gzip)
        }
        v if v.is_empty() || v.eq_ignore_ascii_case("identity") => Ok(Encoding::Identity),
        _ => Err(ApiError::UnsupportedEncoding {
            found: value.into_owned(),
        }),
    }
}

/// Gzip's fixed header (10 bytes) and trailer (CRC-32 and ISIZE, 8 bytes): no stream is
/// shorter.
const GZIP_MIN_BYTES: usize = 18;

/// The most bytes the one-member gzip body `compressed` may decode to: the size its trailer
/// declares (ISIZE, the decoded length modulo 2^32), capped at `max_body_bytes`. Decoding that
/// gives more is refused by [`gunzip_bounded`], so this bound is safe to reserve memory by.
pub fn gzip_decoded_bound(compressed: &[u8], max_body_bytes: usize) -> usize {
    let Some(trailer) = compressed
        .len()
        .checked_sub(4)
        .filter(|_| compressed.len() >= GZIP_MIN_BYTES)
        .and_then(|start| compressed.get(start..))
    else {
        return max_body_bytes;
    };
    let declared = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    usize::try_from(declared).map_or(max_body_bytes, |declared| declared.min(max_body_bytes))
}

/// Decodes a gzip body of one gzip member, holding at most [`gzip_decoded_bound`] + 1 decoded
/// bytes: a body that decodes to more than `max_body_bytes` is refused as too large, one that
/// decodes to more than its trailer declares as broken. Several concatenated members are
/// refused: each costs a fresh decoder, so a body of many tiny members would cost seconds of
/// CPU for nothing.
pub fn gunzip_bounded(compressed: &[u8], max_body_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let expected = gzip_decoded_bound(compressed, max_body_bytes);
    let mut decoded = Vec::with_capacity(expected);
    let mut decoder = GzDecoder::new(compressed);
    let broken = |error: std::io::Error| ApiError::InvalidGzip(error.to_string());
    (&mut decoder)
        .take(expected as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(broken)?;
    if decoded.len() > expected {
        if expected < max_body_bytes {
            // The trailer understated the size. Count the rest, without keeping it, up to the
            // body limit, to tell a body too large (ISIZE wrapped past 4 GiB) from a broken one.
            let room = (max_body_bytes - decoded.len()) as u64 + 1;
            let understated = || {
                ApiError::InvalidGzip(format!(
                    "the stream decodes to more bytes than the {expected} its trailer declares"
                ))
            };
            // Reaching the end fails the trailer check: the stream is broken either way.
            let rest = std::io::copy(&mut (&mut decoder).take(room), &mut std::io::sink())
                .map_err(|_| understated())?;
            if rest < room {
                return Err(understated());
            }
        }
        return Err(ApiError::BodyTooLarge {
            limit_bytes: max_body_bytes,
        });
    }
    if !decoder.into_inner().is_empty() {
        return Err(ApiError::InvalidGzip(
            "bytes follow the end of the gzip stream (several gzip members are not accepted)"
                .into(),
        ));
    }
    Ok(decoded)
}

/// The records of a request body as it came off the wire: decodes it (`encoding`, at most
/// `max_body_bytes` decoded), parses and validates every event (`schemas::parse_events` under
/// `limits`), and checks them against the rules of `tenant`. This is all of `POST /v1/events`
/// that reads client bytes, kept in one function so the fuzz target covers exactly it.
///
/// CPU-bound: call it off the async workers.
pub fn read_events(
    body: &[u8],
    encoding: Encoding,
    format: BodyFormat,
    tenant: &Tenant,
    received_ms: i64,
    limits: &Limits,
    max_body_bytes: usize,
) -> Result<Vec<Record>, ApiError> {
    let decoded = match encoding {
        Encoding::Identity => Cow::Borrowed(body),
        Encoding::Gzip => Cow::Owned(gunzip_bounded(body, max_body_bytes)?),
    };
    let records = parse_events(&decoded, format, &tenant.name, received_ms, limits)
        .map_err(|problems| ApiError::InvalidEvents { problems })?;
    tenant_rules::check_batch(tenant, &records, &decoded, format)
        .map_err(|problems| ApiError::InvalidEvents { problems })?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn test_gunzip_bounded_refuses_concatenated_members() {
        let mut body = gzip(b"[");
        body.extend(gzip(b"]"));
        let err = gunzip_bounded(&body, 1 << 20).unwrap_err();
        assert!(matches!(err, ApiError::InvalidGzip(ref reason) if reason.contains("members")));
    }

    #[test]
    fn test_gunzip_bounded_round_trips_up_to_the_limit() {
        let plain = br#"{"type":"view"}"#.repeat(10);
        assert_eq!(gunzip_bounded(&gzip(&plain), plain.len()).unwrap(), plain);
    }

    #[test]
    fn test_gunzip_bounded_stops_a_bomb_at_the_limit() {
        // 16 MiB of zeros compress to about 16 KiB.
        let bomb = gzip(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 1 << 20);
        let err = gunzip_bounded(&bomb, 1 << 20).unwrap_err();
        assert!(matches!(err, ApiError::BodyTooLarge { limit_bytes } if limit_bytes == 1 << 20));
    }

    #[test]
    fn test_gzip_decoded_bound_reads_the_trailer_and_caps_it() {
        let plain = br#"{"type":"view"}"#.repeat(10);
        let body = gzip(&plain);
        assert_eq!(gzip_decoded_bound(&body, 1 << 20), plain.len());
        assert_eq!(gzip_decoded_bound(&body, 7), 7);
        assert_eq!(gzip_decoded_bound(b"short", 1000), 1000);
    }

    #[test]
    fn test_gunzip_bounded_refuses_a_trailer_that_understates_the_size() {
        let plain = br#"{"type":"view"}"#.repeat(10);
        let mut body = gzip(&plain);
        let at = body.len() - 4;
        body[at..].copy_from_slice(&10u32.to_le_bytes());
        let err = gunzip_bounded(&body, 1 << 20).unwrap_err();
        assert!(
            matches!(err, ApiError::InvalidGzip(ref reason) if reason.contains("trailer")),
            "{err:?}"
        );
        // Understated and over the limit: too large wins, as it does for an honest trailer.
        let big = vec![b' '; 4096];
        let mut body = gzip(&big);
        let at = body.len() - 4;
        body[at..].copy_from_slice(&10u32.to_le_bytes());
        let err = gunzip_bounded(&body, 1000).unwrap_err();
        assert!(
            matches!(err, ApiError::BodyTooLarge { limit_bytes: 1000 }),
            "{err:?}"
        );
    }

    #[test]
    fn test_gunzip_bounded_refuses_broken_streams() {
        let mut broken = gzip(b"[{\"type\":\"view\"}]");
        broken.truncate(broken.len() - 6);
        assert!(matches!(
            gunzip_bounded(&broken, 1024),
            Err(ApiError::InvalidGzip(_))
        ));
        assert!(matches!(
            gunzip_bounded(b"not gzip", 1024),
            Err(ApiError::InvalidGzip(_))
        ));
    }

    #[test]
    fn test_body_format_reads_media_type_without_parameters() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(matches!(body_format(&headers), Ok(BodyFormat::Json)));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        assert!(matches!(body_format(&headers), Ok(BodyFormat::NdJson)));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            body_format(&headers),
            Err(ApiError::UnsupportedMediaType { .. })
        ));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(matches!(
            body_encoding(&headers),
            Err(ApiError::UnsupportedEncoding { .. })
        ));
    }
}
