//! Go module versions: semver with a `v` prefix, where `+incompatible` marks a v2+ module
//! without a go.mod and pseudo-versions (`v0.0.0-20210101000000-abcdef123456`) are pre-releases
//! that order by their timestamp. The Go vulnerability database writes versions without the `v`.

use std::cmp::Ordering;

fn normalize(v: &str) -> &str {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    v.strip_suffix("+incompatible").unwrap_or(v)
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let a = semver::Version::parse(normalize(a)).ok()?;
    let b = semver::Version::parse(normalize(b)).ok()?;
    Some(super::semver_like::precedence(&a, &b))
}

/// The Go toolchain's version (`go1.21.3`, `go1.22rc1`, `go1.19`) in the form the Go database
/// uses for the `stdlib` and `toolchain` packages (`1.21.3`, `1.22.0-rc.1`, `1.19.0`).
pub fn toolchain_version(v: &str) -> Option<String> {
    let v = v.trim().strip_prefix("go")?;
    // Drop any experiment or build suffix (`go1.21.3 X:nocoverageredesign`).
    let v = v.split([' ', '+']).next()?;
    let (core, pre) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&v[..i], Some(&v[i..])),
        None => (v, None),
    };
    let mut parts: Vec<&str> = core.split('.').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    while parts.len() < 3 {
        parts.push("0");
    }
    let mut out = parts.join(".");
    if let Some(pre) = pre {
        let digits = pre.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        let word = &pre[..pre.len() - digits.len()];
        out = format!("{out}-{word}.{digits}");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn module_versions() {
        for (a, b, want) in [
            ("v0.3.6", "0.3.7", Less),
            ("v2.0.0+incompatible", "2.0.1", Less),
            (
                "v0.0.0-20210220033148-5ea612d1eb83",
                "0.0.0-20220101000000-000000000000",
                Less,
            ),
            ("v0.0.0-20210220033148-5ea612d1eb83", "0.1.0", Less),
            ("v1.2.3", "1.2.3", Equal),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
        }
        assert_eq!(compare("(devel)", "1.0.0"), None);
    }

    #[test]
    fn toolchain_versions() {
        assert_eq!(toolchain_version("go1.21.3").as_deref(), Some("1.21.3"));
        assert_eq!(toolchain_version("go1.19").as_deref(), Some("1.19.0"));
        assert_eq!(
            toolchain_version("go1.22rc1").as_deref(),
            Some("1.22.0-rc.1")
        );
        assert_eq!(toolchain_version("devel go1.22-abc").as_deref(), None);
    }
}
