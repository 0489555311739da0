//! Token scopes and the rights they add up to.

use std::fmt;

use wharf_oci::RepositoryName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("scope type must be \"registry\" or \"repository\" (got {0:?})")]
    Kind(String),
    #[error("a repository scope needs a path: a repository name or a pattern with '*'")]
    MissingPath,
    #[error("path {path:?} is not a repository name or pattern: {reason}")]
    Path { path: String, reason: String },
    #[error("unknown action {0:?}; use pull, push or delete")]
    Action(String),
    #[error("a repository scope needs at least one action")]
    NoActions,
    #[error("push requires pull: add pull to the actions")]
    PushWithoutPull,
    #[error("a registry scope takes no path or actions; it allows listing the catalog")]
    RegistryExtra,
}

/// One scope of a token: the catalog, or actions on repositories matching a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Registry,
    Repository {
        pattern: Pattern,
        actions: Vec<Action>,
    },
}

impl Scope {
    /// Builds a scope from its parts as the API receives them.
    pub fn new(kind: &str, path: Option<&str>, actions: &[String]) -> Result<Scope, ScopeError> {
        match kind {
            "registry" => {
                if path.is_some_and(|p| !p.is_empty()) || !actions.is_empty() {
                    return Err(ScopeError::RegistryExtra);
                }
                Ok(Scope::Registry)
            }
            "repository" => {
                let path = path
                    .filter(|p| !p.is_empty())
                    .ok_or(ScopeError::MissingPath)?;
                let pattern = Pattern::parse(path)?;
                let mut acts = Vec::new();
                for a in actions {
                    let action = Action::parse(a).ok_or_else(|| ScopeError::Action(a.clone()))?;
                    if !acts.contains(&action) {
                        acts.push(action);
                    }
                }
                if acts.is_empty() {
                    return Err(ScopeError::NoActions);
                }
                if acts.contains(&Action::Push) && !acts.contains(&Action::Pull) {
                    return Err(ScopeError::PushWithoutPull);
                }
                acts.sort();
                Ok(Scope::Repository {
                    pattern,
                    actions: acts,
                })
            }
            other => Err(ScopeError::Kind(other.to_string())),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Registry => "registry",
            Scope::Repository { .. } => "repository",
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Scope::Registry => "",
            Scope::Repository { pattern, .. } => pattern.as_str(),
        }
    }

    pub fn actions(&self) -> &[Action] {
        match self {
            Scope::Registry => &[],
            Scope::Repository { actions, .. } => actions,
        }
    }
}

/// A repository name, or a pattern where `*` matches any characters (`*` alone: everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, ScopeError> {
        if s == "*" {
            return Ok(Pattern(s.to_string()));
        }
        // With each '*' standing for one letter, the pattern must read as a repository name.
        RepositoryName::parse(&s.replace('*', "a")).map_err(|e| ScopeError::Path {
            path: s.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Pattern(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_matches(&self.0, name)
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes())
}

/// `*` matches any run of characters, '/' included; everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What a token may do: the union of its scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    scopes: Vec<Scope>,
}

impl Rights {
    pub fn new(scopes: Vec<Scope>) -> Rights {
        Rights { scopes }
    }

    pub fn can(&self, repository: &str, action: Action) -> bool {
        self.scopes.iter().any(|s| match s {
            Scope::Repository { pattern, actions } => {
                actions.contains(&action) && pattern.matches(repository)
            }
            Scope::Registry => false,
        })
    }

    pub fn can_list_catalog(&self) -> bool {
        self.scopes.contains(&Scope::Registry)
    }

    /// The actions among `wanted` that these rights allow on `repository`.
    pub fn granted(&self, repository: &str, wanted: &[Action]) -> Vec<Action> {
        wanted
            .iter()
            .copied()
            .filter(|a| self.can(repository, *a))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acts(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_rules() {
        assert_eq!(
            Scope::new("repository", Some("app"), &acts(&["push"])),
            Err(ScopeError::PushWithoutPull)
        );
        assert_eq!(
            Scope::new("repository", Some("app"), &[]),
            Err(ScopeError::NoActions)
        );
        assert_eq!(
            Scope::new("repository", None, &acts(&["pull"])),
            Err(ScopeError::MissingPath)
        );
        assert!(matches!(
            Scope::new("repository", Some("App"), &acts(&["pull"])),
            Err(ScopeError::Path { .. })
        ));
        assert_eq!(
            Scope::new("repository", Some("app"), &acts(&["admin"])),
            Err(ScopeError::Action("admin".into()))
        );
        assert_eq!(
            Scope::new("org", None, &[]),
            Err(ScopeError::Kind("org".into()))
        );
        assert_eq!(
            Scope::new("registry", Some("x"), &[]),
            Err(ScopeError::RegistryExtra)
        );
        assert_eq!(Scope::new("registry", None, &[]), Ok(Scope::Registry));
        let s = Scope::new(
            "repository",
            Some("team/*"),
            &acts(&["push", "pull", "pull"]),
        )
        .unwrap();
        assert_eq!(s.actions(), &[Action::Pull, Action::Push]);
    }

    #[test]
    fn patterns() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(p("*").matches("a/b/c"));
        assert!(p("team/*").matches("team/app"));
        assert!(p("team/*").matches("team/a/b"));
        assert!(!p("team/*").matches("team"));
        assert!(!p("team/*").matches("teams/app"));
        assert!(p("*-prod").matches("api-prod"));
        assert!(!p("*-prod").matches("api-prod2"));
        assert!(p("app").matches("app"));
        assert!(!p("app").matches("app2"));
        assert!(p("a*b*c").matches("axxbyyc"));
        assert!(!p("a*b*c").matches("axxbyy"));
    }

    #[test]
    fn rights_are_the_union_of_scopes() {
        let r = Rights::new(vec![
            Scope::new("repository", Some("team/*"), &acts(&["pull"])).unwrap(),
            Scope::new(
                "repository",
                Some("team/app"),
                &acts(&["pull", "push", "delete"]),
            )
            .unwrap(),
        ]);
        assert!(r.can("team/x", Action::Pull));
        assert!(!r.can("team/x", Action::Push));
        assert!(r.can("team/app", Action::Delete));
        assert!(!r.can("other", Action::Pull));
        assert!(!r.can_list_catalog());
        assert_eq!(
            r.granted("team/x", &[Action::Pull, Action::Push]),
            vec![Action::Pull]
        );
    }
}
