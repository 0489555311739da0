//! wharf's offline vulnerability scanner, with no dependency on the server: image layers are
//! walked as streams (whiteouts honoured), the OS and installed packages are detected, and the
//! packages are matched against advisories imported from OSV files, Alpine's secdb and CVSS
//! tables, each ecosystem with its own version ordering.

pub mod advisory;
pub mod cvss;
pub mod detect;
pub mod digest;
pub mod image;
pub mod inventory;
pub mod matcher;
pub mod sbom;
pub mod version;
pub mod walk;
