//! The web console in a real browser: tests/console/flow.mjs drives Debian's headless Chromium
//! (playwright-core) through the console of a real `wharf serve`, pushing with skopeo and
//! checking every page with axe-core. `WHARF_SCREENSHOTS=dir` also saves the screenshots shown
//! in the README (docs/console).

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use crate::common::images::{config, desc, oci_layout, OCI_MANIFEST};
use crate::common::{Backend, Server, OWNER_KEY};
use reqwest::Method;
use serde_json::{json, Value};

use super::{api, require_test_hosts, TENANT_ARGS};

/// An OCI layout (tagged v1) of an Alpine 3.17 image whose apk database holds OpenSSL 3.0.7,
/// which Alpine's advisories say is vulnerable (CVE-2023-0286, fixed in 3.0.8-r0).
fn alpine_layout(dir: &Path) {
    let files: [(&str, &[u8]); 2] = [
        (
            "etc/os-release",
            b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.17.1\n",
        ),
        (
            "lib/apk/db/installed",
            b"C:Q1aaaa=\nP:musl\nV:1.2.3-r4\nA:x86_64\no:musl\n\n\
              C:Q1bbbb=\nP:libcrypto3\nV:3.0.7-r0\nA:x86_64\no:openssl\n\n",
        ),
    ];
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut hdr = tar::Header::new_gnu();
        hdr.set_size(data.len() as u64);
        hdr.set_mode(0o644);
        hdr.set_cksum();
        tar.append_data(&mut hdr, path, data).expect("tar");
    }
    let raw = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let diff_id = crate::common::sha256(&raw);
    let cfg = config("amd64", &[&diff_id]);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &cfg),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    }))
    .expect("manifest");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("dir");
    for blob in [&layer, &cfg, &manifest] {
        std::fs::write(blobs.join(&crate::common::sha256(blob)[7..]), blob).expect("blob");
    }
    let mut top = desc(OCI_MANIFEST, &manifest);
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": "v1" });
    let index = json!({ "schemaVersion": 2, "manifests": [top] });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

/// Imports Alpine 3.17's advisories into the server's database, as an operator would.
fn import_alpine_advisories(s: &Server) {
    let data = crate::support::vulndb_dir().join("alpine-secdb/v3.17");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(["vulndb", "import"]).arg(&data);
    match s.database_url() {
        Some(url) => cmd.args(["--database-url", url]),
        None => cmd.arg("--data-dir").arg(s.data_dir()),
    };
    let out = cmd.output().expect("wharf vulndb import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(super) async fn console_in_a_browser(backend: Backend) {
    require_test_hosts();
    // Storage sampled each second: the chart of storage over time has points to draw.
    let args = [TENANT_ARGS, &["--storage-sample-interval", "1s"]].concat();
    let s = Server::start_with(backend, &args).await;
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
    let alpine = work.path().join("alpine");
    alpine_layout(&alpine);
    import_alpine_advisories(&s);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/console/flow.mjs");
    let mut node = Command::new("node");
    node.arg(script)
        .env("WHARF_URL", &s.base)
        .env("WHARF_KEY", OWNER_KEY)
        .env("WHARF_READ_KEY", viewer["secret"].as_str().expect("secret"))
        .env("WHARF_READ_KEY_ID", viewer["id"].to_string())
        .env("WHARF_IMAGE", &image)
        .env("WHARF_ALPINE", &alpine)
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
