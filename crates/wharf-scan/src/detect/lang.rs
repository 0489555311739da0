//! Language packages: Python metadata, npm package.json and lock files, Cargo.lock.

use crate::inventory::{Kind, Package};
use serde::Deserialize;

fn package(kind: Kind, name: &str, version: &str, path: &str) -> Package {
    Package {
        kind,
        name: name.to_string(),
        version: version.to_string(),
        source: None,
        source_version: None,
        path: path.to_string(),
    }
}

/// `*.dist-info/METADATA` and `*.egg-info/PKG-INFO`: email-style headers, `Name` and `Version`
/// before the first blank line.
pub fn parse_python(text: &str, path: &str) -> Result<Vec<Package>, String> {
    let (mut name, mut version) = (None, None);
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        match line.split_once(':') {
            Some(("Name", v)) => name = Some(v.trim()),
            Some(("Version", v)) => version = Some(v.trim()),
            _ => {}
        }
    }
    match (name, version) {
        (Some(n), Some(v)) if !n.is_empty() && !v.is_empty() => {
            Ok(vec![package(Kind::Python, n, v, path)])
        }
        _ => Err(format!("{path}: Python metadata without Name and Version")),
    }
}

pub fn parse_npm_package(bytes: &[u8], path: &str) -> Result<Vec<Package>, String> {
    #[derive(Deserialize)]
    struct Manifest {
        name: Option<String>,
        version: Option<String>,
    }
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("{path}: invalid package.json: {e}"))?;
    Ok(match (m.name, m.version) {
        (Some(n), Some(v)) if !n.is_empty() && !v.is_empty() => {
            vec![package(Kind::Npm, &n, &v, path)]
        }
        _ => Vec::new(),
    })
}

/// package-lock.json: v2/v3 list `packages` by install path; v1 nests `dependencies`.
pub fn parse_npm_lock(bytes: &[u8], path: &str) -> Result<Vec<Package>, String> {
    #[derive(Deserialize)]
    struct Entry {
        version: Option<String>,
        #[serde(default)]
        link: bool,
        name: Option<String>,
        #[serde(default)]
        dependencies: std::collections::BTreeMap<String, serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Lock {
        #[serde(default)]
        packages: std::collections::BTreeMap<String, Entry>,
        #[serde(default)]
        dependencies: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let lock: Lock =
        serde_json::from_slice(bytes).map_err(|e| format!("{path}: invalid lock file: {e}"))?;
    let mut out = Vec::new();
    if !lock.packages.is_empty() {
        for (key, e) in &lock.packages {
            // "" is the project itself; links point at workspace folders.
            let Some(at) = key.rfind("node_modules/") else {
                continue;
            };
            if e.link {
                continue;
            }
            let name = e
                .name
                .clone()
                .unwrap_or_else(|| key[at + "node_modules/".len()..].to_string());
            if let Some(v) = &e.version {
                out.push(package(Kind::Npm, &name, v, path));
            }
        }
        return Ok(out);
    }
    // v1: walk nested dependencies without recursion limits being a stack risk: iterate.
    let mut stack: Vec<(String, serde_json::Value)> = lock.dependencies.into_iter().collect();
    while let Some((name, value)) = stack.pop() {
        let Ok(e) = serde_json::from_value::<Entry>(value) else {
            continue;
        };
        if let Some(v) = e
            .version
            .filter(|v| !v.starts_with("file:") && !v.contains("://"))
        {
            out.push(package(Kind::Npm, &name, &v, path));
        }
        stack.extend(e.dependencies);
        if out.len() > 1_000_000 {
            return Err(format!(
                "{path}: lock file lists over a million packages; not read"
            ));
        }
    }
    Ok(out)
}

/// Cargo.lock: every `[[package]]` from a registry (workspace crates have no `source`).
pub fn parse_cargo_lock(text: &str, path: &str) -> Result<Vec<Package>, String> {
    #[derive(Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<Pkg>,
    }
    #[derive(Deserialize)]
    struct Pkg {
        name: String,
        version: String,
        source: Option<String>,
    }
    let lock: Lock =
        toml::from_str(text).map_err(|e| format!("{path}: invalid Cargo.lock: {e}"))?;
    Ok(lock
        .package
        .into_iter()
        .filter(|p| {
            p.source
                .as_deref()
                .is_some_and(|s| s.starts_with("registry+"))
        })
        .map(|p| package(Kind::Cargo, &p.name, &p.version, path))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_metadata() {
        let p = parse_python(
            "Metadata-Version: 2.1\nName: urllib3\nVersion: 1.26.4\n\nName: body\n",
            "m",
        )
        .expect("parse");
        assert_eq!(
            (p[0].name.as_str(), p[0].version.as_str()),
            ("urllib3", "1.26.4")
        );
        assert!(parse_python("Metadata-Version: 2.1\n", "m").is_err());
    }

    #[test]
    fn npm_lock_versions() {
        let v3 = br#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/lodash":{"version":"4.17.20"},"node_modules/a/node_modules/minimist":{"version":"1.2.0"},"node_modules/w":{"link":true}}}"#;
        let p = parse_npm_lock(v3, "package-lock.json").expect("parse");
        let names: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(names, [("minimist", "1.2.0"), ("lodash", "4.17.20")]);
        let v1 = br#"{"lockfileVersion":1,"dependencies":{"lodash":{"version":"4.17.20","dependencies":{"x":{"version":"1.0.0"}}}}}"#;
        assert_eq!(parse_npm_lock(v1, "l").expect("parse").len(), 2);
        assert!(parse_npm_lock(b"[1,2", "l").is_err());
    }

    #[test]
    fn cargo_lock_registry_crates_only() {
        let lock = "version = 3\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
        let p = parse_cargo_lock(lock, "Cargo.lock").expect("parse");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "smallvec");
    }
}
