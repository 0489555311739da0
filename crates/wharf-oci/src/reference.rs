//! Image references `[REGISTRY/][NAMESPACE/]REPOSITORY[:TAG][@DIGEST]`, validated part by part
//! so that an error names the part that is wrong.

use std::fmt;

use crate::digest::Digest;
use crate::name::{check_path_component, Tag};

/// Longest registry host name (DNS limit).
pub const MAX_HOST: usize = 253;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("the reference is empty")]
    Empty,
    #[error("invalid registry host {host:?}: {reason}")]
    Registry { host: String, reason: String },
    #[error("invalid namespace {namespace:?}: {reason}")]
    Namespace { namespace: String, reason: String },
    #[error("invalid repository {repository:?}: {reason}")]
    Repository { repository: String, reason: String },
    #[error("invalid tag {tag:?}: {reason}")]
    Tag { tag: String, reason: String },
    #[error("invalid digest {digest:?}: {reason}")]
    Digest { digest: String, reason: String },
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// Host, with its port if one was given; `None` when the reference names no registry.
    pub registry: Option<String>,
    /// Path components before the last one, joined by '/'; may be empty.
    pub namespace: String,
    /// The last path component.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|e| ReferenceError::Digest {
                    digest: d.to_string(),
                    reason: e.to_string(),
                })?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; an earlier one belongs to a host's port.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (p, t) = rest.split_at(last_slash + i);
                (p, Some(&t[1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag {
            Tag::parse(t).map_err(|e| ReferenceError::Tag {
                tag: t.to_string(),
                reason: reason_of(&e.to_string()),
            })?;
        }
        // Like Docker: the first component is a host if it has a '.' or ':' or is localhost.
        let (registry, path) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_host(first)?;
                (Some(first.to_string()), rest)
            }
            _ => (None, path),
        };
        let (namespace, repository) = match path.rsplit_once('/') {
            Some((ns, repo)) => (ns, repo),
            None => ("", path),
        };
        if repository.is_empty() {
            return Err(ReferenceError::Repository {
                repository: repository.to_string(),
                reason: "the repository name is missing".to_string(),
            });
        }
        check_path_component(repository).map_err(|reason| ReferenceError::Repository {
            repository: repository.to_string(),
            reason: reason.to_string(),
        })?;
        if !namespace.is_empty() || path.starts_with('/') {
            for component in namespace.split('/') {
                check_path_component(component).map_err(|reason| ReferenceError::Namespace {
                    namespace: namespace.to_string(),
                    reason: reason.to_string(),
                })?;
            }
        }
        if tag.is_none() && digest.is_none() && s.ends_with(':') {
            return Err(ReferenceError::Tag {
                tag: String::new(),
                reason: "it is empty".to_string(),
            });
        }
        Ok(ImageReference {
            registry,
            namespace: namespace.to_string(),
            repository: repository.to_string(),
            tag: tag.map(String::from),
            digest,
        })
    }

    /// The full repository path (namespace and repository).
    pub fn path(&self) -> String {
        if self.namespace.is_empty() {
            self.repository.clone()
        } else {
            format!("{}/{}", self.namespace, self.repository)
        }
    }
}

fn reason_of(msg: &str) -> String {
    msg.split_once(": ")
        .map(|(_, r)| r)
        .unwrap_or(msg)
        .to_string()
}

fn check_host(host: &str) -> Result<(), ReferenceError> {
    let bad = |reason: &str| {
        Err(ReferenceError::Registry {
            host: host.to_string(),
            reason: reason.to_string(),
        })
    };
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.is_empty()
            || p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u32>().map_or(true, |n| n == 0 || n > 65535)
        {
            return bad("the port must be a number from 1 to 65535");
        }
    }
    if name.is_empty() {
        return bad("the host name is empty");
    }
    if name.len() > MAX_HOST {
        return bad("the host name is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("it has an empty label (two dots in a row, or a leading or trailing dot)");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("labels may contain only letters, digits and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label must not start or end with '-'");
        }
    }
    Ok(())
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.path())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_usual_forms() {
        let d = Digest::sha256_of(b"x");
        let r = ok(&format!("alpha.wharf.test:5000/team/sub/app:v1.2@{d}"));
        assert_eq!(r.registry.as_deref(), Some("alpha.wharf.test:5000"));
        assert_eq!(
            (r.namespace.as_str(), r.repository.as_str()),
            ("team/sub", "app")
        );
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest, Some(d.clone()));
        assert_eq!(
            r.to_string(),
            format!("alpha.wharf.test:5000/team/sub/app:v1.2@{d}")
        );
        let r = ok("ubuntu");
        assert_eq!(
            (
                r.registry,
                r.namespace.as_str(),
                r.repository.as_str(),
                r.tag
            ),
            (None, "", "ubuntu", None)
        );
        assert_eq!(ok("library/ubuntu:22.04").namespace, "library");
        assert_eq!(ok("localhost/app").registry.as_deref(), Some("localhost"));
        assert_eq!(
            ok("localhost:5000/app").registry.as_deref(),
            Some("localhost:5000")
        );
        assert_eq!(ok("my_app__x.y-z").repository, "my_app__x.y-z");
        assert_eq!(ok(&format!("app@{d}")).tag, None);
    }

    #[test]
    fn errors_name_the_wrong_part() {
        let part = |s: &str| match ImageReference::parse(s) {
            Err(ReferenceError::Registry { .. }) => "registry",
            Err(ReferenceError::Namespace { .. }) => "namespace",
            Err(ReferenceError::Repository { .. }) => "repository",
            Err(ReferenceError::Tag { .. }) => "tag",
            Err(ReferenceError::Digest { .. }) => "digest",
            Err(ReferenceError::Empty) => "empty",
            Ok(_) => "ok",
        };
        assert_eq!(part(""), "empty");
        assert_eq!(part("bad_host.example..com/app"), "registry");
        assert_eq!(part("-bad.example.com/app"), "registry");
        assert_eq!(part(&format!("{}.com/app", "a".repeat(64))), "registry");
        assert_eq!(
            part(&format!("{}/app", vec!["a".repeat(60); 5].join("."))),
            "registry"
        );
        assert_eq!(part("host.com:99999/app"), "registry");
        assert_eq!(part("host.com:/app"), "registry");
        assert_eq!(part("Team/app"), "namespace");
        assert_eq!(part("team//app"), "namespace");
        assert_eq!(part("team/App"), "repository");
        assert_eq!(part("team/app-"), "repository");
        assert_eq!(part("team/"), "repository");
        assert_eq!(part("app:-bad"), "tag");
        assert_eq!(part("app:.bad"), "tag");
        assert_eq!(part(&format!("app:{}", "t".repeat(129))), "tag");
        assert_eq!(part("app:"), "tag");
        assert_eq!(part("app@sha256:abc"), "digest");
        assert_eq!(part("app@md5:abc"), "digest");
    }
}
