//! The scanner end to end through the real `wharf` binary: `wharf vulndb import` of the shared
//! advisory data into SQLite and PostgreSQL, then `wharf scan` of images built here from real
//! package formats (Alpine's apk database, a wheel installed by pip, Cargo.lock, a Go binary),
//! with the findings checked against the advisories.

mod common;

#[path = "../crates/wharf-scan/tests/support/mod.rs"]
mod support;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::Backend;
use serde_json::Value;
use support::{gzip, oci_layout, tar, Entry};

fn wharf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .output()
        .expect("run wharf")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A metadata database to import into: a fresh SQLite directory or PostgreSQL database.
struct Db {
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Db {
    fn new(backend: Backend) -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = match backend {
            Backend::Sqlite => vec!["--data-dir".into(), dir.path().display().to_string()],
            Backend::Postgres | Backend::PostgresS3 => vec![
                "--database-url".into(),
                format!(
                    "{}/wharf_e2e_{}",
                    common::postgres_base(),
                    uuid::Uuid::new_v4().simple()
                ),
            ],
        };
        Db { args, _dir: dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.args.iter().map(String::as_str));
        wharf(&all)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "wharf {args:?} failed: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn scan(&self, image: &Path, extra: &[&str]) -> Value {
        let mut args = vec!["scan", image.to_str().expect("path"), "--json"];
        args.extend(extra);
        let out = self.ok(&args);
        serde_json::from_str(&out).expect("scan --json prints JSON")
    }
}

/// One database per backend with all of shared/data/vulndb imported, shared by the tests.
fn full_db(backend: Backend) -> &'static Db {
    static SQLITE: OnceLock<Db> = OnceLock::new();
    static POSTGRES: OnceLock<Db> = OnceLock::new();
    let cell = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres | Backend::PostgresS3 => &POSTGRES,
    };
    cell.get_or_init(|| {
        let db = Db::new(backend);
        let data = support::vulndb_dir();
        let out = db.ok(&["vulndb", "import", data.to_str().expect("path")]);
        assert!(out.contains("debian12: 17549 added"), "{out}");
        db
    })
}

/// (package, id, fixed) of every finding.
fn findings(report: &Value) -> Vec<(String, String, Option<String>)> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["package"].as_str().unwrap_or_default().to_string(),
                f["id"].as_str().unwrap_or_default().to_string(),
                f["fixed"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn finding<'a>(report: &'a Value, package: &str, id: &str) -> Option<&'a Value> {
    report["findings"]
        .as_array()?
        .iter()
        .find(|f| f["package"] == package && f["id"] == id)
}

fn layout(dir: &Path, layers: &[Vec<u8>]) -> PathBuf {
    oci_layout(dir, layers);
    dir.to_path_buf()
}

const ALPINE_OS: &[u8] =
    b"NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.17.1\nPRETTY_NAME=\"Alpine Linux v3.17\"\n";

fn apk_db(with_busybox: bool) -> Vec<u8> {
    let mut db = String::from(
        "C:Q1aaaa=\nP:musl\nV:1.2.3-r4\nA:x86_64\nS:383152\nI:622592\nT:the musl c library\no:musl\nm:Timo Teräs\nt:1668104379\n\n\
         C:Q1bbbb=\nP:libcrypto3\nV:3.0.7-r0\nA:x86_64\nT:Crypto library from openssl\no:openssl\n\n\
         C:Q1cccc=\nP:libssl3\nV:3.0.7-r0\nA:x86_64\nT:SSL shared libraries\no:openssl\n\n",
    );
    if with_busybox {
        db.push_str("C:Q1dddd=\nP:busybox\nV:1.35.0-r17\nA:x86_64\no:busybox\n\n");
    }
    db.into_bytes()
}

fn alpine_image(dir: &Path, remove_busybox: bool) -> PathBuf {
    let mut layers = vec![gzip(&tar(&[
        Entry::File("etc/os-release", ALPINE_OS),
        Entry::File("lib/apk/db/installed", &apk_db(true)),
    ]))];
    if remove_busybox {
        // `apk del busybox` in a later layer rewrites the database without it.
        layers.push(gzip(&tar(&[Entry::File(
            "lib/apk/db/installed",
            &apk_db(false),
        )])));
    }
    layout(dir, &layers)
}

fn alpine_findings(backend: Backend) {
    let db = full_db(backend);
    let dir = tempfile::tempdir().expect("tempdir");
    let report = db.scan(&alpine_image(dir.path(), false), &[]);
    assert_eq!(report["os"]["id"], "alpine");
    let f = finding(&report, "libcrypto3", "CVE-2023-0286").expect("CVE-2023-0286 for libcrypto3");
    assert_eq!(f["fixed"], "3.0.8-r0");
    assert_eq!(f["fixable"], true);
    assert_eq!(f["source_package"], "openssl");
    assert_eq!(f["sources"][0], "alpine-secdb-v3.17-main");
    // NVD scores it 7.4.
    assert_eq!(
        (f["score"].as_f64(), f["severity"].as_str()),
        (Some(7.4), Some("high"))
    );
    let g = finding(&report, "libssl3", "CVE-2022-3996").expect("CVE-2022-3996 for libssl3");
    assert_eq!(g["fixed"], "3.0.7-r2");
    // Fixed in the installed release or before it: not reported.
    for fixed_already in [
        "CVE-2022-3602",
        "CVE-2022-3786",
        "CVE-2022-2097",
        "CVE-2021-4044",
    ] {
        assert!(
            finding(&report, "libcrypto3", fixed_already).is_none(),
            "{fixed_already}"
        );
    }
    assert!(finding(&report, "busybox", "CVE-2023-42366").is_some());
    assert!(
        finding(&report, "busybox", "CVE-2022-30065").is_none(),
        "fixed in 1.35.0-r17"
    );

    // The package removed by a later layer is not reported.
    let dir = tempfile::tempdir().expect("tempdir");
    let report = db.scan(&alpine_image(dir.path(), true), &[]);
    assert!(finding(&report, "libcrypto3", "CVE-2023-0286").is_some());
    assert!(
        findings(&report).iter().all(|(p, _, _)| p != "busybox"),
        "busybox was removed: {:?}",
        findings(&report)
    );
    assert_eq!(report["packages"], 3);
}

