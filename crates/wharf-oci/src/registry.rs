//! Registry (tenant) names, which are also the first label of the registry's host name, and
//! the names of tokens, which follow the same rules.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryNameError {
    #[error("name must be at least 3 characters long (got {0})")]
    TooShort(usize),
    #[error("name must be at most 63 characters long (got {0})")]
    TooLong(usize),
    #[error("name may contain only lowercase letters a-z, digits 0-9 and '-' (found {0:?})")]
    InvalidCharacter(char),
    #[error("name must start with a lowercase letter")]
    BadStart,
    #[error("name must end with a lowercase letter or a digit")]
    BadEnd,
}

/// A registry or token name: 3–63 characters of `a-z`, `0-9` and `-`, starting with a letter
/// and ending with a letter or digit, so that it is a valid DNS label.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RegistryName(String);

impl RegistryName {
    pub fn parse(s: &str) -> Result<Self, RegistryNameError> {
        let len = s.chars().count();
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(RegistryNameError::InvalidCharacter(c));
        }
        if len < 3 {
            return Err(RegistryNameError::TooShort(len));
        }
        if len > 63 {
            return Err(RegistryNameError::TooLong(len));
        }
        let bytes = s.as_bytes();
        if !bytes[0].is_ascii_lowercase() {
            return Err(RegistryNameError::BadStart);
        }
        if bytes[bytes.len() - 1] == b'-' {
            return Err(RegistryNameError::BadEnd);
        }
        Ok(RegistryName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegistryNameError::*;

    #[test]
    fn each_rule_has_its_own_error() {
        assert!(RegistryName::parse("abc").is_ok());
        assert!(RegistryName::parse("team-a-42").is_ok());
        assert!(RegistryName::parse(&format!("a{}", "b".repeat(62))).is_ok());
        assert_eq!(RegistryName::parse("ab"), Err(TooShort(2)));
        assert_eq!(RegistryName::parse(""), Err(TooShort(0)));
        assert_eq!(RegistryName::parse(&"a".repeat(64)), Err(TooLong(64)));
        assert_eq!(RegistryName::parse("Team"), Err(InvalidCharacter('T')));
        assert_eq!(RegistryName::parse("te_am"), Err(InvalidCharacter('_')));
        assert_eq!(RegistryName::parse("tëam"), Err(InvalidCharacter('ë')));
        assert_eq!(RegistryName::parse("1team"), Err(BadStart));
        assert_eq!(RegistryName::parse("-team"), Err(BadStart));
        assert_eq!(RegistryName::parse("team-"), Err(BadEnd));
    }
}
