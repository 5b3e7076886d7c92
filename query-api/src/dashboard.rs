//! The dashboard: one HTML page, its script and style, and the chart library it draws with, all
//! compiled into the binary and served at `GET /` and under `/dashboard/`.
//!
//! Guarantee: the page and its assets come from this binary alone (no CDN, no file read at run
//! time), each with its content type, and need no API key; the page holds the key the user
//! pastes in the tab's `sessionStorage` and sends it only to this server's `/v1` routes, which
//! check it like for any other client. The page's source lives in `query-api/dashboard/`; the
//! chart library (uPlot) is vendored there as a pinned, minified file with its license, so a Rust
//! build needs no Node (`query-api/dashboard/vendor.mjs` says how to update it).

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page may load scripts, styles and data from this server only; uPlot sets element styles
/// from script, which `style-src 'unsafe-inline'` allows.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file and the content type it is served with.
struct Asset {
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX_HTML: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../dashboard/index.html"),
};
const APP_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!("../dashboard/app.js"),
};
const APP_CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_bytes!("../dashboard/app.css"),
};
const UPLOT_JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!("../dashboard/vendor/uplot.min.js"),
};
const UPLOT_CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_bytes!("../dashboard/vendor/uplot.min.css"),
};
const UPLOT_LICENSE: Asset = Asset {
    content_type: "text/plain; charset=utf-8",
    body: include_bytes!("../dashboard/vendor/LICENSE.uplot"),
};

/// The dashboard's routes, for any router state.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { serve(&INDEX_HTML) }))
        .route("/dashboard/app.js", get(|| async { serve(&APP_JS) }))
        .route("/dashboard/app.css", get(|| async { serve(&APP_CSS) }))
        .route(
            "/dashboard/vendor/uplot.min.js",
            get(|| async { serve(&UPLOT_JS) }),
        )
        .route(
            "/dashboard/vendor/uplot.min.css",
            get(|| async { serve(&UPLOT_CSS) }),
        )
        .route(
            "/dashboard/vendor/LICENSE.uplot",
            get(|| async { serve(&UPLOT_LICENSE) }),
        )
}

fn serve(asset: &Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            // The files change with the binary: revalidate rather than keep a stale page.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            // The URL never carries the key, but keep the page's address to itself anyway.
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    /// Serves the dashboard on a free port and returns its base URL.
    async fn start() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router::<()>()).await });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn test_dashboard_serves_every_asset_with_its_content_type() {
        let base = start().await;
        let cases = [
            ("/", "text/html; charset=utf-8", INDEX_HTML.body),
            (
                "/dashboard/app.js",
                "text/javascript; charset=utf-8",
                APP_JS.body,
            ),
            (
                "/dashboard/app.css",
                "text/css; charset=utf-8",
                APP_CSS.body,
            ),
            (
                "/dashboard/vendor/uplot.min.js",
                "text/javascript; charset=utf-8",
                UPLOT_JS.body,
            ),
            (
                "/dashboard/vendor/uplot.min.css",
                "text/css; charset=utf-8",
                UPLOT_CSS.body,
            ),
            (
                "/dashboard/vendor/LICENSE.uplot",
                "text/plain; charset=utf-8",
                UPLOT_LICENSE.body,
            ),
        ];
        for (path, content_type, body) in cases {
            let answer = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(answer.status(), 200, "{path}");
            assert_eq!(answer.headers()["content-type"], content_type, "{path}");
            assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
            assert_eq!(answer.bytes().await.unwrap().as_ref(), body, "{path}");
        }
    }

    #[test]
    fn test_dashboard_page_references_only_served_assets() {
        let page = std::str::from_utf8(INDEX_HTML.body).unwrap();
        for reference in page
            .split(['"', '\''])
            .filter(|s| s.starts_with("/dashboard/"))
        {
            let served = [
                "/dashboard/app.js",
                "/dashboard/app.css",
                "/dashboard/vendor/uplot.min.js",
                "/dashboard/vendor/uplot.min.css",
                "/dashboard/vendor/LICENSE.uplot",
            ];
            assert!(served.contains(&reference), "{reference} is not served");
        }
        assert!(page.contains("/dashboard/vendor/uplot.min.js"));
        assert!(page.contains("/dashboard/app.js"));
    }
}
