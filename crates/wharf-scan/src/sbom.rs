//! Software bills of materials of a package inventory: SPDX 2.3 JSON and CycloneDX 1.5 JSON,
//! each package named by its package URL (purl). Made from the stored inventory, so an export
//! reads no layer.

use std::fmt;
use std::str::FromStr;

use packageurl::PackageUrl;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::inventory::{Inventory, Kind, Os, Package};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Spdx,
    CycloneDx,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Spdx, Format::CycloneDx];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Spdx => "spdx",
            Format::CycloneDx => "cyclonedx",
        }
    }

    /// The document's media type, also the `artifactType` of an SBOM attached to its image.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Spdx => "application/spdx+json",
            Format::CycloneDx => "application/vnd.cyclonedx+json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown SBOM format {s:?}; use spdx or cyclonedx"))
    }
}

/// The image an SBOM describes, and how the document names itself.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// Where the image is, `host/repository`, e.g. `registry.example.com/team/app`.
    pub location: &'a str,
    /// The image's manifest digest.
    pub digest: &'a str,
    /// When the inventory was taken, RFC 3339 in whole seconds (`2026-11-29T10:00:00Z`).
    pub created: &'a str,
    /// The version of the tool writing the document.
    pub tool_version: &'a str,
}

impl Subject<'_> {
    fn name(&self) -> &str {
        self.location.rsplit('/').next().unwrap_or(self.location)
    }

    /// `pkg:oci/name@sha256:...?repository_url=host%2Frepository`.
    fn purl(&self) -> String {
        let mut p = match PackageUrl::new("oci", self.name()) {
            Ok(p) => p,
            Err(_) => return String::new(),
        };
        if p.with_version(self.digest).is_err()
            || p.add_qualifier("repository_url", self.location).is_err()
        {
            return String::new();
        }
        p.to_string()
    }
}

/// Installed by the OS's package manager (a distribution package), not a language's.
fn is_os_package(kind: Kind) -> bool {
    matches!(kind, Kind::Dpkg | Kind::Apk | Kind::Rpm)
}

/// The package URL of an installed package; `None` where the package kind has no purl type.
pub fn purl(pkg: &Package, os: Option<&Os>) -> Option<String> {
    let distro = os.map(|o| match &o.version_id {
        Some(v) => format!("{}-{v}", o.id),
        None => o.id.clone(),
    });
    let (ty, namespace, name) = match pkg.kind {
        Kind::Dpkg => ("deb", os.map(|o| o.id.clone()), pkg.name.clone()),
        Kind::Apk => ("apk", os.map(|o| o.id.clone()), pkg.name.clone()),
        Kind::Rpm => ("rpm", os.map(|o| o.id.clone()), pkg.name.clone()),
        // PyPI names are compared lowercased with '-' for '_' (the purl spec says so).
        Kind::Python => (
            "pypi",
            None,
            pkg.name.to_ascii_lowercase().replace('_', "-"),
        ),
        Kind::Npm => match pkg.name.split_once('/') {
            Some((scope, name)) if scope.starts_with('@') => {
                ("npm", Some(scope.to_string()), name.to_string())
            }
            _ => ("npm", None, pkg.name.clone()),
        },
        Kind::Go => match pkg.name.rsplit_once('/') {
            Some((ns, name)) => ("golang", Some(ns.to_string()), name.to_string()),
            None => ("golang", None, pkg.name.clone()),
        },
        Kind::Cargo => ("cargo", None, pkg.name.clone()),
        Kind::Maven => match pkg.name.split_once(':') {
            Some((group, artifact)) => ("maven", Some(group.to_string()), artifact.to_string()),
            None => ("maven", None, pkg.name.clone()),
        },
    };
    let mut p = PackageUrl::new(ty, name).ok()?;
    if let Some(ns) = namespace {
        p.with_namespace(ns).ok()?;
    }
    p.with_version(pkg.version.clone()).ok()?;
    if is_os_package(pkg.kind) {
        if let Some(d) = distro {
            p.add_qualifier("distro", d).ok()?;
        }
        if let Some(src) = &pkg.source {
            let upstream = match &pkg.source_version {
                Some(v) => format!("{src}@{v}"),
                None => src.clone(),
            };
            p.add_qualifier("upstream", upstream).ok()?;
        }
    }
    Some(p.to_string())
}