fn table_filters_and_exit_codes(backend: Backend) {
    let db = full_db(backend);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = alpine_image(dir.path(), false);
    let path = image.to_str().expect("path");
    let table = db.ok(&["scan", path]);
    assert!(table.contains("PACKAGE"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("libcrypto3")
            && l.contains("CVE-2023-0286")
            && l.contains("3.0.8-r0")
            && l.contains("high")),
        "{table}"
    );
    assert!(table.contains("vulnerabilities in"), "{table}");

    let high = db.scan(&image, &["--severity", "high,critical"]);
    let sev: Vec<&str> = high["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["severity"].as_str().unwrap_or(""))
        .collect();
    assert!(!sev.is_empty());
    assert!(
        sev.iter().all(|s| *s == "high" || *s == "critical"),
        "{sev:?}"
    );
    let fixable = db.scan(&image, &["--fixable"]);
    assert!(fixable["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .all(|f| f["fixable"] == true));

    let o = db.run(&["scan", path, "--fail-on", "high"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = db.run(&["scan", path, "--fail-on", "high", "--severity", "low"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "only low findings are shown: {}",
        text(&o)
    );
    let o = db.run(&["scan", path, "--severity", "severe"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown severity"),
        "{}",
        text(&o)
    );
}

/// Re-matching reads the stored inventory, not the layers: it works with the layers gone.
fn stored_inventory_is_matched_without_layers(backend: Backend) {
    let db = full_db(backend);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = alpine_image(dir.path(), false);
    let first = db.scan(&image, &[]);
    for blob in std::fs::read_dir(dir.path().join("blobs/sha256")).expect("blobs") {
        let blob = blob.expect("entry").path();
        let head = std::fs::read(&blob).expect("read");
        if head.starts_with(&[0x1f, 0x8b]) {
            std::fs::remove_file(blob).expect("remove layer");
        }
    }
    let again = db.scan(&image, &[]);
    assert_eq!(findings(&first), findings(&again));
    assert_eq!(again["partial"], false);
    let reread = db.scan(&image, &["--reindex"]);
    assert_eq!(reread["partial"], true);
    assert!(
        reread["warnings"]
            .to_string()
            .contains("cannot open the layer"),
        "{reread}"
    );
}

fn python_wheel_installed_by_pip(backend: Backend) {
    let db = full_db(backend);
    let site = tempfile::tempdir().expect("tempdir");
    let cache = cache_dir().join("wheels");
    // Downloaded once (from PyPI) and installed from the cache after that.
    if !cache.join("urllib3-1.26.4-py2.py3-none-any.whl").exists() {
        let o = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "-d"])
            .arg(&cache)
            .arg("urllib3==1.26.4")
            .output()
            .expect("pip");
        assert!(o.status.success(), "pip download: {}", text(&o));
    }
    let o = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--find-links",
        ])
        .arg(&cache)
        .arg("--target")
        .arg(site.path())
        .arg("urllib3==1.26.4")
        .output()
        .expect("pip");
    assert!(o.status.success(), "pip install: {}", text(&o));
    let files = files_under(site.path());
    let entries: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(rel, data)| {
            (
                format!("usr/local/lib/python3.11/site-packages/{rel}"),
                data.clone(),
            )
        })
        .collect();
    let tar_entries: Vec<Entry> = entries.iter().map(|(p, d)| Entry::File(p, d)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(dir.path(), &[gzip(&tar(&tar_entries))]);
    let report = db.scan(&image, &[]);
    let f = finding(&report, "urllib3", "CVE-2021-33503").expect("CVE-2021-33503 for urllib3");
    assert_eq!(f["fixed"], "1.26.5");
    assert_eq!(f["severity"], "high");
    // The PyPA advisory and its GHSA twin are one finding.
    let ids: Vec<_> = findings(&report)
        .into_iter()
        .filter(|(_, id, _)| id == "CVE-2021-33503")
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(
        finding(&report, "urllib3", "CVE-2020-26137").is_none(),
        "fixed in 1.25.9"
    );

    // `pip uninstall` in a later layer leaves whiteouts: the package is gone.
    let removed = gzip(&tar(&[
        Entry::File(
            "usr/local/lib/python3.11/site-packages/.wh.urllib3-1.26.4.dist-info",
            b"",
        ),
        Entry::File("usr/local/lib/python3.11/site-packages/.wh.urllib3", b""),
    ]));
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(dir.path(), &[gzip(&tar(&tar_entries)), removed]);
    let report = db.scan(&image, &[]);
    assert_eq!(report["packages"], 0, "{report}");
    assert!(findings(&report).is_empty());
}

fn cargo_lock_with_advised_crates(backend: Backend) {
    let db = full_db(backend);
    let lock = b"version = 3\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\n\n\
[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n\
[[package]]\nname = \"crossbeam-deque\"\nversion = \"0.7.3\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n\
[[package]]\nname = \"regex\"\nversion = \"1.5.4\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n\
[[package]]\nname = \"time\"\nversion = \"0.1.43\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n\
[[package]]\nname = \"hyper\"\nversion = \"0.14.28\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(
        dir.path(),
        &[gzip(&tar(&[Entry::File("src/app/Cargo.lock", lock)]))],
    );
    let report = db.scan(&image, &[]);
    for (package, id, fixed) in [
        ("smallvec", "CVE-2021-25900", "1.6.1"),
        ("crossbeam-deque", "CVE-2021-32810", "0.7.4"),
        ("regex", "CVE-2022-24713", "1.5.5"),
        // The first range ends at 0.2.0: the lowest release without the flaw.
        ("time", "CVE-2020-26235", "0.2.0"),
    ] {
        let f =
            finding(&report, package, id).unwrap_or_else(|| panic!("{id} for {package}: {report}"));
        assert_eq!(f["fixed"], fixed, "{package}");
        assert_eq!(f["sources"][0], "crates.io-rustsec");
        assert!(f["aliases"].to_string().contains("RUSTSEC-"), "{f}");
    }
    assert!(
        findings(&report).iter().all(|(p, _, _)| p != "hyper"),
        "hyper 0.14.28 has no advisory"
    );
}

/// A zip of (name, bytes) entries, deflated, as jar tools write them.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).expect("entry");
        w.write_all(data).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

fn pom_properties(group: &str, artifact: &str, version: &str) -> Vec<u8> {
    format!("#Generated by Maven\ngroupId={group}\nartifactId={artifact}\nversion={version}\n")
        .into_bytes()
}

/// A Spring Boot style fat jar: the application's coordinates and its libraries' (nested jars)
/// are found, and matched as Maven packages with Maven's version ordering.
fn java_fat_jar_with_maven_advisories(backend: Backend) {
    let db = Db::new(backend);
    let work = tempfile::tempdir().expect("tempdir");
    let advisories = work.path().join("maven.jsonl");
    let advisory = |id: &str, alias: &str, name: &str, introduced: &str, fixed: &str| {
        serde_json::json!({"id": id, "aliases": [alias], "modified": "2026-11-29T00:00:00Z",
            "affected": [{"package": {"ecosystem": "Maven", "name": name},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": introduced}, {"fixed": fixed}]}]}]})
        .to_string()
    };
    std::fs::write(
        &advisories,
        [
            advisory(
                "GHSA-jfh8-c2jp-5v3q",
                "CVE-2021-44228",
                "org.apache.logging.log4j:log4j-core",
                "2.0-beta9",
                "2.15.0",
            ),
            // 2.12.1 is above this range's fix (2.9.10.8): not affected.
            advisory(
                "GHSA-wh8g-3j2c-rqj5",
                "CVE-2021-20190",
                "com.fasterxml.jackson.core:jackson-databind",
                "2.0.0",
                "2.9.10.7",
            ),
            // Only the -rc1 is affected: 2.0.0 final is past it.
            advisory(
                "WHARF-MAVEN-RC",
                "CVE-2099-0002",
                "com.example:lib",
                "0",
                "2.0.0",
            ),
        ]
        .join("\n"),
    )
    .expect("advisories");
    db.ok(&["vulndb", "import", advisories.to_str().expect("path")]);
    let nested = |g: &str, a: &str, v: &str| {
        zip_of(&[(
            &format!("META-INF/maven/{g}/{a}/pom.properties"),
            &pom_properties(g, a, v),
        )])
    };
    let app = zip_of(&[
        (
            "META-INF/MANIFEST.MF",
            b"Manifest-Version: 1.0\nMain-Class: org.springframework.boot.loader.JarLauncher\n",
        ),
        (
            "META-INF/maven/com.example/app/pom.properties",
            &pom_properties("com.example", "app", "1.0.0"),
        ),
        (
            "BOOT-INF/lib/log4j-core-2.14.1.jar",
            &nested("org.apache.logging.log4j", "log4j-core", "2.14.1"),
        ),
        (
            "BOOT-INF/lib/jackson-databind-2.12.1.jar",
            &nested("com.fasterxml.jackson.core", "jackson-databind", "2.12.1"),
        ),
        (
            "BOOT-INF/lib/lib-2.0.0.jar",
            &nested("com.example", "lib", "2.0.0"),
        ),
        ("BOOT-INF/classes/App.class", b"\xca\xfe\xba\xbe"),
    ]);
    let image = layout(
        work.path(),
        &[gzip(&tar(&[
            Entry::File("app/app.jar", &app),
            Entry::File("app/not-a-jar.jar", b"junk"),
        ]))],
    );
    let report = db.scan(&image, &[]);
    assert_eq!(report["packages"], 4, "{report}");
    let log4j = finding(
        &report,
        "org.apache.logging.log4j:log4j-core",
        "CVE-2021-44228",
    )
    .unwrap_or_else(|| panic!("log4shell: {report}"));
    assert_eq!(log4j["installed"], "2.14.1");
    assert_eq!(log4j["fixed"], "2.15.0");
    assert_eq!(log4j["ecosystem"], "Maven");
    assert_eq!(log4j["kind"], "maven");
    assert!(
        log4j["path"].as_str().unwrap_or_default().ends_with("log4j-core-2.14.1.jar!META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties"),
        "{log4j}"
    );
    assert_eq!(
        findings(&report).len(),
        1,
        "only log4j-core is affected: {report}"
    );
    // A file named .jar that is no zip is named in a warning; the rest is read.
    assert!(
        report["warnings"].to_string().contains("not-a-jar.jar"),
        "{report}"
    );
}

fn go_binary_build_info(backend: Backend) {
    let db = full_db(backend);
    let binary = go_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(
        dir.path(),
        &[gzip(&tar(&[Entry::Exec("usr/local/bin/app", &binary)]))],
    );
    let report = db.scan(&image, &[]);
    let f = finding(&report, "golang.org/x/text", "CVE-2021-38561").expect("GO-2021-0113");
    assert_eq!(f["fixed"], "0.3.7");
    assert_eq!(f["installed"], "v0.3.5");
    assert!(f["aliases"].to_string().contains("GO-2021-0113"));
    assert!(
        finding(&report, "golang.org/x/text", "CVE-2020-14040").is_none(),
        "fixed in 0.3.3"
    );
    // The toolchain itself is matched as the `stdlib` module.
    assert!(
        findings(&report).iter().any(|(p, _, _)| p == "stdlib"),
        "{report}"
    );
}

/// A Go program whose build info names golang.org/x/text v0.3.5. The module proxy is out of
/// reach, so the dependency is vendored: `go build -mod=vendor` records the version that
/// vendor/modules.txt gives.
fn go_binary() -> Vec<u8> {
    // Built once per run: both backends' tests and the 1 GiB layer use it.
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let work = tempfile::tempdir().expect("tempdir");
            let w = work.path();
            let write = |rel: &str, body: &str| {
                let p = w.join(rel);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(p, body).expect("write");
            };
            write(
                "go.mod",
                "module example.com/app\n\ngo 1.19\n\nrequire golang.org/x/text v0.3.5\n",
            );
            write(
                "main.go",
                "package main\n\nimport (\n\t\"fmt\"\n\t\"golang.org/x/text/language\"\n)\n\nfunc main() { fmt.Println(language.Tag(\"en\")) }\n",
            );
            write(
                "vendor/golang.org/x/text/language/language.go",
                "package language\n\n// Tag names a language.\ntype Tag string\n",
            );
            write(
                "vendor/modules.txt",
                "# golang.org/x/text v0.3.5\n## explicit\ngolang.org/x/text/language\n",
            );
            let o = Command::new("go")
                .args(["build", "-mod=vendor", "-o", "app", "."])
                .current_dir(w)
                .env("GOFLAGS", "-mod=vendor")
                .env("GOPROXY", "off")
                .env("GOCACHE", w.join("cache"))
                .env("GOPATH", w.join("gopath"))
                .output()
                .expect("go build (golang-go is installed by scripts/test)");
            assert!(o.status.success(), "go build: {}", text(&o));
            std::fs::read(w.join("app")).expect("binary")
        })
        .clone()
}

fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("prefix").display().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// Downloads and builds kept between runs (a fresh machine fills it once).
fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("WHARF_TEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wharf-tests")))
        .unwrap_or_else(|| std::env::temp_dir().join("wharf-tests"));
    std::fs::create_dir_all(&dir).expect("cache dir");
    dir
}

fn vulndb_import_is_idempotent_and_incremental(backend: Backend) {
    let db = Db::new(backend);
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("mini.jsonl");
    let record = |id: &str, details: &str| {
        format!(
            r#"{{"id":"{id}","modified":"2026-01-0{}T00:00:00Z","details":"{details}","aliases":["CVE-2099-000{}"],"affected":[{{"package":{{"ecosystem":"PyPI","name":"Demo_Pkg"}},"ranges":[{{"type":"ECOSYSTEM","events":[{{"introduced":"0"}},{{"fixed":"2.0"}}]}}]}}]}}"#,
            details.len() % 9,
            id.len() % 9
        )
    };
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n{{broken\n",
            record("DEMO-1", "one"),
            record("DEMO-2", "two")
        ),
    )
    .expect("write");
    let path = file.to_str().expect("path");
    let out = db.ok(&["vulndb", "import", path]);
    assert!(
        out.contains("mini: 2 added, 0 updated, 0 unchanged, 1 skipped"),
        "{out}"
    );
    let o = db.run(&["vulndb", "import", path]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("mini: 0 added, 0 updated, 2 unchanged"),
        "{}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("mini.jsonl:3: skipped"),
        "the bad line is named: {}",
        text(&o)
    );
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n{}\n",
            record("DEMO-1", "one"),
            record("DEMO-2", "changed"),
            record("DEMO-3", "new")
        ),
    )
    .expect("write");
    let out = db.ok(&["vulndb", "import", path]);
    assert!(
        out.contains("mini: 1 added, 1 updated, 1 unchanged, 0 skipped"),
        "{out}"
    );

    let status: Value =
        serde_json::from_str(&db.ok(&["vulndb", "status", "--json"])).expect("json");
    assert_eq!(status["sources"][0]["source"], "mini");
    assert_eq!(status["sources"][0]["records"], 3);
    assert_eq!(status["sources"][0]["kind"], "osv");
    assert_eq!(status["advisories"], 3);
    assert!(status["version"].as_i64().unwrap_or(0) > 1, "{status}");

    // A file that is not vulnerability data, named explicitly, fails the command.
    let junk = work.path().join("notes.json");
    std::fs::write(&junk, "[1, 2, 3]").expect("write");
    let o = db.run(&["vulndb", "import", junk.to_str().expect("path")]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("not an OSV JSON"),
        "{}",
        text(&o)
    );
    let o = db.run(&["vulndb", "import", "/nonexistent/advisories.jsonl"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one readable line: {err}");
    assert!(err.contains("/nonexistent/advisories.jsonl"), "{err}");
}

fn scan_refuses_bad_input(backend: Backend) {
    let db = Db::new(backend);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = alpine_image(dir.path(), false);
    // Without a database a scan would claim "no vulnerabilities": it refuses instead.
    let o = db.run(&["scan", image.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wharf vulndb import"),
        "{}",
        text(&o)
    );
    let db = full_db(backend);
    for (bad, expect) in [
        ("/nonexistent/image", "/nonexistent/image"),
        ("/etc/hostname", "not a readable tar file"),
    ] {
        let o = db.run(&["scan", bad]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A corrupt layer is reported, the rest of the image is scanned.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broken = gzip(&tar(&[Entry::File("usr/share/x", &[1u8; 100_000])]));
    let n = broken.len();
    broken.truncate(n / 2);
    let image = layout(
        dir.path(),
        &[
            gzip(&tar(&[
                Entry::File("etc/os-release", ALPINE_OS),
                Entry::File("lib/apk/db/installed", &apk_db(true)),
            ])),
            broken,
        ],
    );
    let o = db.run(&["scan", image.to_str().expect("path"), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["partial"], true);
    assert!(finding(&report, "libcrypto3", "CVE-2023-0286").is_some());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wharf: warning:"),
        "{}",
        text(&o)
    );
    // Nothing recognisable: Unknown, with the reason.
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(
        dir.path(),
        &[gzip(&tar(&[Entry::File("hello.txt", b"hi")]))],
    );
    let table = db.ok(&["scan", image.to_str().expect("path")]);
    assert!(
        table.contains("status:   unknown: no /etc/os-release"),
        "{table}"
    );
}

/// The Debian packages the image is built with: each has bookworm-security fixes newer than the
/// bookworm point release, and libbrotli1 is a binNMU (`1.0.9-2+b6` from source `brotli 1.0.9-2`).
const DEBIAN_PACKAGES: &str = "openssl,libexpat1,libssh2-1,python3.11-minimal,libbrotli1";

/// A real Debian 12 root filesystem from Debian's mirror (bookworm and bookworm-updates only, so
/// installed versions predate the security fixes), built once with mmdebstrap and cached.
fn debian_rootfs() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = cache_dir().join(format!(
                "debian12-{}.tar",
                DEBIAN_PACKAGES.replace(',', "_")
            ));
            if out.is_file() {
                return out;
            }
            // An earlier version of this helper could leave a directory here.
            let _ = std::fs::remove_dir_all(&out);
            // mmdebstrap picks its output format from the name unless told; say tar.
            let partial = out.with_extension("partial.tar");
            let o = Command::new("mmdebstrap")
                .args(["--variant=minbase", "--quiet", "--format=tar"])
                .arg(format!("--include={DEBIAN_PACKAGES}"))
                .arg("bookworm")
                .arg(&partial)
                .arg("deb http://deb.debian.org/debian bookworm main")
                .arg("deb http://deb.debian.org/debian bookworm-updates main")
                .output()
                .expect("mmdebstrap (installed by scripts/test)");
            assert!(o.status.success(), "mmdebstrap: {}", text(&o));
            std::fs::rename(&partial, &out).expect("rename");
            out
        })
        .clone()
}

/// A file of the root filesystem tar, by `tar -xO` (gunzipped when it ends in .gz).
fn rootfs_file(rootfs: &Path, path: &str) -> Vec<u8> {
    let o = Command::new("tar")
        .arg("-xOf")
        .arg(rootfs)
        .arg(format!("./{path}"))
        .output()
        .expect("tar");
    assert!(o.status.success(), "tar {path}: {}", text(&o));
    if path.ends_with(".gz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&o.stdout[..]), &mut out)
            .expect("gunzip");
        return out;
    }
    o.stdout
}

fn dpkg_lt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .expect("dpkg")
        .success()
}

