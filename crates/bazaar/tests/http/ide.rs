//! The GraphQL IDE at `GET /graphql`: its files come from this server alone, and the page,
//! loaded in headless Chromium with every other host unreachable, renders the schema.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::{TestApp, spawn_app};

/// The page's `src` and `href` attribute values, in order.
fn urls_in(page: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for attribute in [" src=\"", " href=\""] {
        for (at, _) in page.match_indices(attribute) {
            let rest = &page[at + attribute.len()..];
            urls.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    urls
}

async fn page(app: &TestApp) -> String {
    let response = app.get("/graphql").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    // Scripts only from this server, none inline.
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self';"), "{policy}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_graphql_ide_loads_every_file_from_this_server() {
    let app = spawn_app(0).await;
    let page = page(&app).await;
    let urls = urls_in(&page);
    let scripts: Vec<&String> = urls.iter().filter(|u| u.ends_with(".js")).collect();
    assert!(
        scripts.len() >= 4,
        "react, react-dom, graphiql, bootstrap: {urls:?}"
    );
    for url in &urls {
        assert!(
            url.starts_with('/') && !url.starts_with("//"),
            "{url} is not on this server"
        );
        let response = app.get(url).await;
        assert_eq!(response.status(), 200, "{url}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        let expected = match url.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            _ => "text/plain; charset=utf-8",
        };
        assert_eq!(content_type, expected, "{url}");
        if url.starts_with("/graphql/assets/") {
            assert_eq!(
                response.headers()["cache-control"],
                "public, max-age=31536000, immutable",
                "{url}"
            );
        }
        assert!(!response.bytes().await.unwrap().is_empty(), "{url}");
    }
    // The fingerprint in the URL is checked: another build's URL is not served this build's file.
    let graphiql = scripts
        .iter()
        .find(|u| u.ends_with("/graphiql.min.js"))
        .expect("the page loads graphiql.min.js");
    let stale = graphiql.replace("/graphql/assets/", "/graphql/assets/0");
    assert_eq!(app.get(&stale).await.status(), 404);
}

#[tokio::test]
async fn the_schema_is_served_as_sdl() {
    let app = spawn_app(0).await;
    let response = app.get("/graphql/schema").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let sdl = response.text().await.unwrap();
    for expected in [
        "type Query {",
        "type Mutation {",
        "products(",
        "scalar Money",
    ] {
        assert!(sdl.contains(expected), "no `{expected}` in\n{sdl}");
    }
}

/// The Chromium to drive: `BAZAAR_TEST_CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    std::env::var_os("BAZAAR_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Loads `url` in headless Chromium that can reach only loopback addresses, lets the page run
/// (virtual time: timers fire and network loads finish, without real waiting), and returns
/// the DOM as it then is.
async fn rendered_dom(chromium: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            // The network is off: every name fails to resolve and anything not on loopback
            // goes to a proxy that is not there, so a CDN reference could not load.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .kill_on_drop(true)
        .output();
    // A guard against a wedged browser, not a measurement: virtual time ends the run.
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("chromium finishes")
        .expect("chromium starts");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && !dom.is_empty(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

#[tokio::test]
async fn the_graphql_ide_shows_the_schema_in_a_browser_with_no_network() {
    let chromium = chromium();
    if !chromium.is_file() {
        eprintln!(
            "skipping the GraphQL IDE browser test: no Chromium at {} \
             (apt-get install chromium, or set BAZAAR_TEST_CHROMIUM)",
            chromium.display()
        );
        return;
    }
    let app = spawn_app(1).await;
    let dom = rendered_dom(&chromium, &app.url("/graphql")).await;

    // The documentation pane lists the root types only once React has mounted GraphiQL and
    // GraphiQL's introspection query has been answered; the page as served has neither.
    let root = "<span class=\"graphiql-doc-explorer-root-type\">query</span>: ";
    let at = dom
        .find(root)
        .unwrap_or_else(|| panic!("GraphiQL did not render the schema's root types:\n{dom}"));
    let link = &dom[at + root.len()..];
    let link = &link[..link.find("</a>").expect("the query type is a link")];
    assert!(
        link.starts_with("<a class=\"graphiql-doc-explorer-type-name\"")
            && link.ends_with(">Query"),
        "the query type is not shown as `Query`: {link}"
    );
    assert!(
        dom.contains("<span class=\"graphiql-doc-explorer-root-type\">mutation</span>"),
        "no mutation root type in the rendered page"
    );
}
