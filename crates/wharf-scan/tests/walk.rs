//! The layer walker on images built here: whiteouts, symlinks, compression, and bad input that
//! must be skipped with a warning while the rest of the scan completes.

mod support;

use support::{gzip, oci_layout, tar, Entry};
use wharf_scan::image;
use wharf_scan::inventory::{Inventory, Kind};

const DEBIAN_OS: &[u8] =
    b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
const STATUS_TWO: &[u8] = b"Package: libssl3\nStatus: install ok installed\nSource: openssl\nVersion: 3.0.11-1~deb12u1\n\nPackage: curl\nStatus: install ok installed\nVersion: 7.88.1-10+deb12u4\n";
const STATUS_ONE: &[u8] =
    b"Package: libssl3\nStatus: install ok installed\nSource: openssl\nVersion: 3.0.11-1~deb12u1\n";

fn scan(layers: &[Vec<u8>]) -> Inventory {
    let dir = tempfile::tempdir().expect("tempdir");
    let digest = oci_layout(dir.path(), layers);
    let img = image::open(dir.path(), None).expect("open layout");
    assert_eq!(img.id(), digest);
    wharf_scan::walk::inventory(img.as_ref())
}

fn names(inv: &Inventory, kind: Kind) -> Vec<String> {
    inv.packages
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| format!("{} {}", p.name, p.version))
        .collect()
}

#[test]
fn whiteouts_remove_packages_of_lower_layers() {
    let base = gzip(&tar(&[
        Entry::Dir("etc"),
        Entry::Symlink("etc/os-release", "../usr/lib/os-release"),
        Entry::File("usr/lib/os-release", DEBIAN_OS),
        Entry::File("var/lib/dpkg/status", STATUS_TWO),
        Entry::File(
            "usr/lib/python3/dist-packages/urllib3-1.26.4.dist-info/METADATA",
            b"Name: urllib3\nVersion: 1.26.4\n",
        ),
        Entry::File(
            "usr/lib/python3/dist-packages/idna-3.3.dist-info/METADATA",
            b"Name: idna\nVersion: 3.3\n",
        ),
        Entry::File(
            "app/node_modules/lodash/package.json",
            br#"{"name":"lodash","version":"4.17.20"}"#,
        ),
    ]));
    let top = gzip(&tar(&[
        // apt-get remove curl rewrites the status file; pip uninstall leaves a whiteout.
        Entry::File("var/lib/dpkg/status", STATUS_ONE),
        Entry::File(
            "usr/lib/python3/dist-packages/.wh.urllib3-1.26.4.dist-info",
            b"",
        ),
        // An opaque directory hides everything below it, but not what this layer puts there.
        Entry::File("app/node_modules/.wh..wh..opq", b""),
        Entry::File(
            "app/node_modules/minimist/package.json",
            br#"{"name":"minimist","version":"1.2.5"}"#,
        ),
    ]));
    let inv = scan(std::slice::from_ref(&base));
    assert_eq!(inv.os.as_ref().map(|o| o.id.as_str()), Some("debian"));
    assert_eq!(
        names(&inv, Kind::Dpkg),
        ["curl 7.88.1-10+deb12u4", "libssl3 3.0.11-1~deb12u1"]
    );
    assert_eq!(names(&inv, Kind::Python), ["idna 3.3", "urllib3 1.26.4"]);

    let inv = scan(&[base, top]);
    assert!(!inv.partial, "{:?}", inv.warnings);
    assert_eq!(
        inv.os.as_ref().and_then(|o| o.version_id.as_deref()),
        Some("12")
    );
    assert_eq!(names(&inv, Kind::Dpkg), ["libssl3 3.0.11-1~deb12u1"]);
    assert_eq!(names(&inv, Kind::Python), ["idna 3.3"]);
    assert_eq!(names(&inv, Kind::Npm), ["minimist 1.2.5"]);
    let ssl = &inv
        .packages
        .iter()
        .find(|p| p.name == "libssl3")
        .expect("libssl3");
    assert_eq!(ssl.source.as_deref(), Some("openssl"));
    assert_eq!(ssl.path, "var/lib/dpkg/status");
}

#[test]
fn a_whiteout_in_the_same_layer_does_not_hide_that_layers_files() {
    let base = gzip(&tar(&[Entry::File(
        "site-packages/a-1.0.dist-info/METADATA",
        b"Name: a\nVersion: 1.0\n",
    )]));
    let top = gzip(&tar(&[
        Entry::File(
            "site-packages/a-2.0.dist-info/METADATA",
            b"Name: a\nVersion: 2.0\n",
        ),
        Entry::File("site-packages/.wh.a-1.0.dist-info", b""),
    ]));
    let inv = scan(&[base, top]);
    assert_eq!(names(&inv, Kind::Python), ["a 2.0"]);
}

