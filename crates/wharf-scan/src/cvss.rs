//! CVSS base scores from vectors (v3.0, v3.1, v4.0) and the severity bands.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A computed base score, or why the vector could not be read.
pub fn base_score(vector: &str) -> Result<f64, String> {
    if vector.starts_with("CVSS:4.") {
        let v = cvss::v4::Vector::from_str(vector)
            .map_err(|e| format!("invalid CVSS v4 vector {vector:?}: {e}"))?;
        return Ok(v.score().value());
    }
    if vector.starts_with("CVSS:3.") {
        let v = cvss::v3::Base::from_str(vector)
            .map_err(|e| format!("invalid CVSS v3 vector {vector:?}: {e}"))?;
        return Ok(v.score().value());
    }
    Err(format!("unsupported CVSS vector {vector:?}"))
}

/// Severity bands; `Unknown` where no source scores the vulnerability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    None,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn from_score(score: Option<f64>) -> Self {
        match score {
            None => Severity::Unknown,
            Some(s) if s <= 0.0 => Severity::None,
            Some(s) if s < 4.0 => Severity::Low,
            Some(s) if s < 7.0 => Severity::Medium,
            Some(s) if s < 9.0 => Severity::High,
            Some(_) => Severity::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::None => "none",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub const ALL: [Severity; 6] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::None,
        Severity::Unknown,
    ];
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown severity {s:?}: use critical, high, medium, low, none or unknown")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_from_vectors() {
        assert_eq!(
            base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            Ok(9.8)
        );
        assert_eq!(
            base_score("CVSS:3.0/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H"),
            Ok(8.1)
        );
        assert_eq!(
            base_score("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"),
            Ok(9.3)
        );
        assert!(base_score("CVSS:3.1/AV:X").is_err());
        assert!(base_score("AV:N/AC:L/Au:N/C:P/I:P/A:P").is_err());
    }

    #[test]
    fn bands() {
        assert_eq!(Severity::from_score(None), Severity::Unknown);
        assert_eq!(Severity::from_score(Some(0.0)), Severity::None);
        assert_eq!(Severity::from_score(Some(0.1)), Severity::Low);
        assert_eq!(Severity::from_score(Some(3.9)), Severity::Low);
        assert_eq!(Severity::from_score(Some(4.0)), Severity::Medium);
        assert_eq!(Severity::from_score(Some(6.9)), Severity::Medium);
        assert_eq!(Severity::from_score(Some(7.0)), Severity::High);
        assert_eq!(Severity::from_score(Some(8.9)), Severity::High);
        assert_eq!(Severity::from_score(Some(9.0)), Severity::Critical);
        assert_eq!(Severity::from_score(Some(10.0)), Severity::Critical);
        assert_eq!("HIGH".parse::<Severity>(), Ok(Severity::High));
        assert!("severe".parse::<Severity>().is_err());
    }
}
