//! The GraphQL IDE: GraphiQL at `GET /graphql` and the schema's SDL at `GET /graphql/schema`,
//! served entirely from the binary.
//!
//! GraphiQL and React are vendored in `crates/api/vendor/graphiql/` (its README says which
//! npm packages and versions, and how they were taken) and compiled in with `include_bytes!`,
//! so the page works without any network beyond this server: nothing is fetched at build or
//! run time. The page's own code (`ide/ide.js`, `ide/ide.css`) is served as files too, which
//! lets the page's Content-Security-Policy forbid inline scripts and styles.
//!
//! Asset URLs carry a fingerprint of every asset's bytes
//! (`/graphql/assets/{fingerprint}/{name}`), so they can be cached as immutable: a new build
//! with different assets names different URLs, and the page itself is never cached.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::params::Path;
use crate::problem::ApiError;

/// One file the page loads.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: [Asset; 6] = [
    Asset {
        name: "react.production.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../vendor/graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../vendor/graphiql/react-dom.production.min.js"),
    },
    Asset {
        name: "graphiql.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../vendor/graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: CSS,
        bytes: include_bytes!("../vendor/graphiql/graphiql.min.css"),
    },
    Asset {
        name: "ide.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("ide/ide.js"),
    },
    Asset {
        name: "ide.css",
        content_type: CSS,
        bytes: include_bytes!("ide/ide.css"),
    },
];

/// XXH3 over every asset's name and bytes, as 16 hex digits: part of each asset's URL.
static FINGERPRINT: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for asset in &ASSETS {
        hasher.update(asset.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(asset.bytes);
    }
    format!("{:016x}", hasher.digest())
});

/// The page, with its asset URLs filled in.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("ide/index.html").replace(
        "{assets}",
        &format!("/graphql/assets/{}", FINGERPRINT.as_str()),
    )
});

/// Only this server's own files, and requests to this server: the page needs nothing else.
/// GraphiQL's stylesheet embeds its fonts as `data:` URIs.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     font-src 'self' data:; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /graphql`: GraphiQL, pointed at this server's `/graphql`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            // Always revalidated, so a new build's page (and asset fingerprint) is picked up.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE.as_str(),
    )
        .into_response()
}

/// `GET /graphql/assets/{fingerprint}/{name}`: one of the page's files, cacheable forever
/// because its URL changes with its contents.
pub async fn asset(Path((fingerprint, name)): Path<(String, String)>) -> Response {
    let found = ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .filter(|_| fingerprint == *FINGERPRINT);
    let Some(asset) = found else {
        return ApiError::NotFound(format!("no IDE asset `{name}` in this build")).into_response();
    };
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

/// `GET /graphql/schema`: the schema in GraphQL SDL, for tools and readers.
pub async fn schema(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        state.schema.sdl(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_this_servers_assets() {
        let prefix = format!("/graphql/assets/{}/", FINGERPRINT.as_str());
        let mut named = Vec::new();
        for attribute in ["src=\"", "href=\""] {
            for (at, _) in PAGE.match_indices(attribute) {
                let rest = &PAGE[at + attribute.len()..];
                let url = &rest[..rest.find('"').expect("attributes are quoted")];
                named.push(url.to_owned());
            }
        }
        let assets: Vec<&str> = named
            .iter()
            .filter_map(|url| url.strip_prefix(&prefix))
            .collect();
        // Every asset is loaded by the page, and the page loads nothing else but the SDL link.
        for asset in &ASSETS {
            assert!(assets.contains(&asset.name), "{} is not loaded", asset.name);
        }
        assert_eq!(
            named.len(),
            ASSETS.len() + 1,
            "unexpected URLs in the page: {named:?}"
        );
        assert!(named.contains(&"/graphql/schema".to_owned()));
        assert!(!PAGE.contains("{assets}"));
    }
}