/// Changelog entries: (version, CVEs named in the entry).
fn changelog_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.contains(" (") && line.contains(") ") {
            let v = line
                .split_once(" (")
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(v, _)| v.to_string());
            if let Some(v) = v {
                out.push((v, Vec::new()));
                continue;
            }
        }
        if let Some((_, cves)) = out.last_mut() {
            let mut rest = line;
            while let Some(i) = rest.find("CVE-") {
                let id: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                rest = &rest[i + 4..];
                if id.len() >= 13 {
                    cves.push(id.trim_end_matches('-').to_string());
                }
            }
        }
    }
    out
}

fn debian12_image_from_the_mirror(backend: Backend) {
    let db = full_db(backend);
    let rootfs = debian_rootfs();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(dir.path(), &[std::fs::read(&rootfs).expect("rootfs")]);
    let report = db.scan(&image, &[]);
    assert_eq!(report["os"]["id"], "debian");
    assert_eq!(report["os"]["version_id"], "12");
    assert_eq!(report["partial"], false, "{}", report["warnings"]);

    // What is installed, according to dpkg itself.
    let admin = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        admin.path().join("status"),
        rootfs_file(&rootfs, "var/lib/dpkg/status"),
    )
    .expect("status");
    let o = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.path().display()))
        .args([
            "-W",
            "-f",
            "${Package}\t${Version}\t${source:Package}\t${source:Version}\n",
        ])
        .output()
        .expect("dpkg-query");
    assert!(o.status.success(), "{}", text(&o));
    let installed: Vec<Vec<String>> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    let find = |pkg: &str| {
        installed
            .iter()
            .find(|r| r[0] == pkg)
            .unwrap_or_else(|| panic!("{pkg} not installed"))
    };
    assert!(report["packages"].as_u64().expect("count") as usize >= installed.len());

    // A binNMU is matched through its source package and version.
    let brotli = find("libbrotli1");
    assert_ne!(
        brotli[1], brotli[3],
        "libbrotli1 should be a binNMU: {brotli:?}"
    );
    let f = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["package"] == "libbrotli1")
        .expect("brotli's security fix applies to libbrotli1");
    assert_eq!(f["source_package"], "brotli");
    assert!(dpkg_lt(&brotli[3], f["fixed"].as_str().expect("fixed")));

    // Nothing is reported as fixed at or before the installed version (dpkg decides).
    for f in report["findings"].as_array().expect("findings") {
        if f["kind"] != "dpkg" {
            continue;
        }
        let row = find(f["package"].as_str().expect("package"));
        if let Some(fixed) = f["fixed"].as_str() {
            assert!(
                dpkg_lt(&row[3], fixed),
                "{} {} is reported although fixed in {fixed}",
                row[0],
                row[3]
            );
        }
    }

    for (package, source) in [("openssl", "openssl"), ("libexpat1", "expat")] {
        let row = find(package);
        let version = &row[3];
        let ids_for = |pkg: &str| -> Vec<(String, Option<String>)> {
            report["findings"]
                .as_array()
                .expect("findings")
                .iter()
                .filter(|f| f["package"] == pkg)
                .map(|f| {
                    (
                        f["id"].as_str().unwrap_or("").to_string(),
                        f["fixed"].as_str().map(str::to_string),
                    )
                })
                .collect()
        };
        let reported = ids_for(package);
        // CVEs the installed package's own changelog names are fixed: never reported.
        let own = String::from_utf8_lossy(&rootfs_file(
            &rootfs,
            &format!("usr/share/doc/{package}/changelog.Debian.gz"),
        ))
        .into_owned();
        let own_cves: std::collections::BTreeSet<String> = changelog_entries(&own)
            .into_iter()
            .flat_map(|(_, c)| c)
            .collect();
        assert!(!own_cves.is_empty(), "{package}'s changelog names CVEs");
        for (id, _) in &reported {
            assert!(
                !own_cves.contains(id),
                "{id} is named in {package} {version}'s own changelog"
            );
        }
        // CVEs the newer bookworm-security package's changelog names are reported, fixed in the
        // first version that names them.
        let newer = security_changelog(package);
        let entries = changelog_entries(&newer);
        let mut expected: std::collections::BTreeMap<String, String> = Default::default();
        for (v, cves) in entries.iter().rev() {
            if !dpkg_lt(version, v) {
                continue;
            }
            for c in cves {
                if !own_cves.contains(c) {
                    expected.entry(c.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        assert!(
            !expected.is_empty(),
            "{package} {version} should have newer security fixes"
        );
        let known = debian_osv_ids(source);
        let mut checked = 0;
        for (cve, fixed) in &expected {
            if !known.contains(cve) {
                continue; // Uploaded after the shared data was gathered.
            }
            let got = reported.iter().find(|(id, _)| id == cve);
            assert_eq!(
                got.and_then(|(_, f)| f.as_deref()),
                Some(fixed.as_str()),
                "{cve} for {package} {version}: reported {reported:?}"
            );
            checked += 1;
        }
        assert!(
            checked > 0,
            "no CVE of {source}'s newer changelog is in the data"
        );
    }
}

/// The changelog of the newest bookworm-security build of `package`, downloaded with apt.
fn security_changelog(package: &str) -> String {
    let dir = cache_dir().join("security-debs");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let existing = || {
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
    };
    let deb = match existing() {
        Some(d) => d,
        None => {
            let o = Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&dir)
                .output()
                .expect("apt-get");
            assert!(
                o.status.success(),
                "apt-get download {package}: {}",
                text(&o)
            );
            existing().expect("downloaded .deb")
        }
    };
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/share/doc/{package}/changelog.Debian.gz | gzip -dc", deb.display()))
        .output()
        .expect("dpkg-deb");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The CVE IDs the shared Debian data lists for a source package.
fn debian_osv_ids(source: &str) -> std::collections::BTreeSet<String> {
    let file = support::vulndb_dir().join("osv/debian12.jsonl.gz");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(file).expect("open")),
        &mut text,
    )
    .expect("read");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["affected"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["package"]["name"] == source))
        })
        .flat_map(|v| v["aliases"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// A Rust program built with `cargo auditable` against smallvec 1.6.0 (RUSTSEC-2021-0003):
/// its `.dep-v0` section lists the crates compiled in. Built once and cached.
fn auditable_binary() -> Vec<u8> {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let project = cache_dir().join("auditable-app");
            std::fs::create_dir_all(project.join("src")).expect("mkdir");
            std::fs::write(
                project.join("Cargo.toml"),
                "[package]\nname = \"auditable-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nsmallvec = \"=1.6.0\"\n\n[workspace]\n",
            )
            .expect("write");
            std::fs::write(
                project.join("src/main.rs"),
                "fn main() {\n    let v: smallvec::SmallVec<[u8; 4]> = smallvec::smallvec![1, 2, 3];\n    println!(\"{}\", v.len());\n}\n",
            )
            .expect("write");
            let o = Command::new("cargo")
                .args(["auditable", "build", "--quiet"])
                .current_dir(&project)
                .env("CARGO_TARGET_DIR", project.join("target"))
                .env_remove("RUSTFLAGS")
                .output()
                .expect("cargo auditable (installed by scripts/test)");
            assert!(o.status.success(), "cargo auditable build: {}", text(&o));
            std::fs::read(project.join("target/debug/auditable-app")).expect("binary")
        })
        .clone()
}

