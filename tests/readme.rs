//! README.md's command blocks run in order, as printed, against a fresh server: the README
//! cannot drift from the binary again.
//!
//! The only changes made to the text: the example address `127.0.0.1:5000` becomes the test
//! server's, `wak_...` (the key `wharf serve` printed) the server's owner key, and
//! `../shared/data/vulndb` the shared vulnerability data (found as the scanner tests find it).
//! The set-up block (start the server, run this suite) is checked for its two commands but not
//! run from here.

mod common;
#[path = "../crates/wharf-scan/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{docker_dir, Skopeo};
use common::{Backend, Server, OWNER_KEY};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fenced blocks of a Markdown text with their info string and the section they are in.
fn blocks(markdown: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match &mut open {
            Some((info, body)) => {
                if line.trim_start().starts_with("```") {
                    out.push((section.clone(), info.clone(), std::mem::take(body)));
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            None => {
                if let Some(title) = line.strip_prefix("## ") {
                    section = title.trim().to_string();
                } else if let Some(info) = line.trim_start().strip_prefix("```") {
                    open = Some((info.trim().to_string(), String::new()));
                }
            }
        }
    }
    out
}

/// The commands of a shell block: lines that are neither blank nor comments.
fn commands(block: &str) -> Vec<&str> {
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_command_works_as_printed() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let all = blocks(&readme);
    let (setup, rest): (Vec<_>, Vec<_>) = all
        .into_iter()
        .filter(|(_, info, _)| info == "sh")
        .partition(|(section, _, _)| section == "Set-up");
    assert_eq!(setup.len(), 1, "one set-up block");
    assert_eq!(
        commands(&setup[0].2),
        ["cargo run --release -- serve", "scripts/test"],
        "README holds exactly the two set-up commands"
    );
    assert!(rest.len() >= 4, "the example blocks were not found");

    // The scanning example imports ../shared/data/vulndb, beside the checkout.
    let vulndb = support::vulndb_dir();

    let s = Server::start(Backend::Sqlite).await;
    // The commands run where `wharf serve` ran: its ./wharf-data is the server's.
    let cwd = s.dir.path().join("work");
    std::fs::create_dir_all(&cwd).expect("work dir");
    std::os::unix::fs::symlink(s.data_dir(), cwd.join("wharf-data")).expect("link data dir");
    // `image.tar`, the `docker save` file the examples push.
    let skopeo = Skopeo::new(s.dir.path());
    docker_dir(&s.dir.path().join("image-dir"), &[1, 2]);
    skopeo.run(&[
        "copy",
        &format!("dir:{}", s.dir.path().join("image-dir").display()),
        &format!(
            "docker-archive:{}:team/app:v1",
            cwd.join("image.tar").display()
        ),
    ]);
    // `wharf` on the PATH, as `cargo install` leaves it.
    let bin = s.dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wharf"), bin.join("wharf")).expect("link");
    let home = s.dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");

    let address = format!("127.0.0.1:{}", s.port);
    let mut script = String::from("set -euo pipefail\n");
    for (section, _, body) in &rest {
        script.push_str(&format!("echo '### {section}'\n"));
        script.push_str(
            &body
                .replace("127.0.0.1:5000", &address)
                .replace("wak_...", OWNER_KEY)
                .replace("../shared/data/vulndb", &vulndb.display().to_string()),
        );
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&cwd)
        .env("PATH", path)
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("WHARF_URL")
        .env_remove("WHARF_KEY")
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "a README command failed:\n--- script\n{script}\n--- stdout\n{}\n--- stderr\n{}\n--- server log\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    // The blocks did what they say: the image went through, the registry came and went.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("created registry payments"), "{stdout}");
    assert!(stdout.contains("deleted registry payments"), "{stdout}");
    assert!(cwd.join("app-copy/index.json").is_file());
    assert!(cwd.join("app-layout/index.json").is_file());
}