#[test]
fn path_traversal_and_symlink_loops_are_skipped_with_warnings() {
    let layer = gzip(&tar(&[
        Entry::RawPath("../../var/lib/dpkg/status", STATUS_TWO),
        Entry::Symlink("etc/os-release", "os-release.d"),
        Entry::Symlink("etc/os-release.d", "/etc/os-release"),
        Entry::File("lib/apk/db/installed", b"P:musl\nV:1.2.3-r4\no:musl\n"),
    ]));
    let inv = scan(&[layer]);
    assert!(inv.partial);
    let text = format!("{:?}", inv.warnings);
    assert!(text.contains("escapes the image root"), "{text}");
    assert!(text.contains("symlink loop"), "{text}");
    // The traversing entry did not land anywhere; the rest was read.
    assert!(names(&inv, Kind::Dpkg).is_empty());
    assert_eq!(names(&inv, Kind::Apk), ["musl 1.2.3-r4"]);
}

#[test]
fn corrupt_truncated_and_unknown_layers_leave_a_partial_result() {
    let good = gzip(&tar(&[Entry::File("etc/os-release", DEBIAN_OS)]));
    let mut corrupt = gzip(&tar(&[Entry::File("var/lib/dpkg/status", STATUS_TWO)]));
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    corrupt[mid + 1] ^= 0xff;
    let full = gzip(&tar(&[
        Entry::File(
            "app/node_modules/lodash/package.json",
            br#"{"name":"lodash","version":"4.17.20"}"#,
        ),
        Entry::File("big", &[7u8; 200_000]),
    ]));
    let truncated = full[..full.len() / 2].to_vec();
    let xz = b"\xfd7zXZ\x00\x00\x04garbage".to_vec();
    let inv = scan(&[good, corrupt, truncated, xz]);
    assert!(inv.partial);
    assert_eq!(inv.os.as_ref().map(|o| o.id.as_str()), Some("debian"));
    let text = format!("{:?}", inv.warnings);
    assert!(text.contains("unknown layer compression (xz)"), "{text}");
    assert!(inv.warnings.len() >= 3, "{text}");
    // What the truncated layer held before it was cut is still reported.
    assert_eq!(names(&inv, Kind::Npm), ["lodash 4.17.20"]);
}

#[test]
fn plain_and_zstd_layers_are_read() {
    let plain = tar(&[Entry::File(
        "etc/os-release",
        b"ID=alpine\nVERSION_ID=3.17.1\n",
    )]);
    let apk = tar(&[Entry::File(
        "lib/apk/db/installed",
        b"P:libcrypto3\nV:3.0.7-r0\no:openssl\n",
    )]);
    let zstd =
        ruzstd::encoding::compress_to_vec(&apk[..], ruzstd::encoding::CompressionLevel::Fastest);
    let inv = scan(&[plain, zstd]);
    assert!(!inv.partial, "{:?}", inv.warnings);
    assert_eq!(
        inv.os.as_ref().and_then(|o| o.version_id.as_deref()),
        Some("3.17.1")
    );
    assert_eq!(names(&inv, Kind::Apk), ["libcrypto3 3.0.7-r0"]);
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = gzip(&tar(&[Entry::File("etc/os-release", DEBIAN_OS)]));
    oci_layout(dir.path(), std::slice::from_ref(&layer));
    let digest = support::sha256(&layer);
    let tampered = gzip(&tar(&[Entry::File("etc/os-release", b"ID=alpine\n")]));
    std::fs::write(dir.path().join("blobs/sha256").join(&digest[7..]), tampered).expect("write");
    let img = image::open(dir.path(), None).expect("open");
    let inv = wharf_scan::walk::inventory(img.as_ref());
    assert!(inv.partial);
    assert!(format!("{:?}", inv.warnings).contains("does not match its digest"));
}

#[test]
fn bad_package_databases_are_named_in_warnings() {
    let layer = gzip(&tar(&[
        Entry::File("var/lib/dpkg/status", b"Package: x\nVersion: \xff\xfe\n"),
        Entry::File("app/node_modules/bad/package.json", b"{not json"),
        Entry::File(
            "var/lib/rpm/rpmdb.sqlite",
            b"SQLite format 3\x00 but not really",
        ),
        Entry::File(
            "var/lib/rpm/Packages",
            b"\x00\x06\x15\x61 Berkeley DB pages",
        ),
        Entry::File("lib/apk/db/installed", b"P:musl\nV:1.2.3-r4\n"),
    ]));
    let inv = scan(&[layer]);
    let text = format!("{:?}", inv.warnings);
    assert!(
        text.contains("/var/lib/rpm/Packages")
            && text.contains("Berkeley DB and NDB rpm databases are not read"),
        "{text}"
    );
    for file in [
        "/var/lib/dpkg/status",
        "/app/node_modules/bad/package.json",
        "/var/lib/rpm/rpmdb.sqlite",
    ] {
        assert!(text.contains(file), "no warning naming {file}: {text}");
    }
    assert_eq!(names(&inv, Kind::Apk), ["musl 1.2.3-r4"]);
}

