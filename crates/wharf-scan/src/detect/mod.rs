//! Package detectors. The layer walker asks `classify` which files matter, reads each (up to its
//! size limit) and hands the bytes to `parse`; what comes back is kept per path, so a later layer
//! that changes or deletes the file changes the result.

mod binary;
mod java;
mod lang;
mod os;
mod osdb;
mod rpm;

use crate::inventory::{Os, Package};

pub use binary::{go_buildinfo, BinaryScan};

/// What a detector makes of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Os(Os),
    Packages(Vec<Package>),
}

/// The kinds of files detectors read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    OsRelease,
    DpkgStatus,
    DpkgStatusD,
    ApkInstalled,
    RpmSqlite,
    RpmLegacy,
    PythonMetadata,
    NpmPackage,
    NpmLock,
    CargoLock,
    /// A Java archive: jar, war or ear.
    JavaArchive,
    /// An executable: perhaps a Go or Rust binary.
    Executable,
}

impl Interest {
    /// The largest file of this kind read into memory; bigger ones are skipped with a warning.
    pub fn limit(self) -> u64 {
        const MIB: u64 = 1024 * 1024;
        match self {
            Interest::OsRelease => 64 * 1024,
            Interest::DpkgStatus | Interest::ApkInstalled | Interest::RpmSqlite => 128 * MIB,
            // Not read at all: the file is named in a warning.
            Interest::RpmLegacy => 0,
            Interest::DpkgStatusD
            | Interest::PythonMetadata
            | Interest::NpmPackage
            | Interest::CargoLock => 4 * MIB,
            Interest::NpmLock => 32 * MIB,
            // Zips are read whole (their index is at the end); fat jars run to 100 MiB.
            Interest::JavaArchive => 128 * MIB,
            // Larger executables are still searched for Go build info as a stream.
            Interest::Executable => 64 * MIB,
        }
    }
}

/// Which detector, if any, wants the file at `path` (relative to the image root, no leading
/// slash). `executable` is the file's mode having an execute bit.
pub fn classify(path: &str, executable: bool) -> Option<Interest> {
    let name = path.rsplit('/').next().unwrap_or(path);
    match path {
        "etc/os-release" | "usr/lib/os-release" => return Some(Interest::OsRelease),
        "var/lib/dpkg/status" => return Some(Interest::DpkgStatus),
        "lib/apk/db/installed" => return Some(Interest::ApkInstalled),
        "var/lib/rpm/rpmdb.sqlite" | "usr/lib/sysimage/rpm/rpmdb.sqlite" => {
            return Some(Interest::RpmSqlite)
        }
        "var/lib/rpm/Packages" | "var/lib/rpm/Packages.db" | "usr/lib/sysimage/rpm/Packages.db" => {
            return Some(Interest::RpmLegacy)
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("var/lib/dpkg/status.d/") {
        // Distroless keeps one paragraph per package; `.md5sums` files list file checksums.
        if !rest.contains('/') && !rest.ends_with(".md5sums") {
            return Some(Interest::DpkgStatusD);
        }
        return None;
    }
    let parent = path.rsplit('/').nth(1).unwrap_or("");
    if (name == "METADATA" && parent.ends_with(".dist-info"))
        || (name == "PKG-INFO" && parent.ends_with(".egg-info"))
        || (name.ends_with(".egg-info") && !executable && path.contains("-packages/"))
    {
        return Some(Interest::PythonMetadata);
    }
    if name == "package.json" && is_node_module_dir(path) {
        return Some(Interest::NpmPackage);
    }
    if name == "package-lock.json" || name == ".package-lock.json" {
        return Some(Interest::NpmLock);
    }
    if name == "Cargo.lock" {
        return Some(Interest::CargoLock);
    }
    if java::is_archive(name) {
        return Some(Interest::JavaArchive);
    }
    if executable {
        return Some(Interest::Executable);
    }
    None
}

/// `.../node_modules/<name>/package.json` or `.../node_modules/@scope/<name>/package.json`:
/// package.json files deeper inside a package (test fixtures, say) are not installed packages.
fn is_node_module_dir(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    (n >= 3 && parts[n - 3] == "node_modules" && !parts[n - 2].starts_with('@'))
        || (n >= 4 && parts[n - 4] == "node_modules" && parts[n - 3].starts_with('@'))
}

/// Reads a file a detector asked for. An `Err` is the reason it could not be read, for the
/// warning; `Ok(None)` means it held nothing of interest.
pub fn parse(interest: Interest, path: &str, bytes: &[u8]) -> Result<Option<Found>, String> {
    let text = || std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"));
    let packages = |p: Vec<Package>| Ok((!p.is_empty()).then_some(Found::Packages(p)));
    match interest {
        Interest::OsRelease => Ok(os::parse(text()?).map(Found::Os)),
        Interest::DpkgStatus => packages(osdb::parse_dpkg(text()?, path, true)?),
        Interest::DpkgStatusD => packages(osdb::parse_dpkg(text()?, path, false)?),
        Interest::ApkInstalled => packages(osdb::parse_apk(text()?, path)?),
        Interest::RpmSqlite => packages(rpm::parse_sqlite(bytes, path)?),
        Interest::RpmLegacy => Err(
            "Berkeley DB and NDB rpm databases are not read; only rpmdb.sqlite (RHEL 9 and later)"
                .to_string(),
        ),
        Interest::PythonMetadata => {
            packages(lang::parse_python(&String::from_utf8_lossy(bytes), path)?)
        }
        Interest::NpmPackage => packages(lang::parse_npm_package(bytes, path)?),
        Interest::NpmLock => packages(lang::parse_npm_lock(bytes, path)?),
        Interest::CargoLock => packages(lang::parse_cargo_lock(text()?, path)?),
        Interest::JavaArchive => packages(java::parse_archive(bytes, path)?),
        Interest::Executable => {
            let mut scan = BinaryScan::new(path);
            scan.feed(bytes);
            scan.finish_with_sections(bytes)
                .map(|p| (!p.is_empty()).then_some(Found::Packages(p)))
        }
    }
}

/// PEP 503 normalisation: lower case, runs of `-`, `_` and `.` become one `-`.
pub fn normalize_python_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_paths() {
        assert_eq!(classify("etc/os-release", false), Some(Interest::OsRelease));
        assert_eq!(
            classify("var/lib/dpkg/status.d/libc6", false),
            Some(Interest::DpkgStatusD)
        );
        assert_eq!(classify("var/lib/dpkg/status.d/libc6.md5sums", false), None);
        assert_eq!(
            classify(
                "usr/lib/python3/dist-packages/urllib3-1.26.4.dist-info/METADATA",
                false
            ),
            Some(Interest::PythonMetadata)
        );
        assert_eq!(
            classify("app/node_modules/@babel/core/package.json", false),
            Some(Interest::NpmPackage)
        );
        assert_eq!(
            classify("app/node_modules/lodash/package.json", false),
            Some(Interest::NpmPackage)
        );
        assert_eq!(
            classify("app/node_modules/lodash/test/package.json", false),
            None
        );
        assert_eq!(classify("app/package.json", false), None);
        assert_eq!(classify("usr/bin/app", true), Some(Interest::Executable));
        assert_eq!(classify("usr/share/doc/README", false), None);
    }

    #[test]
    fn python_names() {
        assert_eq!(
            normalize_python_name("Django_REST.framework"),
            "django-rest-framework"
        );
        assert_eq!(normalize_python_name("urllib3"), "urllib3");
        assert_eq!(normalize_python_name("zope..interface"), "zope-interface");
    }
}
