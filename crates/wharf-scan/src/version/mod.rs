//! Version orderings, one per ecosystem. Every advisory range is evaluated with the ordering of
//! the ecosystem it was written for: comparing a dpkg version with semver rules (or the other
//! way round) silently gives wrong answers, which is the worst failure a scanner can have.

mod apk;
mod dpkg;
mod go;
mod maven;
mod pep440;
mod rpm;
mod semver_like;

use std::cmp::Ordering;

pub use apk::{compare as apk, is_valid as apk_is_valid};
pub use dpkg::compare as dpkg;
pub use go::{compare as go, toolchain_version as go_toolchain_version};
pub use maven::compare as maven;
pub use pep440::compare as pep440;
pub use rpm::{compare as rpm, compare_evr as rpm_evr};
pub use semver_like::compare as semver;

/// The version scheme an ecosystem orders its versions by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Dpkg,
    Apk,
    Rpm,
    Semver,
    Pep440,
    Go,
    Maven,
}

impl Scheme {
    /// Compares two versions. `None` when either cannot be read in this scheme: a range is then
    /// not evaluated rather than guessed.
    pub fn compare(self, a: &str, b: &str) -> Option<Ordering> {
        match self {
            Scheme::Dpkg => dpkg(a, b),
            Scheme::Apk => apk(a, b),
            Scheme::Rpm => Some(rpm_evr(a, b)),
            Scheme::Semver => semver(a, b),
            Scheme::Pep440 => pep440(a, b),
            Scheme::Go => go(a, b),
            Scheme::Maven => Some(maven(a, b)),
        }
    }
}
