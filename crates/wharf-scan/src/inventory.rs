//! What a scan finds in an image before any advisory is looked at: the OS and the installed
//! packages, with the warnings met on the way. It is stored as it is, so that a later match
//! against a newer database reads no layer again.

use serde::{Deserialize, Serialize};

/// Bumped whenever a detector changes what it finds, so stored inventories are redone.
pub const DETECTOR_VERSION: u32 = 2;

/// Where a package came from: the package manager or language ecosystem that installed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dpkg,
    Apk,
    Rpm,
    Python,
    Npm,
    Go,
    Cargo,
    /// Java archives' `pom.properties`: the name is `groupId:artifactId`.
    Maven,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dpkg => "dpkg",
            Kind::Apk => "apk",
            Kind::Rpm => "rpm",
            Kind::Python => "python",
            Kind::Npm => "npm",
            Kind::Go => "go",
            Kind::Cargo => "cargo",
            Kind::Maven => "maven",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// The source package (dpkg `Source:`, apk origin, the source RPM's name), when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The source version, when it differs from the binary's (a binNMU `+bN`, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// The file the package was read from.
    pub path: String,
}

/// What `/etc/os-release` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// `ID`, lower case: debian, ubuntu, alpine, rhel, centos, rocky, almalinux, fedora, ...
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub id_like: Vec<String>,
}

impl Os {
    /// Distroless images say `PRETTY_NAME="Distroless"` over a Debian base.
    pub fn is_distroless(&self) -> bool {
        self.pretty_name
            .as_deref()
            .is_some_and(|p| p.to_ascii_lowercase().contains("distroless"))
    }

    pub fn family(&self) -> &str {
        match self.id.as_str() {
            "debian" | "ubuntu" | "alpine" => &self.id,
            "rhel" | "centos" | "rocky" | "almalinux" | "fedora" | "ol" | "amzn" => "rhel",
            _ if self.id_like.iter().any(|l| l == "debian") => "debian",
            _ if self.id_like.iter().any(|l| l == "rhel" || l == "fedora") => "rhel",
            other => other,
        }
    }
}

/// Something that could not be read; the scan went on without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// The layer digest, and the file in it when the problem is one file.
    pub location: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub detector_version: u32,
    /// The image's identity: its manifest digest, or its config digest for a `docker save` file.
    pub image: String,
    pub os: Option<Os>,
    pub packages: Vec<Package>,
    pub warnings: Vec<Warning>,
    /// Set when a layer or file could not be read: the package list may be incomplete.
    pub partial: bool,
}

impl Inventory {
    /// Why nothing can be said about this image, when that is so.
    pub fn unknown_reason(&self) -> Option<String> {
        if self.os.is_none() && self.packages.is_empty() {
            return Some(
                "no /etc/os-release and no package database or language package was found"
                    .to_string(),
            );
        }
        None
    }
}
