//! The web console in a real browser: tests/console/flow.mjs drives Debian's headless Chromium
//! (playwright-core) through the console of a real `wharf serve`, pushing with skopeo and
//! checking every page with axe-core. `WHARF_SCREENSHOTS=dir` also saves the screenshots shown
//! in the README (docs/console).

use std::process::Command;

use crate::common::images::oci_layout;
use crate::common::{Backend, Server, OWNER_KEY};
use reqwest::Method;
use serde_json::{json, Value};

use super::{api, require_test_hosts, TENANT_ARGS};

pub(super) async fn console_in_a_browser(backend: Backend) {
    require_test_hosts();
    let s = Server::start_with(backend, TENANT_ARGS).await;
    let r = api(
        &s,
        OWNER_KEY,
        Method::POST,
        "/api/v1/admin-keys",
        Some(json!({ "name": "viewer", "permissions": ["registry:read"] })),
    )
    .await;
    assert_eq!(r.status(), 201);
    let viewer: Value = r.json().await.expect("key");
    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("image");
    oci_layout(&image);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/console/flow.mjs");
    let mut node = Command::new("node");
    node.arg(script)
        .env("WHARF_URL", &s.base)
        .env("WHARF_KEY", OWNER_KEY)
        .env("WHARF_READ_KEY", viewer["secret"].as_str().expect("secret"))
        .env("WHARF_READ_KEY_ID", viewer["id"].to_string())
        .env("WHARF_IMAGE", &image)
        .env("WHARF_HOST_SUFFIX", format!(".wharf.test:{}", s.port))
        .env("HOME", work.path())
        .env("REGISTRY_AUTH_FILE", work.path().join("auth.json"));
    if let Ok(dir) = std::env::var("WHARF_SCREENSHOTS") {
        node.env("SCREENSHOTS", dir);
    }
    let out = node.output().expect("node runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "console flows failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What the browser did happened: the registry is gone.
    let r = api(&s, OWNER_KEY, Method::GET, "/api/v1/registries/alpha", None).await;
    assert_eq!(r.status(), 404);
    // The console's cookie is refused without the console's header (a page of another site
    // cannot add it), and accepted with it.
    let cookie = format!("wharf_console={OWNER_KEY}");
    let r = s
        .anon
        .get(s.url("/api/v1/registries"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
    let r = s
        .anon
        .get(s.url("/api/v1/registries"))
        .header("cookie", &cookie)
        .header("x-wharf-console", "1")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    // The pages are the binary's own, under a policy that runs no other script.
    let r = s.anon.get(s.url("/console/")).send().await.expect("page");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let page = r.text().await.expect("html");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no outside asset: {page}"
    );
}