/// The packages in a stable order, each once (a package found twice at one path is one).
fn packages(inv: &Inventory) -> Vec<&Package> {
    let mut list: Vec<&Package> = inv.packages.iter().collect();
    list.sort();
    list.dedup();
    list
}

fn os_name(os: &Os) -> String {
    os.pretty_name.clone().unwrap_or_else(|| os.id.clone())
}

/// A UUID made from the image and the format, so that the same SBOM has the same bytes (and
/// digest) every time it is made.
fn stable_uuid(subject: &Subject, format: Format) -> String {
    let h = sha2::Sha256::digest(format!("{}\n{}", subject.digest, format.as_str()).as_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

/// The SPDX 2.3 JSON document of an image's inventory.
pub fn spdx(inv: &Inventory, subject: &Subject) -> Value {
    let image_id = "SPDXRef-Image";
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": subject.location,
        "versionInfo": subject.digest,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": subject.purl(),
        }],
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    if let Some(os) = &inv.os {
        packages.push(json!({
            "SPDXID": "SPDXRef-OperatingSystem",
            "name": os.id,
            "versionInfo": os.version_id.clone().unwrap_or_default(),
            "description": os_name(os),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "OPERATING_SYSTEM",
        }));
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": "SPDXRef-OperatingSystem",
        }));
    }
    for (i, pkg) in packages_of(inv) {
        let id = format!("SPDXRef-Package-{}-{i}", pkg.kind.as_str());
        let mut p = json!({
            "SPDXID": id,
            "name": pkg.name,
            "versionInfo": pkg.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": if is_os_package(pkg.kind) { "INSTALL" } else { "LIBRARY" },
            "sourceInfo": format!("{} package read from {}", pkg.kind.as_str(), pkg.path),
        });
        if let Some(purl) = purl(pkg, inv.os.as_ref()) {
            p["externalRefs"] = json!([{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }]);
        }
        packages.push(p);
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}@{}", subject.location, subject.digest),
        "documentNamespace": format!(
            "https://wharf.dev/spdx/{}/{}",
            subject.location,
            stable_uuid(subject, Format::Spdx)
        ),
        "creationInfo": {
            "created": subject.created,
            "creators": [format!("Tool: wharf-{}", subject.tool_version)],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

/// The packages numbered from 1, in a stable order.
fn packages_of(inv: &Inventory) -> impl Iterator<Item = (usize, &Package)> {
    packages(inv)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i + 1, p))
}

/// The CycloneDX 1.5 JSON document of an image's inventory.
pub fn cyclonedx(inv: &Inventory, subject: &Subject) -> Value {
    let mut components = Vec::new();
    let mut refs = Vec::new();
    if let Some(os) = &inv.os {
        components.push(json!({
            "type": "operating-system",
            "bom-ref": "os",
            "name": os.id,
            "version": os.version_id.clone().unwrap_or_default(),
            "description": os_name(os),
        }));
        refs.push("os".to_string());
    }
    for (i, pkg) in packages_of(inv) {
        let bom_ref = format!("pkg-{}-{i}", pkg.kind.as_str());
        let mut properties = vec![
            json!({"name": "wharf:package:kind", "value": pkg.kind.as_str()}),
            json!({"name": "wharf:package:path", "value": pkg.path}),
        ];
        if let Some(src) = &pkg.source {
            properties.push(json!({"name": "wharf:package:source", "value": src}));
        }
        let mut c = json!({
            "type": "library",
            "bom-ref": bom_ref,
            "name": pkg.name,
            "version": pkg.version,
            "properties": properties,
        });
        if let Some(purl) = purl(pkg, inv.os.as_ref()) {
            c["purl"] = json!(purl);
        }
        components.push(c);
        refs.push(bom_ref);
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{}", stable_uuid(subject, Format::CycloneDx)),
        "version": 1,
        "metadata": {
            "timestamp": subject.created,
            "tools": {"components": [{
                "type": "application",
                "name": "wharf",
                "version": subject.tool_version,
            }]},
            "component": {
                "type": "container",
                "bom-ref": "image",
                "name": subject.location,
                "version": subject.digest,
                "purl": subject.purl(),
            },
        },
        "components": components,
        "dependencies": [{"ref": "image", "dependsOn": refs}],
    })
}

