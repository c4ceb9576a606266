//! The browser pages sessionview serves itself: GraphiQL (`/graphiql`) and the live session
//! monitor (`/monitor`), with their assets under `/assets/`. Our own files are in the crate's
//! `web/` directory; GraphiQL and React are npm registry packages embedded at build time
//! (`build.rs`, `scripts/tools/web-assets`). Nothing is loaded from elsewhere, and a content
//! security policy tells the browser so.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

mod vendor {
    include!(concat!(env!("OUT_DIR"), "/vendor.rs"));
}

/// Everything from this server, nothing inline but style attributes (GraphiQL sets some), no
/// framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Our own assets: (name under /assets/, content type, text).
const OWN: [(&str, &str, &str); 6] = [
    ("sign.js", JS, include_str!("../../web/sign.js")),
    ("page.css", CSS, include_str!("../../web/page.css")),
    ("graphiql.js", JS, include_str!("../../web/graphiql.js")),
    (
        "graphiql-page.css",
        CSS,
        include_str!("../../web/graphiql-page.css"),
    ),
    ("monitor.js", JS, include_str!("../../web/monitor.js")),
    ("monitor.css", CSS, include_str!("../../web/monitor.css")),
];

/// Whether this build embeds GraphiQL's assets.
pub fn has_graphiql_assets() -> bool {
    !vendor::VENDOR.is_empty()
}

/// The pages' routes.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/graphiql",
            get(|| async { page(include_str!("../../web/graphiql.html")) }),
        )
        .route(
            "/monitor",
            get(|| async { page(include_str!("../../web/monitor.html")) }),
        )
        .route("/assets/{*path}", get(asset))
}

fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn page(html: &'static str) -> Response {
    secured(
        (
            [
                (header::CONTENT_TYPE, HTML),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            html,
        )
            .into_response(),
    )
}

async fn asset(Path(path): Path<String>) -> Response {
    // Third-party files change only with a new build; ours are revalidated.
    let found = match path.strip_prefix("vendor/") {
        Some(name) => vendor::VENDOR
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, t, bytes)| (*t, *bytes, "public, max-age=86400")),
        None => OWN
            .iter()
            .find(|(n, _, _)| *n == path)
            .map(|(_, t, text)| (*t, text.as_bytes(), "no-cache")),
    };
    match found {
        Some((content_type, bytes, cache)) => secured(
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, cache),
                ],
                bytes,
            )
                .into_response(),
        ),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