#[test]
fn an_image_with_nothing_recognisable_says_why() {
    let inv = scan(&[gzip(&tar(&[Entry::File("hello.txt", b"hi")]))]);
    assert!(inv
        .unknown_reason()
        .expect("a reason")
        .contains("os-release"));
}

#[test]
fn docker_save_archives_are_read_in_manifest_order() {
    let l1 = tar(&[
        Entry::File("var/lib/dpkg/status", STATUS_TWO),
        Entry::File("etc/os-release", DEBIAN_OS),
    ]);
    let l2 = tar(&[Entry::File("var/lib/dpkg/status", STATUS_ONE)]);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_hex = &support::sha256(config)[7..];
    let (h1, h2) = (&support::sha256(&l1)[7..], &support::sha256(&l2)[7..]);
    let manifest = format!(
        r#"[{{"Config":"{config_hex}.json","RepoTags":["x:1"],"Layers":["{h1}/layer.tar","{h2}/layer.tar"]}}]"#
    );
    // Layers stored in the opposite order to the manifest's, as docker may write them.
    let archive = tar(&[
        Entry::File(&format!("{h2}/layer.tar"), &l2),
        Entry::File("manifest.json", manifest.as_bytes()),
        Entry::File(&format!("{config_hex}.json"), config),
        Entry::File(&format!("{h1}/layer.tar"), &l1),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.tar");
    std::fs::write(&path, archive).expect("write");
    let img = image::open(&path, None).expect("open archive");
    assert_eq!(img.id(), format!("sha256:{config_hex}"));
    let inv = wharf_scan::walk::inventory(img.as_ref());
    assert!(!inv.partial, "{:?}", inv.warnings);
    assert_eq!(names(&inv, Kind::Dpkg), ["libssl3 3.0.11-1~deb12u1"]);

    std::fs::write(&path, b"not a tar").expect("write");
    assert!(image::open(&path, None).is_err());
}

#[test]
fn oversized_package_databases_are_skipped_with_a_warning() {
    // One byte over the 128 MiB read for a dpkg status file.
    let huge = vec![b'#'; (128 << 20) + 1];
    let layer = tar(&[
        Entry::File("var/lib/dpkg/status", &huge),
        Entry::File("etc/os-release", DEBIAN_OS),
    ]);
    let inv = scan(&[layer]);
    assert!(inv.partial);
    let text = format!("{:?}", inv.warnings);
    assert!(
        text.contains("/var/lib/dpkg/status") && text.contains("larger than the 128 MiB"),
        "{text}"
    );
    assert_eq!(inv.os.as_ref().map(|o| o.id.as_str()), Some("debian"));
}

#[test]
fn garbage_never_panics() {
    use wharf_scan::detect::{parse, Interest};
    let kinds = [
        Interest::OsRelease,
        Interest::DpkgStatus,
        Interest::DpkgStatusD,
        Interest::ApkInstalled,
        Interest::RpmSqlite,
        Interest::PythonMetadata,
        Interest::NpmPackage,
        Interest::NpmLock,
        Interest::CargoLock,
        Interest::Executable,
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..2000 {
        let len = (round * 7) % 700;
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(state as u8);
        }
        // Some inputs start like the real thing, to get past the first checks.
        match round % 4 {
            1 => bytes
                .splice(0..0, b"\x7fELF".iter().copied())
                .for_each(drop),
            2 => bytes
                .splice(0..0, b"\xff Go buildinf:\x08\x02".iter().copied())
                .for_each(drop),
            3 => bytes
                .splice(0..0, b"SQLite format 3\0".iter().copied())
                .for_each(drop),
            _ => {}
        }
        for k in kinds {
            let _ = parse(k, "fuzz", &bytes);
        }
        let _ = wharf_scan::detect::go_buildinfo(&bytes, "fuzz");
        if round % 10 == 0 {
            // As a layer: refused as unreadable, never read as packages.
            let inv = scan(&[bytes.clone()]);
            assert!(inv.partial || bytes.is_empty(), "{:?}", inv.packages);
            assert!(inv.packages.is_empty());
        }
    }
}