/// The document of `inv` in `format`.
pub fn document(format: Format, inv: &Inventory, subject: &Subject) -> Value {
    match format {
        Format::Spdx => spdx(inv, subject),
        Format::CycloneDx => cyclonedx(inv, subject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(kind: Kind, name: &str, version: &str) -> Package {
        Package {
            kind,
            name: name.into(),
            version: version.into(),
            source: None,
            source_version: None,
            path: "var/lib/dpkg/status".into(),
        }
    }

    fn debian() -> Os {
        Os {
            id: "debian".into(),
            version_id: Some("12".into()),
            pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            id_like: vec![],
        }
    }

    #[test]
    fn package_urls_follow_the_purl_types() {
        let os = debian();
        let mut libssl = pkg(Kind::Dpkg, "libssl3", "3.0.15-1~deb12u1");
        libssl.source = Some("openssl".into());
        assert_eq!(
            purl(&libssl, Some(&os)).as_deref(),
            Some("pkg:deb/debian/libssl3@3.0.15-1~deb12u1?distro=debian-12&upstream=openssl")
        );
        assert_eq!(
            purl(&pkg(Kind::Python, "Foo_Bar", "1.0"), None).as_deref(),
            Some("pkg:pypi/foo-bar@1.0")
        );
        assert_eq!(
            purl(&pkg(Kind::Npm, "@babel/core", "7.0.0"), None).as_deref(),
            Some("pkg:npm/%40babel/core@7.0.0")
        );
        assert_eq!(
            purl(&pkg(Kind::Go, "github.com/x/y", "v1.2.3"), None).as_deref(),
            Some("pkg:golang/github.com/x/y@v1.2.3")
        );
        assert_eq!(
            purl(
                &pkg(Kind::Maven, "org.apache.logging.log4j:log4j-core", "2.14.1"),
                None
            )
            .as_deref(),
            Some("pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1")
        );
    }

    #[test]
    fn documents_list_every_package_once_and_are_stable() {
        let inv = Inventory {
            detector_version: 1,
            image: "sha256:ab".into(),
            os: Some(debian()),
            packages: vec![
                pkg(Kind::Dpkg, "zlib1g", "1.2"),
                pkg(Kind::Dpkg, "bash", "5.2"),
                pkg(Kind::Dpkg, "bash", "5.2"),
            ],
            warnings: vec![],
            partial: false,
        };
        let subject = Subject {
            location: "registry.test/team/app",
            digest: "sha256:ab",
            created: "2026-11-29T00:00:00Z",
            tool_version: "0.1.0",
        };
        let s = spdx(&inv, &subject);
        let names: Vec<&str> = s["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["registry.test/team/app", "debian", "bash", "zlib1g"]
        );
        assert_eq!(s, spdx(&inv, &subject), "same inventory, same document");
        let c = cyclonedx(&inv, &subject);
        assert_eq!(c["components"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            c["metadata"]["component"]["purl"],
            "pkg:oci/app@sha256:ab?repository_url=registry.test%2Fteam%2Fapp"
        );
    }
}
