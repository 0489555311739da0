//! Encryption at rest, as far as it goes: the stored secrets (the JWT signing key) are sealed
//! with a master key that wharf creates on an embedded first start, and a missing or wrong key
//! stops the start with a line that names it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Backend, Server};
use reqwest::StatusCode;

/// The stored signing key: its length and the key id it names (its first byte is the id's
/// length), read straight from the database.
fn stored_signing_key(s: &Server) -> (usize, String) {
    let out = match s.database_url() {
        Some(url) => Command::new("psql")
            .arg(url)
            .args([
                "-Atc",
                "select octet_length(secret), encode(substring(secret from 2 for get_byte(secret, 0)), 'escape') from signing_keys",
            ])
            .output()
            .expect("psql"),
        None => Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3,sys; s=sqlite3.connect(sys.argv[1]).execute('select secret from signing_keys').fetchone()[0]; \
                 print(f'{len(s)}|{s[1:1+s[0]].decode(\"latin-1\")}')",
            )
            .arg(s.data_dir().join("wharf.db"))
            .output()
            .expect("python3"),
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (len, id) = text.split_once('|').unwrap_or((&text, ""));
    (len.parse().unwrap_or(0), id.to_string())
}

/// A JWT for the tester token, and whether it opens `/v2/`.
async fn jwt(s: &Server) -> String {
    let (name, secret) = s.tester.clone().expect("tester");
    let r = s
        .anon
        .get(s.url("/auth/token?scope=repository:app:pull"))
        .basic_auth(name, Some(secret))
        .send()
        .await
        .expect("token");
    let body: serde_json::Value = r.json().await.expect("json");
    body["token"].as_str().expect("token").to_string()
}

async fn accepted(s: &Server, jwt: &str) -> bool {
    let r = s
        .anon
        .get(s.url("/v2/"))
        .bearer_auth(jwt)
        .send()
        .await
        .expect("get");
    r.status() == StatusCode::OK
}

/// Encryption as `/readyz` and the admin API show it: the key id, or `None` when it is off.
async fn shown_key(s: &Server) -> Option<String> {
    let ready: serde_json::Value = s
        .anon
        .get(s.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    let system: serde_json::Value = s
        .anon
        .get(s.url("/api/v1/system"))
        .bearer_auth(common::OWNER_KEY)
        .send()
        .await
        .expect("system")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["encryption"], system["encryption"]);
    assert_eq!(system["storage"], "file");
    assert_eq!(
        system["encryption"]["enabled"],
        system["encryption"]["key_id"].is_string()
    );
    system["encryption"]["key_id"].as_str().map(String::from)
}

/// `wharf serve` on the server's data and database, expected to fail; its last line.
fn start_fails(s: &Server, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(s.data_dir())
        .envs(env.iter().copied());
    if let Some(url) = s.database_url() {
        cmd.args(["--database-url", url]);
    }
    let out = cmd.output().expect("run wharf");
    assert!(!out.status.success(), "wharf started");
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().last().unwrap_or_default().to_string()
}

async fn secrets_are_sealed_under_a_master_key_made_on_first_start(b: Backend) {
    let mut s = Server::start(b).await;
    let key_file = s.data_dir().join("master.key");
    let text = std::fs::read_to_string(&key_file).expect("master.key was created");
    let id = text.split(':').next().unwrap_or_default().to_string();
    assert!(id.starts_with('k'), "{text}");
    let mode = std::fs::metadata(&key_file)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(s.log().contains("created the master key file"));
    let (len, sealed_with) = stored_signing_key(&s);
    assert!(
        len > 32,
        "the signing key is stored sealed, not as its 32 bytes"
    );
    assert_eq!(sealed_with, id);
    let token = jwt(&s).await;
    assert!(accepted(&s, &token).await);
    assert_eq!(shown_key(&s).await, Some(id.clone()));
    let shown = common::cli_ok(&s, &["system"]);
    assert!(shown.contains(&format!("on (master key {id}")), "{shown}");

    // Without its key the server does not start, and says which key it needs.
    s.stop();
    let aside = s.dir.path().join("master.key.aside");
    std::fs::rename(&key_file, &aside).expect("move key");
    let line = start_fails(&s, &[]);
    assert!(
        line.contains(&format!("master key \"{id}\" is needed")),
        "{line}"
    );
    assert!(!key_file.exists(), "no new key was made in its place");
    // Nor with another key.
    let other = format!("other:{}", "ab".repeat(32));
    let line = start_fails(&s, &[("WHARF_MASTER_KEY", &other)]);
    assert!(line.contains(&id) && line.contains("\"other\""), "{line}");
    // With it back, the signing key opens: JWTs issued before still verify.
    std::fs::rename(&aside, &key_file).expect("restore key");
    s.start_again().await;
    assert!(accepted(&s, &token).await);
}

async fn secrets_in_the_clear_are_sealed_when_encryption_is_switched_on(b: Backend) {
    let mut s = Server::start_with(b, &["--encryption", "false"]).await;
    assert!(!s.data_dir().join("master.key").exists());
    assert_eq!(stored_signing_key(&s).0, 32);
    assert_eq!(shown_key(&s).await, None);
    assert!(common::cli_ok(&s, &["system"]).contains("encryption:  off"));
    let token = jwt(&s).await;
    s.set_extra_args(&[]);
    s.restart().await;
    let (len, sealed_with) = stored_signing_key(&s);
    assert!(
        len > 32 && sealed_with.starts_with('k'),
        "{len} {sealed_with}"
    );
    assert!(accepted(&s, &token).await, "the same key, sealed");
    assert_eq!(shown_key(&s).await, Some(sealed_with));
    // Switching encryption off again needs the key: the secret stays sealed.
    s.stop();
    let line = start_fails(&s, &[("WHARF_ENCRYPTION", "false")]);
    assert!(line.contains("encryption is off"), "{line}");
}

on_both_backends!(
    secrets_are_sealed_under_a_master_key_made_on_first_start,
    secrets_in_the_clear_are_sealed_when_encryption_is_switched_on,
);
