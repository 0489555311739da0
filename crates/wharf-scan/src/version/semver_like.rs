//! Semantic versions (crates.io, npm, and Go after its prefix is dropped). Installed versions in
//! the wild are not always strict semver (`v1.2`, `1.2.3.4` is rarer), so a missing minor or
//! patch is read as zero; anything else that is not semver is not compared.

use std::cmp::Ordering;

pub(crate) fn parse(v: &str) -> Option<semver::Version> {
    let v = v.trim().trim_start_matches(['v', '=']);
    if let Ok(parsed) = semver::Version::parse(v) {
        return Some(parsed);
    }
    // `1.2` or `1` (optionally with a pre-release or build suffix): pad the core to three parts.
    let cut = v.find(['-', '+']).unwrap_or(v.len());
    let (core, rest) = v.split_at(cut);
    let dots = core.matches('.').count();
    if dots >= 2 || core.is_empty() {
        return None;
    }
    let padded = format!("{core}{}{rest}", ".0".repeat(2 - dots));
    semver::Version::parse(&padded).ok()
}

/// Precedence as semver defines it: build metadata does not count.
pub(crate) fn precedence(a: &semver::Version, b: &semver::Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| a.pre.cmp(&b.pre))
}

pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(precedence(&parse(a)?, &parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn precedence_rules() {
        for (a, b, want) in [
            ("1.6.0", "1.6.1", Less),
            ("0.0.0-0", "0.1.0", Less),
            ("1.0.0-alpha", "1.0.0", Less),
            ("1.0.0-alpha.1", "1.0.0-alpha.beta", Less),
            ("1.0.0-rc.1", "1.0.0-beta.11", Greater),
            ("1.0.0+build.1", "1.0.0+build.2", Equal),
            ("1.2", "1.2.0", Equal),
            ("v2", "2.0.0", Equal),
            ("1.10.0", "1.9.9", Greater),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
        }
        assert_eq!(compare("1.2.3.4", "1.0.0"), None);
        assert_eq!(compare("latest", "1.0.0"), None);
    }
}