fn rust_binary_built_with_cargo_auditable(backend: Backend) {
    let db = full_db(backend);
    let binary = auditable_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(
        dir.path(),
        &[gzip(&tar(&[Entry::Exec("usr/local/bin/app", &binary)]))],
    );
    let report = db.scan(&image, &[]);
    let f = finding(&report, "smallvec", "CVE-2021-25900")
        .unwrap_or_else(|| panic!("RUSTSEC-2021-0003: {report}"));
    assert_eq!(f["installed"], "1.6.0");
    assert_eq!(f["fixed"], "1.6.1");
    assert_eq!(f["path"], "usr/local/bin/app");
    assert!(f["aliases"].to_string().contains("RUSTSEC-2021-0003"));
    // The application itself is a local crate: nothing to match.
    assert!(findings(&report)
        .iter()
        .all(|(p, _, _)| p != "auditable-app"));
}

/// Runs `wharf` and returns its output with its peak resident memory in KiB, read from /proc
/// while it runs. (wait4's ru_maxrss would not do: it counts the parent's memory the child
/// shared before exec.)
fn wharf_with_peak_rss(args: &[&str]) -> (Output, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wharf");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut peak = 0;
    let status = loop {
        // VmHWM only grows, so the last reading before exit is the peak.
        if let Some(kib) = common::peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let output = Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    (output, peak)
}

/// A layer of over 1 GiB (a 700 MiB data file and a 330 MiB Go executable whose build info sits
/// at its end) is scanned as a stream: the packages are found and wharf's memory stays small.
fn one_gib_layer_in_bounded_memory(backend: Backend) {
    use std::io::Write;
    let db = full_db(backend);
    let dir = tempfile::tempdir().expect("tempdir");
    let layer_path = dir.path().join("layer.tar");
    {
        let file = std::fs::File::create(&layer_path).expect("create");
        let mut b = tar::Builder::new(std::io::BufWriter::new(file));
        let mut add = |path: &str, mode: u32, size: u64, data: &mut dyn std::io::Read| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(mode);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, data).expect("append");
        };
        add(
            "etc/os-release",
            0o644,
            ALPINE_OS.len() as u64,
            &mut &ALPINE_OS[..],
        );
        let apk = apk_db(true);
        add(
            "lib/apk/db/installed",
            0o644,
            apk.len() as u64,
            &mut &apk[..],
        );
        let data = 700u64 << 20;
        add(
            "var/data.bin",
            0o644,
            data,
            &mut std::io::repeat(0x5a).take(data),
        );
        let go = go_binary();
        let pad = 330u64 << 20;
        // An ELF header, then padding, then the real program: its build info lies past 330 MiB.
        let mut exe = std::io::Read::chain(&go[..64], std::io::repeat(0).take(pad)).chain(&go[..]);
        add(
            "usr/local/bin/big",
            0o755,
            64 + pad + go.len() as u64,
            &mut exe,
        );
        b.into_inner().expect("tar").flush().expect("flush");
    }
    // Into an OCI layout without holding the layer in memory.
    let digest = {
        let mut h =
            wharf_scan::digest::Sha256Reader::new(std::fs::File::open(&layer_path).expect("open"));
        std::io::copy(&mut h, &mut std::io::sink()).expect("hash");
        h.digest()
    };
    let size = std::fs::metadata(&layer_path).expect("stat").len();
    assert!(size > 1 << 30, "layer is {size} bytes");
    let image = dir.path().join("image");
    oci_layout(&image, &[]);
    std::fs::rename(&layer_path, image.join("blobs/sha256").join(&digest[7..])).expect("move");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": support::sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}],
    });
    let manifest = serde_json::to_vec(&manifest).expect("json");
    std::fs::write(
        image
            .join("blobs/sha256")
            .join(&support::sha256(&manifest)[7..]),
        &manifest,
    )
    .expect("manifest");
    std::fs::write(
        image
            .join("blobs/sha256")
            .join(&support::sha256(b"{}")[7..]),
        b"{}",
    )
    .expect("config");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": support::sha256(&manifest), "size": manifest.len()}]});
    std::fs::write(
        image.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");

    let mut args = vec!["scan", image.to_str().expect("path"), "--json", "--reindex"];
    args.extend(db.args.iter().map(String::as_str));
    let (o, peak_kib) = wharf_with_peak_rss(&args);
    assert!(o.status.success(), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["partial"], false, "{}", report["warnings"]);
    assert!(
        finding(&report, "golang.org/x/text", "CVE-2021-38561").is_some(),
        "Go build info at the end of a 330 MiB binary"
    );
    assert!(finding(&report, "libcrypto3", "CVE-2023-0286").is_some());
    assert!(
        peak_kib < 200 * 1024,
        "peak RSS {peak_kib} KiB scanning a 1 GiB layer"
    );
    eprintln!(
        "scan of a {} MiB layer: peak RSS {} MiB",
        size >> 20,
        peak_kib / 1024
    );
}

