//! The package databases of Debian (`/var/lib/dpkg/status`, distroless `status.d/`) and Alpine
//! (`/lib/apk/db/installed`): paragraphs of fields separated by blank lines.

use crate::inventory::{Kind, Package};

/// A database claiming more packages than this is malformed or hostile.
const MAX_PACKAGES: usize = 200_000;

fn too_many(path: &str) -> String {
    format!("{path}: more than {MAX_PACKAGES} package entries; not read")
}

/// `status` is true for the main status file, where only packages whose `Status` ends in
/// `installed` are installed (removed ones stay with `deinstall ok config-files`); distroless
/// `status.d` files have no Status field.
pub fn parse_dpkg(text: &str, path: &str, status: bool) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut source, mut state) = (None, None, None, None);
        for line in para.lines() {
            // Continuation lines (descriptions, conffiles) start with white space.
            if line.starts_with([' ', '\t']) || line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "Package" => name = Some(value),
                "Version" => version = Some(value),
                "Source" => source = Some(value),
                "Status" => state = Some(value),
                _ => {}
            }
        }
        let (Some(name), Some(version)) = (name, version) else {
            continue;
        };
        if status && !state.is_some_and(|s| s.ends_with(" installed")) {
            continue;
        }
        // `Source: brotli (1.0.9-2)` names the source version when it differs (binNMUs);
        // `Source: brotli` alone means the same version as the binary.
        let (src_name, src_version) = match source {
            Some(s) => match s.split_once(' ') {
                Some((n, v)) => (
                    Some(n.to_string()),
                    Some(
                        v.trim()
                            .trim_start_matches('(')
                            .trim_end_matches(')')
                            .to_string(),
                    ),
                ),
                None => (Some(s.to_string()), None),
            },
            None => (None, None),
        };
        out.push(Package {
            kind: Kind::Dpkg,
            name: name.to_string(),
            version: version.to_string(),
            source: src_name.filter(|s| s != name),
            source_version: src_version.filter(|v| v != version),
            path: path.to_string(),
        });
        if out.len() > MAX_PACKAGES {
            return Err(too_many(path));
        }
    }
    Ok(out)
}

/// apk's installed database: `P:` name, `V:` version, `o:` origin (the source package secdb
/// is keyed by).
pub fn parse_apk(text: &str, path: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut origin) = (None, None, None);
        for line in para.lines() {
            match line.split_at_checked(2) {
                Some(("P:", v)) => name = Some(v.trim()),
                Some(("V:", v)) => version = Some(v.trim()),
                Some(("o:", v)) => origin = Some(v.trim()),
                _ => {}
            }
        }
        if let (Some(name), Some(version)) = (name, version) {
            out.push(Package {
                kind: Kind::Apk,
                name: name.to_string(),
                version: version.to_string(),
                source: origin.filter(|o| *o != name).map(str::to_string),
                source_version: None,
                path: path.to_string(),
            });
            if out.len() > MAX_PACKAGES {
                return Err(too_many(path));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_binnmu_and_removed_packages() {
        let status = "Package: libbrotli1\nStatus: install ok installed\nArchitecture: amd64\nSource: brotli (1.0.9-2)\nVersion: 1.0.9-2+b6\nDescription: x\n more\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: openssl\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\n\nPackage: libssl3\nStatus: install ok installed\nSource: openssl\nVersion: 3.0.11-1~deb12u2\n";
        let p = parse_dpkg(status, "var/lib/dpkg/status", true).expect("parse");
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].name, "libbrotli1");
        assert_eq!(p[0].source.as_deref(), Some("brotli"));
        assert_eq!(p[0].source_version.as_deref(), Some("1.0.9-2"));
        assert_eq!(p[1].source, None);
        assert_eq!(p[2].source.as_deref(), Some("openssl"));
        assert_eq!(p[2].source_version, None);
        // Distroless status.d files have no Status field.
        let d = parse_dpkg(
            "Package: libc6\nVersion: 2.36-9+deb12u4\nSource: glibc\n",
            "x",
            false,
        )
        .expect("parse");
        assert_eq!(d[0].source.as_deref(), Some("glibc"));
    }

    #[test]
    fn apk_origin() {
        let db = "C:Q1abc\nP:libcrypto3\nV:3.0.7-r0\nA:x86_64\no:openssl\n\nP:musl\nV:1.2.3-r4\no:musl\n";
        let p = parse_apk(db, "lib/apk/db/installed").expect("parse");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].source.as_deref(), Some("openssl"));
        assert_eq!(p[1].source, None);
    }
}
