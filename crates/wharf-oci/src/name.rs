use std::fmt;

use crate::digest::{Digest, DigestError};

/// Longest repository name wharf stores. The OCI grammar sets no bound; names longer than 255
/// characters are kept (clients may refuse them) but a bound protects the database indexes.
pub const MAX_REPOSITORY_NAME: usize = 2048;
pub const MAX_TAG: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is empty")]
    EmptyRepository,
    #[error("repository name is {0} characters long; the limit is {MAX_REPOSITORY_NAME}")]
    RepositoryTooLong(usize),
    #[error("repository name {name:?} is invalid: {reason}")]
    Repository { name: String, reason: &'static str },
    #[error("tag {tag:?} is invalid: {reason}")]
    Tag { tag: String, reason: &'static str },
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A repository name by the OCI grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::EmptyRepository);
        }
        if s.len() > MAX_REPOSITORY_NAME {
            return Err(NameError::RepositoryTooLong(s.len()));
        }
        let invalid = |reason| NameError::Repository {
            name: s.to_string(),
            reason,
        };
        for component in s.split('/') {
            check_path_component(component).map_err(invalid)?;
        }
        Ok(RepositoryName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks one path component: alphanumeric runs joined by `.`, `_`, `__` or one or more `-`.
pub fn check_path_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("it has an empty path component (leading, trailing or double '/')");
    }
    let bytes = c.as_bytes();
    if !is_lower_alnum(bytes[0]) || !is_lower_alnum(bytes[bytes.len() - 1]) {
        return Err("each path component must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_lower_alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or '-+'.
        let start = i;
        while i < bytes.len() && !is_lower_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-');
        if !ok {
            return Err(
                "only lowercase letters, digits and the separators '.', '_', '__' and '-' are allowed",
            );
        }
    }
    Ok(())
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepositoryName({})", self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let invalid = |reason| NameError::Tag {
            tag: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("it is empty"));
        }
        if s.len() > MAX_TAG {
            return Err(invalid("it is longer than 128 characters"));
        }
        let first = s.as_bytes()[0];
        if !(first.is_ascii_alphanumeric() || first == b'_') {
            return Err(invalid("it must start with a letter, digit or '_'"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(invalid(
                "only letters, digits, '_', '.' and '-' are allowed",
            ));
        }
        Ok(Tag(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference holding ':' is a digest (tags cannot contain one); anything else is a tag.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_grammar() {
        for good in [
            "a",
            "library/ubuntu",
            "a/b/c/d/e/f/g/h",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "0",
            "x/manifests/y",
        ] {
            assert!(
                RepositoryName::parse(good).is_ok(),
                "{good} should be valid"
            );
        }
        for bad in [
            "",
            "A",
            "Library/ubuntu",
            "-a",
            "a-",
            "a/",
            "/a",
            "a//b",
            "a___b",
            "a_.b",
            "a..b",
            "a b",
            "a:b",
            "ä",
        ] {
            assert!(
                RepositoryName::parse(bad).is_err(),
                "{bad:?} should be invalid"
            );
        }
        let long = "a".repeat(MAX_REPOSITORY_NAME + 1);
        assert_eq!(
            RepositoryName::parse(&long),
            Err(NameError::RepositoryTooLong(MAX_REPOSITORY_NAME + 1))
        );
        // Longer than the 255 characters clients accept, still stored.
        assert!(RepositoryName::parse(&"a".repeat(300)).is_ok());
    }

    #[test]
    fn tags_follow_the_grammar() {
        for good in ["latest", "v1.0.0", "_x", "A-b_c.D", &"a".repeat(128)] {
            assert!(Tag::parse(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a+b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        let d = Digest::sha256_of(b"x");
        assert_eq!(Reference::parse(d.as_str()), Ok(Reference::Digest(d)));
        assert!(matches!(
            Reference::parse("sha256:totallywrong"),
            Err(NameError::Digest(_))
        ));
    }
}