/// Distroless: a Debian base with one file per package under status.d and no Status field.
fn distroless_status_d(backend: Backend) {
    let db = full_db(backend);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(
        dir.path(),
        &[gzip(&tar(&[
            Entry::File(
                "etc/os-release",
                b"PRETTY_NAME=\"Distroless\"\nNAME=\"Debian GNU/Linux\"\nID=\"debian\"\nVERSION_ID=\"12\"\n",
            ),
            Entry::File(
                "var/lib/dpkg/status.d/libssl3",
                b"Package: libssl3\nVersion: 3.0.11-1~deb12u1\nArchitecture: amd64\nSource: openssl\n",
            ),
            Entry::File("var/lib/dpkg/status.d/libssl3.md5sums", b"d41d8cd98f00b204e9800998ecf8427e  usr/lib/libssl.so.3\n"),
        ]))],
    );
    let report = db.scan(&image, &[]);
    assert_eq!(report["os"]["pretty_name"], "Distroless");
    assert_eq!(report["packages"], 1);
    let f = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["package"] == "libssl3")
        .expect("openssl's security fixes apply to libssl3");
    assert_eq!(f["source_package"], "openssl");
    assert_eq!(f["sources"][0], "debian12");
    assert!(dpkg_lt(
        "3.0.11-1~deb12u1",
        f["fixed"].as_str().expect("fixed")
    ));
}

/// An rpm sqlite database (written here as rpm writes one, through Python's sqlite3) on a
/// RHEL-family OS, and npm packages from node_modules and a lock file. There are no advisories
/// for these ecosystems in the shared data, so the inventory is what is checked.
fn rpm_and_npm_inventories(backend: Backend) {
    let db = full_db(backend);
    let work = tempfile::tempdir().expect("tempdir");
    let rpmdb = work.path().join("rpmdb.sqlite");
    let script = r#"
import sqlite3, struct, sys
def header(name, epoch, version, release, srpm):
    index, data = b"", b""
    for tag, value in ((1000, name), (1001, version), (1002, release), (1044, srpm)):
        index += struct.pack(">IIII", tag, 6, len(data), 1)
        data += value.encode() + b"\0"
    if epoch is not None:
        data += b"\0" * (-len(data) % 4)
        index += struct.pack(">IIII", 1003, 4, len(data), 1)
        data += struct.pack(">I", epoch)
    return struct.pack(">II", len(index) // 16, len(data)) + index + data
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
for h in (header("openssl-libs", 1, "3.0.7", "24.el9", "openssl-3.0.7-24.el9.src.rpm"),
          header("bash", None, "5.1.8", "6.el9_1", "bash-5.1.8-6.el9_1.src.rpm"),
          header("gpg-pubkey", None, "8483c65d", "5ccc5b19", "")):
    db.execute("INSERT INTO Packages (blob) VALUES (?)", (h,))
db.commit()
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&rpmdb)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    let rpmdb = std::fs::read(&rpmdb).expect("rpmdb");
    let dir = tempfile::tempdir().expect("tempdir");
    let image = layout(
        dir.path(),
        &[gzip(&tar(&[
            Entry::File("etc/os-release", b"NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\n"),
            Entry::File("var/lib/rpm/rpmdb.sqlite", &rpmdb),
            Entry::File("app/node_modules/lodash/package.json", br#"{"name":"lodash","version":"4.17.20"}"#),
            Entry::File(
                "app/package-lock.json",
                br#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/lodash":{"version":"4.17.20"},"node_modules/minimist":{"version":"1.2.5"}}}"#,
            ),
        ]))],
    );
    let report = db.scan(&image, &[]);
    assert_eq!(report["os"]["id"], "rocky");
    assert_eq!(report["partial"], false, "{}", report["warnings"]);
    // openssl-libs and bash (the imported gpg key is not a package), lodash once, minimist.
    assert_eq!(report["packages"], 4, "{report}");
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() { super::$name(super::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test]
            fn $name() { super::$name(super::Backend::Postgres) })*
        }
    };
}

on_both!(
    vulndb_import_is_idempotent_and_incremental,
    alpine_findings,
    table_filters_and_exit_codes,
    stored_inventory_is_matched_without_layers,
    python_wheel_installed_by_pip,
    cargo_lock_with_advised_crates,
    go_binary_build_info,
    scan_refuses_bad_input,
    debian12_image_from_the_mirror,
    rust_binary_built_with_cargo_auditable,
    one_gib_layer_in_bounded_memory,
    distroless_status_d,
    rpm_and_npm_inventories,
    java_fat_jar_with_maven_advisories,
);

/// Scanning inside the registry: a real Debian 12 image pushed with skopeo to a registry with
/// scanning on is scanned from wharf's own store, with the findings `wharf scan` reports for
/// the same image; a newer database is matched again without reading a layer.
mod in_registry {
    use super::*;
    use common::images::Skopeo;
    use common::{cli, cli_ok, Server, OWNER_KEY};
    use serde_json::json;
    use std::time::{Duration, Instant};

    /// The database arguments of the CLI for a server's own metadata.
    fn db_args(s: &Server) -> Vec<String> {
        match s.database_url() {
            Some(url) => vec!["--database-url".into(), url.into()],
            None => vec!["--data-dir".into(), s.data_dir().display().to_string()],
        }
    }

