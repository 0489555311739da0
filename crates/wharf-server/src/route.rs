//! Parses a `/v2/` path once into a typed endpoint. Repository names may have any number of
//! segments, so the endpoint is read from the right-hand end of the path.

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    Tags { name: String },
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    Uploads { name: String },
    Upload { name: String, id: String },
    Referrers { name: String, digest: String },
}

/// `path` is the full request path, starting with `/v2`.
pub fn parse(path: &str) -> Option<Endpoint> {
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    let rest = decoded.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Endpoint::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Endpoint::Catalog);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let n = parts.len();
    let name = |upto: usize| parts[..upto].join("/");
    if n >= 3 && parts[n - 2] == "tags" && parts[n - 1] == "list" {
        return Some(Endpoint::Tags { name: name(n - 2) });
    }
    if n >= 4 && parts[n - 3] == "blobs" && parts[n - 2] == "uploads" {
        let name = name(n - 3);
        let id = parts[n - 1];
        return Some(if id.is_empty() {
            Endpoint::Uploads { name }
        } else {
            Endpoint::Upload {
                name,
                id: id.to_string(),
            }
        });
    }
    if n >= 3 && parts[n - 2] == "blobs" && parts[n - 1] == "uploads" {
        return Some(Endpoint::Uploads { name: name(n - 2) });
    }
    if n >= 3 {
        let last = parts[n - 1].to_string();
        match parts[n - 2] {
            "manifests" => {
                return Some(Endpoint::Manifest {
                    name: name(n - 2),
                    reference: last,
                })
            }
            "blobs" => {
                return Some(Endpoint::Blob {
                    name: name(n - 2),
                    digest: last,
                })
            }
            "referrers" => {
                return Some(Endpoint::Referrers {
                    name: name(n - 2),
                    digest: last,
                })
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(parse("/v2/"), Some(Endpoint::Base));
        assert_eq!(parse("/v2"), Some(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog"), Some(Endpoint::Catalog));
        assert_eq!(
            parse("/v2/a/b/tags/list"),
            Some(Endpoint::Tags { name: s("a/b") })
        );
        assert_eq!(
            parse("/v2/a/manifests/latest"),
            Some(Endpoint::Manifest {
                name: s("a"),
                reference: s("latest")
            })
        );
        assert_eq!(
            parse("/v2/x/manifests/y/manifests/sha256%3Aab"),
            Some(Endpoint::Manifest {
                name: s("x/manifests/y"),
                reference: s("sha256:ab")
            })
        );
        assert_eq!(
            parse("/v2/a/b/c/blobs/sha256:00"),
            Some(Endpoint::Blob {
                name: s("a/b/c"),
                digest: s("sha256:00")
            })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/"),
            Some(Endpoint::Uploads { name: s("a") })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads"),
            Some(Endpoint::Uploads { name: s("a") })
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/123-abc"),
            Some(Endpoint::Upload {
                name: s("a"),
                id: s("123-abc")
            })
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads/blobs/sha256:00"),
            Some(Endpoint::Blob {
                name: s("x/blobs/uploads"),
                digest: s("sha256:00")
            })
        );
        assert_eq!(
            parse("/v2/a/referrers/sha256:00"),
            Some(Endpoint::Referrers {
                name: s("a"),
                digest: s("sha256:00")
            })
        );
        assert_eq!(parse("/v2/a"), None);
        assert_eq!(parse("/v2/manifests/latest"), None);
        assert_eq!(parse("/v3/a/tags/list"), None);
    }
}