    fn wharf_on(s: &Server, args: &[&str]) -> String {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(db_args(s));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = wharf(&all);
        assert!(o.status.success(), "wharf {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    async fn artifact(s: &Server, repo: &str, reference: &str) -> Value {
        let r = s
            .anon
            .get(s.url(&format!(
                "/api/v1/registries/default/artifacts/{repo}/-/{reference}"
            )))
            .bearer_auth(OWNER_KEY)
            .send()
            .await
            .expect("artifact");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        r.json().await.expect("json")
    }

    /// Waits until the artifact's scan is no longer pending, or `done` says so.
    async fn wait_for(
        s: &Server,
        repo: &str,
        reference: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let a = artifact(s, repo, reference).await;
            if done(&a) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "scan did not finish: {a}\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn vulns(s: &Server, args: &[&str]) -> Value {
        let mut all = vec!["artifact", "vulns", "default", "debian:12", "--json"];
        all.extend(args);
        serde_json::from_str(&cli_ok(s, &all)).expect("vulns --json")
    }

    fn pairs(items: &Value) -> std::collections::BTreeSet<(String, String)> {
        items
            .as_array()
            .expect("items")
            .iter()
            .map(|f| {
                (
                    f["package"].as_str().unwrap_or_default().to_string(),
                    f["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Validates an SBOM against the published schema of its format (vendored in
    /// tests/schemas), with Python's jsonschema; the errors when it does not hold.
    fn schema_errors(doc: &Value, format: &str) -> Option<String> {
        let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/schemas");
        let file = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(file.path(), doc.to_string()).expect("write");
        let script = r#"
import json, sys
from jsonschema import validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
fmt, path, d = sys.argv[1:4]
load = lambda n: json.load(open(d + "/" + n))
if fmt == "spdx":
    schema, registry = load("spdx-2.3.schema.json"), Registry()
else:
    schema = load("bom-1.5.SNAPSHOT.schema.json")
    registry = Registry().with_resources([
        ("http://cyclonedx.org/schema/" + n, Resource.from_contents(load(n), default_specification=DRAFT7))
        for n in ("spdx.SNAPSHOT.schema.json", "jsf-0.82.SNAPSHOT.schema.json")])
validator = validators.validator_for(schema)(schema, registry=registry)
errors = sorted(validator.iter_errors(json.load(open(path))), key=str)
for e in errors[:10]:
    print(list(e.absolute_path), e.message[:300])
sys.exit(1 if errors else 0)
"#;
        let o = Command::new("python3")
            .args(["-c", script, format])
            .arg(file.path())
            .arg(&schemas)
            .output()
            .expect("python3");
        (!o.status.success()).then(|| text(&o))
    }

    /// (name, version) of every installed package in a dpkg status file.
    fn dpkg_installed(status: &str) -> std::collections::BTreeSet<(String, String)> {
        status
            .split("\n\n")
            .filter(|p| p.contains("Status: install ok installed"))
            .filter_map(|p| {
                let field = |k: &str| {
                    p.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().to_string())
                };
                Some((field("Package:")?, field("Version:")?))
            })
            .collect()
    }

    /// Exports, validates and compares both SBOM formats of the scanned Debian image, then
    /// attaches one as a referrer.
    async fn sboms_of_the_debian_image(s: &Server, work: &Path, scanned: &Value) {
        let digest = scanned["digest"].as_str().expect("digest");
        let installed = dpkg_installed(&String::from_utf8_lossy(&rootfs_file(
            &debian_rootfs(),
            "var/lib/dpkg/status",
        )));
        assert!(installed.len() > 50, "{}", installed.len());
        for format in ["spdx", "cyclonedx"] {
            let out = work.join(format!("sbom.{format}.json"));
            cli_ok(
                s,
                &[
                    "artifact",
                    "sbom",
                    "default",
                    "debian:12",
                    "--format",
                    format,
                    "--output",
                    out.to_str().expect("path"),
                ],
            );
            let doc: Value =
                serde_json::from_slice(&std::fs::read(&out).expect("sbom")).expect("json");
            assert_eq!(
                schema_errors(&doc, format),
                None,
                "{format} SBOM against its schema"
            );
            // Each dpkg package of the image, once, with its purl.
            let (list, name, version, purl) = match format {
                "spdx" => (
                    "packages",
                    "name",
                    "versionInfo",
                    "/externalRefs/0/referenceLocator",
                ),
                _ => ("components", "name", "version", "/purl"),
            };
            let debs: Vec<&Value> = doc[list]
                .as_array()
                .expect("packages")
                .iter()
                .filter(|p| {
                    p.pointer(purl)
                        .and_then(Value::as_str)
                        .is_some_and(|u| u.starts_with("pkg:deb/debian/"))
                })
                .collect();
            let listed: std::collections::BTreeSet<(String, String)> = debs
                .iter()
                .map(|p| {
                    (
                        p[name].as_str().unwrap_or_default().to_string(),
                        p[version].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            assert_eq!(listed, installed, "{format}: the image's dpkg packages");
            assert_eq!(debs.len(), installed.len());
            let openssl = debs.iter().find(|p| p[name] == "openssl").expect("openssl");
            let url = openssl
                .pointer(purl)
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(
                url.starts_with(&format!(
                    "pkg:deb/debian/openssl@{}",
                    openssl[version]
                        .as_str()
                        .unwrap_or_default()
                        .replace('+', "%2B")
                )) && url.contains("distro=debian-12"),
                "{url}"
            );
            // A broken document does not pass: the check can fail.
            let mut broken = doc.clone();
            broken
                .as_object_mut()
                .expect("object")
                .remove(if format == "spdx" {
                    "spdxVersion"
                } else {
                    "bomFormat"
                });
            assert!(schema_errors(&broken, format).is_some());
        }
        let spdx: Value =
            serde_json::from_slice(&std::fs::read(work.join("sbom.spdx.json")).expect("sbom"))
                .expect("json");

        // Attached as a referrer of the image, twice with one result.
        let attached: Value = serde_json::from_str(&cli_ok(
            s,
            &[
                "artifact",
                "sbom",
                "default",
                "debian:12",
                "--attach",
                "--json",
            ],
        ))
        .expect("attach");
        assert_eq!(attached["subject"], digest);
        assert_eq!(attached["artifact_type"], "application/spdx+json");
        let again: Value = serde_json::from_str(&cli_ok(
            s,
            &[
                "artifact",
                "sbom",
                "default",
                "debian:12",
                "--attach",
                "--json",
            ],
        ))
        .expect("attach");
        assert_eq!(again["digest"], attached["digest"]);
        let referrers: Value = s
            .client
            .get(s.url(&format!("/v2/debian/referrers/{digest}")))
            .send()
            .await
            .expect("referrers")
            .json()
            .await
            .expect("json");
        let listed = referrers["manifests"].as_array().expect("manifests");
        assert_eq!(listed.len(), 1, "{referrers}");
        assert_eq!(listed[0]["digest"], attached["digest"]);
        assert_eq!(listed[0]["artifactType"], "application/spdx+json");
        let blob = s
            .client
            .get(s.url(&format!(
                "/v2/debian/blobs/{}",
                attached["blob"].as_str().expect("blob")
            )))
            .send()
            .await
            .expect("blob");
        assert_eq!(blob.status(), 200);
        let pulled: Value = blob.json().await.expect("json");
        assert_eq!(pulled, spdx, "the attached SBOM is the exported one");

        // Bad input: an unknown format, a filter on an SBOM, an artifact with no inventory.
        let base = "/api/v1/registries/default/artifacts";
        for (path, status) in [
            (format!("{base}/debian/-/12/sbom?format=swid"), 400),
            (format!("{base}/debian/-/12/sbom?severity=high"), 400),
            (
                format!("{base}/debian/-/12/vulnerabilities?format=spdx"),
                400,
            ),
            (format!("{base}/tools/chart/-/1.0.0/sbom"), 409),
            (format!("{base}/debian/-/13/sbom"), 404),
        ] {
            let r = s
                .anon
                .get(s.url(&path))
                .bearer_auth(OWNER_KEY)
                .send()
                .await
                .expect("get");
            assert_eq!(r.status().as_u16(), status, "{path}");
            assert_eq!(
                r.headers()["content-type"],
                "application/problem+json",
                "{path}"
            );
        }
        let err = cli(
            s,
            Some(OWNER_KEY),
            &["artifact", "sbom", "default", "tools/chart:1.0.0"],
        );
        assert!(!err.status.success());
        assert!(
            String::from_utf8_lossy(&err.stderr).contains("no package inventory"),
            "{}",
            String::from_utf8_lossy(&err.stderr)
        );
    }

    async fn debian_image_is_scanned_on_push(backend: Backend) {
        let work = tempfile::tempdir().expect("tempdir");
        let pause = work.path().join("pause");
        std::fs::write(&pause, b"").expect("pause file");
        let s = Server::start_with(
            backend,
            &["--scan-pause-file", pause.to_str().expect("path")],
        )
        .await;
        // The database is imported beside the running server (the NVD table alone is 200k
        // rows) while pushes write to the same database: neither fails for the other.
        let data = support::vulndb_dir();
        let mut args: Vec<String> = vec!["vulndb".into(), "import".into()];
        args.extend(
            ["osv/debian12.jsonl.gz", "cvss"]
                .iter()
                .map(|f| data.join(f).display().to_string()),
        );
        args.extend(db_args(&s));
        let import = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            wharf(&args)
        });
        let mut pushed = 0u32;
        while !import.is_finished() {
            s.push_blob("busy", format!("blob {pushed}").as_bytes())
                .await;
            pushed += 1;
        }
        let imported = import.await.expect("import");
        assert!(imported.status.success(), "import: {}", text(&imported));
        assert!(pushed > 0);
        let status: Value = serde_json::from_str(&wharf_on(&s, &["vulndb", "status", "--json"]))
            .expect("status --json");
        assert!(status["scores"].as_i64().unwrap_or(0) > 100_000, "{status}");
        assert!(
            status["advisories"].as_i64().unwrap_or(0) > 1000,
            "{status}"
        );
        // Asking the server for an import without configured sources is refused, clearly.
        let err = cli(&s, Some(OWNER_KEY), &["vulndb", "update"]);
        assert!(!err.status.success());
        assert!(
            String::from_utf8_lossy(&err.stderr)
                .contains("no vulnerability sources are configured"),
            "{}",
            String::from_utf8_lossy(&err.stderr)
        );
        cli_ok(&s, &["registry", "update", "default", "--scanning"]);

        let image = layout(
            &work.path().join("image"),
            &[std::fs::read(debian_rootfs()).expect("rootfs")],
        );
        let skopeo = Skopeo::new(work.path());
        let host = format!("127.0.0.1:{}", s.port);
        let (name, secret) = s.tester.clone().expect("tester");
        skopeo.login(&host, &name, &secret);
        let dest = format!("docker://{host}/debian:12");
        skopeo.run(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}", image.display()),
            &dest,
        ]);

        // Pending: no scan time, and the image pulls all the same.
        let pending = artifact(&s, "debian", "12").await;
        assert_eq!(pending["scan"]["status"], "pending", "{pending}");
        assert!(pending["scan"].get("scanned_at").is_none(), "{pending}");
        let out = work.path().join("pulled");
        skopeo.run(&[
            "copy",
            "--src-tls-verify=false",
            &dest,
            &format!("oci:{}", out.display()),
        ]);
        assert_eq!(
            artifact(&s, "debian", "12").await["scan"]["status"],
            "pending"
        );

        std::fs::remove_file(&pause).expect("unpause");
        let scanned = wait_for(&s, "debian", "12", |a| a["scan"]["status"] != "pending").await;
        let scan = &scanned["scan"];
        assert_eq!(scan["status"], "scanned", "{scanned}");
        assert!(scan["scanned_at"].is_string());
        assert_eq!(scan["os"], "Debian GNU/Linux 12 (bookworm)");

        // Beside it: an Alpine image (scanned, no Debian package), an artifact that is no
        // image, and an image in a repository whose name is too short to scan.
        let alpine = alpine_image(&work.path().join("alpine"), false);
        skopeo.run(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}", alpine.display()),
            &format!("docker://{host}/tools/alpine:3"),
        ]);
        skopeo.run(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}", alpine.display()),
            &format!("docker://{host}/x:1"),
        ]);
        let config = s.push_blob("tools/chart", b"{}").await;
        let layer = s.push_blob("tools/chart", b"chart bytes").await;
        let chart = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": layer, "size": 11}],
        });
        let r = s
            .push_manifest(
                "tools/chart",
                "1.0.0",
                "application/vnd.oci.image.manifest.v1+json",
                chart.to_string().as_bytes(),
            )
            .await;
        assert_eq!(r.status(), 201);
        let alpine_scan = wait_for(&s, "tools/alpine", "3", |a| {
            a["scan"]["status"] != "pending"
        })
        .await;
        assert_eq!(alpine_scan["scan"]["status"], "scanned", "{alpine_scan}");
        let chart_scan = wait_for(&s, "tools/chart", "1.0.0", |a| {
            a["scan"]["status"] != "pending"
        })
        .await;
        assert_eq!(chart_scan["scan"]["status"], "unknown");
        assert!(
            chart_scan["scan"]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("not a container image"),
            "{chart_scan}"
        );
        let short = artifact(&s, "x", "1").await;
        assert_eq!(short["scan"]["status"], "unknown");
        assert!(short["scan"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("shorter than 2"));

        // The repository's artifacts: tag, scan, last push and pull.
        let list: Value = serde_json::from_str(&cli_ok(
            &s,
            &["artifact", "list", "default", "debian", "--json"],
        ))
        .expect("list --json");
        let items = list.as_array().expect("items");
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(items[0]["tags"], json!(["12"]));
        assert_eq!(items[0]["digest"], scanned["digest"]);
        assert_eq!(items[0]["scan"]["status"], "scanned");
        assert!(
            items[0]["pushed_at"].is_string() && items[0]["pulled_at"].is_string(),
            "{list}"
        );

        sboms_of_the_debian_image(&s, work.path(), &scanned).await;

        // The same findings as the scanner reports for the image file, on the same database.
        let report: Value = serde_json::from_str(&wharf_on(
            &s,
            &["scan", image.to_str().expect("path"), "--json"],
        ))
        .expect("scan --json");
        let all = vulns(&s, &[]);
        assert!(!report["findings"].as_array().expect("findings").is_empty());
        assert_eq!(pairs(&all["items"]), pairs(&report["findings"]));
        assert_eq!(
            all["items"].as_array().map(Vec::len),
            report["findings"].as_array().map(Vec::len)
        );
        assert_eq!(scan["packages"], report["packages"]);
        let total: i64 = scan["summary"]
            .as_object()
            .expect("summary")
            .values()
            .filter_map(Value::as_i64)
            .sum();
        assert_eq!(
            total as usize,
            report["findings"].as_array().map_or(0, Vec::len)
        );

        // Pages of three follow each other without gap or overlap, most severe first.
        let base = "/api/v1/registries/default/artifacts/debian/-/12/vulnerabilities";
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let url = match &after {
                Some(a) => format!("{base}?limit=3&after={a}"),
                None => format!("{base}?limit=3"),
            };
            let page: Value = s
                .anon
                .get(s.url(&url))
                .bearer_auth(OWNER_KEY)
                .send()
                .await
                .expect("page")
                .json()
                .await
                .expect("json");
            paged.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_string()),
                None => break,
            }
        }
        assert_eq!(Value::Array(paged.clone()), all["items"]);
        let ranks: Vec<usize> = paged
            .iter()
            .map(|f| {
                ["critical", "high", "medium", "low", "none", "unknown"]
                    .iter()
                    .position(|s| f["severity"] == *s)
                    .expect("severity")
            })
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");

        // Bad input: a clear problem, and a one-line CLI error.
        let bad = s
            .anon
            .get(s.url(&format!("{base}?severity=severe")))
            .bearer_auth(OWNER_KEY)
            .send()
            .await
            .expect("bad");
        assert_eq!(bad.status(), 400);
        let err = cli(
            &s,
            Some(OWNER_KEY),
            &["artifact", "vulns", "default", "debian:13"],
        );
        assert!(!err.status.success());
        assert!(String::from_utf8_lossy(&err.stderr).contains("no artifact"));

        // A newer database is matched against the stored inventory: with every layer gone
        // from the store, a new advisory for the image's openssl still shows up.
        if backend == Backend::Sqlite || backend == Backend::Postgres {
            let blobs = s.data_dir().join("blobs");
            assert!(blobs.is_dir(), "blobs stored under {}", blobs.display());
            std::fs::remove_dir_all(&blobs).expect("remove blobs");
        }
        let extra = work.path().join("debian12-extra.jsonl");
        std::fs::write(
            &extra,
            r#"{"id": "WHARF-TEST-1", "aliases": ["CVE-2099-0001"], "modified": "2026-11-29T00:00:00Z", "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}], "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}]}"#,
        )
        .expect("advisory");
        wharf_on(&s, &["vulndb", "import", extra.to_str().expect("path")]);
        wait_for(&s, "debian", "12", |_| {
            let v = vulns(&s, &[]);
            pairs(&v["items"])
                .iter()
                .any(|(_, id)| id == "CVE-2099-0001")
        })
        .await;
        let after_import = artifact(&s, "debian", "12").await;
        assert_eq!(after_import["scan"]["status"], "scanned", "{after_import}");
        // The new findings are the advisory's, for the packages built from openssl; the
        // others are as before.
        let now = pairs(&vulns(&s, &[])["items"]);
        let (new, old): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
            now.into_iter().partition(|(_, id)| id == "CVE-2099-0001");
        assert_eq!(old, pairs(&all["items"]));
        let new_packages: Vec<&str> = new.iter().map(|(p, _)| p.as_str()).collect();
        assert!(new_packages.contains(&"openssl"), "{new_packages:?}");

        // The search by ID or alias lists exactly the image's packages built from openssl.
        for id in ["CVE-2099-0001", "WHARF-TEST-1"] {
            let found: Value = serde_json::from_str(&cli_ok(
                &s,
                &["artifact", "affected", "default", id, "--json"],
            ))
            .expect("affected --json");
            let hits: std::collections::BTreeSet<(String, String, String)> = found
                .as_array()
                .expect("hits")
                .iter()
                .map(|h| {
                    (
                        h["repository"].as_str().unwrap_or_default().to_string(),
                        h["digest"].as_str().unwrap_or_default().to_string(),
                        h["package"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let digest = scanned["digest"].as_str().expect("digest").to_string();
            let want: std::collections::BTreeSet<(String, String, String)> = new
                .iter()
                .map(|(p, _)| ("debian".to_string(), digest.clone(), p.clone()))
                .collect();
            assert_eq!(hits, want, "{id}");
        }
        let none: Value = serde_json::from_str(&cli_ok(
            &s,
            &["artifact", "affected", "default", "CVE-2099-9999", "--json"],
        ))
        .expect("affected --json");
        assert_eq!(none, json!([]));

        // The vulnerability's details, by either name: aliases, its score with the vector and
        // source, the affected package with no fix, and where it comes from.
        for id in ["CVE-2099-0001", "WHARF-TEST-1"] {
            let v: Value =
                serde_json::from_str(&cli_ok(&s, &["vulndb", "show", id, "--json"])).expect("show");
            assert_eq!(v["id"], id);
            let other = if id == "WHARF-TEST-1" {
                "CVE-2099-0001"
            } else {
                "WHARF-TEST-1"
            };
            assert!(
                v["aliases"]
                    .as_array()
                    .expect("aliases")
                    .contains(&json!(other)),
                "{v}"
            );
            assert_eq!(v["severity"], "critical", "{v}");
            assert_eq!(v["score"], 9.8, "{v}");
            let score = &v["scores"][0];
            assert_eq!(
                score["vector"], "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                "{v}"
            );
            assert_eq!(score["source"], "debian12-extra");
            assert_eq!(
                v["affected"],
                json!([{"source": "debian12-extra", "ecosystem": "Debian:12", "package": "openssl", "fixed": []}])
            );
            assert_eq!(v["sources"][0]["source"], "debian12-extra");
            assert_eq!(v["sources"][0]["kind"], "osv");
            assert_eq!(v["sources"][0]["advisory"], "WHARF-TEST-1");
        }
        let human = cli_ok(&s, &["vulndb", "show", "WHARF-TEST-1"]);
        assert!(
            human.contains("critical (9.8)") && human.contains("not fixed"),
            "{human}"
        );
        // A real one, scored by the NVD and vulnrichment tables as well as its advisory.
        let real = report["findings"][0]["id"]
            .as_str()
            .expect("id")
            .to_string();
        let v: Value =
            serde_json::from_str(&cli_ok(&s, &["vulndb", "show", &real, "--json"])).expect("show");
        assert!(
            v["affected"].as_array().is_some_and(|a| !a.is_empty()),
            "{v}"
        );
        assert!(
            v["sources"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["source"] == "debian12")),
            "{v}"
        );
        let err = cli(&s, Some(OWNER_KEY), &["vulndb", "show", "CVE-2099-9999"]);
        assert!(!err.status.success());
        assert!(String::from_utf8_lossy(&err.stderr).contains("no imported source knows"));

        // The repositories, with the highest severity of their latest artifact.
        let repos: Value =
            serde_json::from_str(&cli_ok(&s, &["repo", "list", "default", "--json"]))
                .expect("repos");
        let by_name = |n: &str| {
            repos
                .as_array()
                .expect("repos")
                .iter()
                .find(|r| r["name"] == n)
                .cloned()
                .unwrap_or_else(|| panic!("{n} in {repos}"))
        };
        let debian = by_name("debian");
        assert_eq!(debian["latest_artifact"]["digest"], scanned["digest"]);
        assert_eq!(
            debian["latest_artifact"]["scan"]["highest_severity"], "critical",
            "{debian}"
        );
        assert_eq!(
            by_name("tools/chart")["latest_artifact"]["scan"]["status"],
            "unknown"
        );
        let table = cli_ok(&s, &["repo", "list", "default"]);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("debian ") && l.contains("critical")),
            "{table}"
        );

        // Filters, as the scanner's: the new advisory is critical (from its own CVSS vector)
        // and has no fix; several severities at once.
        let critical = vulns(&s, &["--severity", "critical,high"]);
        assert_eq!(pairs(&critical["items"]), new);
        for f in critical["items"].as_array().expect("items") {
            assert_eq!(
                (&f["severity"], &f["fixable"]),
                (&json!("critical"), &json!(false))
            );
        }
        assert!(vulns(&s, &["--severity", "critical", "--fixable"])["items"]
            .as_array()
            .expect("items")
            .is_empty());
        let fixable: std::collections::BTreeSet<(String, String)> = report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["fixable"] == true)
            .map(|f| {
                (
                    f["package"].as_str().unwrap_or_default().to_string(),
                    f["id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert!(!fixable.is_empty());
        assert_eq!(pairs(&vulns(&s, &["--fixable"])["items"]), fixable);
    }

    /// An OSV advisory line for `id` naming Debian 12's `package`.
    fn osv_line(id: &str, package: &str) -> String {
        json!({"id": id, "modified": "2026-11-29T00:00:00Z", "summary": format!("{id} in {package}"),
            "affected": [{"package": {"ecosystem": "Debian:12", "name": package},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "9.9"}]}]}]})
        .to_string()
    }

    /// Serves `dir` over HTTP on loopback until dropped, as a mirror of OSV dumps would.
    struct HttpDir {
        child: std::process::Child,
        port: u16,
    }

    impl HttpDir {
        fn start(dir: &Path) -> HttpDir {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port();
            let child = Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--directory")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3 -m http.server");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "http.server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            HttpDir { child, port }
        }
    }

    impl Drop for HttpDir {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The database's status once the scheduled run that started at or after `since` ended.
    async fn run_after(s: &Server, since: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status: Value = s
                .anon
                .get(s.url("/api/v1/system/vulndb"))
                .bearer_auth(OWNER_KEY)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("json");
            let run = &status["schedule"]["last_run"];
            if run["started_at"].as_str() >= Some(since) && run["finished_at"].is_string() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no run ended: {status}\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn report_of<'a>(status: &'a Value, location: &str) -> &'a Value {
        status["schedule"]["last_run"]["files"]
            .as_array()
            .and_then(|f| {
                f.iter().find(|f| {
                    f["location"]
                        .as_str()
                        .is_some_and(|l| l.ends_with(location))
                })
            })
            .unwrap_or_else(|| panic!("{location} in {status}"))
    }

    async fn configured_sources_are_imported_on_schedule(backend: Backend) {
        let work = tempfile::tempdir().expect("tempdir");
        // A directory with an advisory file and a corrupt one, and a dump served over HTTP.
        let local = work.path().join("local");
        std::fs::create_dir(&local).expect("dir");
        let alpha = local.join("alpha.jsonl");
        let lines = [
            osv_line("WHARF-A-1", "openssl"),
            osv_line("WHARF-A-2", "curl"),
        ];
        std::fs::write(&alpha, lines.join("\n")).expect("alpha");
        std::fs::write(
            local.join("broken.jsonl.gz"),
            b"\x1f\x8b\x08\0 not gzip at all",
        )
        .expect("broken");
        let served = work.path().join("served");
        std::fs::create_dir(&served).expect("dir");
        let remote: Vec<String> = (1..=3)
            .map(|i| osv_line(&format!("WHARF-R-{i}"), "zlib"))
            .collect();
        std::fs::write(
            served.join("remote.jsonl.gz"),
            support::gzip(remote.join("\n").as_bytes()),
        )
        .expect("remote");
        // OSV's own dumps: a zip of one JSON record per entry, one `all.zip` per ecosystem.
        std::fs::create_dir(served.join("Debian")).expect("dir");
        let (z1, z2) = (osv_line("WHARF-Z-1", "bash"), osv_line("WHARF-Z-2", "bash"));
        std::fs::write(
            served.join("Debian/all.zip"),
            zip_of(&[
                ("WHARF-Z-1.json", z1.as_bytes()),
                ("WHARF-Z-2.json", z2.as_bytes()),
                ("WHARF-Z-3.json", b"{\"not\": \"osv\"}"),
            ]),
        )
        .expect("zip");
        let http = HttpDir::start(&served);
        let url = format!("http://127.0.0.1:{}/remote.jsonl.gz", http.port);
        let zip_url = format!("http://127.0.0.1:{}/Debian/all.zip", http.port);

        let s = Server::start_with(
            backend,
            &[
                "--vulndb-source",
                local.to_str().expect("path"),
                "--vulndb-source",
                &url,
                "--vulndb-source",
                &zip_url,
            ],
        )
        .await;
        // The first run starts with the server: the corrupt file is skipped with the reason,
        // the rest imported.
        let first = run_after(&s, "").await;
        assert_eq!(
            first["schedule"]["sources"],
            json!([local.to_str(), url, zip_url]),
            "{first}"
        );
        assert_eq!(report_of(&first, "alpha.jsonl")["added"], 2, "{first}");
        assert!(
            report_of(&first, "broken.jsonl.gz")["error"].is_string(),
            "{first}"
        );
        let r = report_of(&first, &url);
        assert_eq!(
            (r["source"].as_str(), &r["added"]),
            (Some("remote"), &json!(3)),
            "{first}"
        );
        let z = report_of(&first, &zip_url);
        assert_eq!(
            (z["source"].as_str(), &z["added"], &z["skipped"]),
            (Some("Debian-all"), &json!(2), &json!(1)),
            "{first}"
        );
        assert_eq!(first["schedule"]["last_run"]["changed"], true);
        assert_eq!(first["advisories"], 7);
        let remote_source = first["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .find(|x| x["source"] == "remote")
            .cloned();
        assert_eq!(
            remote_source.map(|r| r["location"].clone()),
            Some(json!(url))
        );
        let v: Value =
            serde_json::from_str(&cli_ok(&s, &["vulndb", "show", "WHARF-R-2", "--json"]))
                .expect("show");
        assert_eq!(v["affected"][0]["fixed"], json!(["9.9"]), "{v}");
        assert!(
            s.log().contains("broken.jsonl.gz"),
            "the log names the skipped file"
        );

        // Asked for ahead of time: only what changed is written; the unchanged dump is not
        // downloaded again.
        std::fs::remove_file(local.join("broken.jsonl.gz")).expect("rm");
        std::fs::write(
            &alpha,
            format!("{}\n{}", lines.join("\n"), osv_line("WHARF-A-3", "openssl")),
        )
        .expect("alpha");
        let out = cli_ok(&s, &["vulndb", "update"]);
        assert!(
            out.contains("alpha: 1 added, 0 updated, 2 unchanged"),
            "{out}"
        );
        assert!(
            out.contains(&format!("{url}: not modified since the last download")),
            "{out}"
        );
        let second = run_after(&s, "").await;
        assert!(
            second["version"].as_i64() > first["version"].as_i64(),
            "{second}"
        );
        assert_eq!(second["advisories"], 8);
        let human = wharf_on(&s, &["vulndb", "status"]);
        assert!(
            human.contains("alpha: 1 added") && human.contains("8 advisories"),
            "{human}"
        );

        // The mirror goes away: the run says why, and what was imported stays in force.
        drop(http);
        let asked: Value = s
            .anon
            .post(s.url("/api/v1/system/vulndb/imports"))
            .bearer_auth(OWNER_KEY)
            .send()
            .await
            .expect("import")
            .json()
            .await
            .expect("json");
        let third = run_after(&s, asked["requested_at"].as_str().expect("requested_at")).await;
        let failed = report_of(&third, &url);
        assert!(
            failed["error"]
                .as_str()
                .unwrap_or_default()
                .contains("download failed"),
            "{third}"
        );
        assert_eq!(third["advisories"], 8);
        assert_eq!(third["schedule"]["last_run"]["changed"], false);
        let err = cli(&s, Some(OWNER_KEY), &["vulndb", "update"]);
        assert!(
            !err.status.success(),
            "the failed download fails the command"
        );
        assert!(String::from_utf8_lossy(&err.stderr).contains("could not be imported"));
    }

    on_both_backends!(
        debian_image_is_scanned_on_push,
        configured_sources_are_imported_on_schedule
    );

    /// A source that does not exist stops the start, named.
    #[test]
    fn a_missing_source_stops_the_start() {
        let work = tempfile::tempdir().expect("tempdir");
        let o = wharf(&[
            "serve",
            "--data-dir",
            work.path().to_str().expect("path"),
            "--listen",
            "127.0.0.1:0",
            "--vulndb-source",
            "/nonexistent/osv",
        ]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("vulndb source /nonexistent/osv"),
            "{}",
            text(&o)
        );
        let o = wharf(&[
            "serve",
            "--data-dir",
            work.path().to_str().expect("path"),
            "--vulndb-source",
            "ftp://x/y.json",
        ]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("only http:// and https:// URLs"),
            "{}",
            text(&o)
        );
    }
}
