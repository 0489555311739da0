//! Matching an inventory against advisories: each package is looked up by the ecosystem and
//! name its advisories use, every range is evaluated with that ecosystem's version ordering,
//! advisories naming the same CVE are merged into one finding per package, and the severity is
//! the highest score any source gives.

use crate::advisory::{package_key, Advisory, Affected, Score};
use crate::cvss::{base_score, Severity};
use crate::inventory::{Inventory, Kind, Os, Package, Warning};
use crate::version::Scheme;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// What a package is looked up as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub ecosystem: String,
    pub key: String,
    pub version: String,
    pub scheme: Scheme,
}

/// The advisory ecosystem, name and version a package is matched by; `None` when no advisory
/// source covers it (an OS package of an unidentified OS, say).
pub fn target(pkg: &Package, os: Option<&Os>) -> Option<Target> {
    let (ecosystem, name, version, scheme) = match pkg.kind {
        Kind::Dpkg => {
            let os = os?;
            let major = os.version_id.as_deref()?.split('.').next()?.to_string();
            let eco = match os.id.as_str() {
                "debian" => format!("Debian:{major}"),
                "ubuntu" => format!("Ubuntu:{}", os.version_id.as_deref()?),
                _ => return None,
            };
            // Debian's advisories name source packages and source versions.
            let name = pkg.source.clone().unwrap_or_else(|| pkg.name.clone());
            let version = pkg
                .source_version
                .clone()
                .unwrap_or_else(|| pkg.version.clone());
            (eco, name, version, Scheme::Dpkg)
        }
        Kind::Apk => {
            let os = os.filter(|o| o.id == "alpine")?;
            let v = os.version_id.as_deref()?;
            let eco = if v.contains("_alpha") {
                "Alpine:edge".to_string()
            } else {
                let mut parts = v.split('.');
                format!("Alpine:v{}.{}", parts.next()?, parts.next()?)
            };
            let name = pkg.source.clone().unwrap_or_else(|| pkg.name.clone());
            (eco, name, pkg.version.clone(), Scheme::Apk)
        }
        Kind::Rpm => {
            let os = os?;
            let major = os.version_id.as_deref()?.split('.').next()?.to_string();
            let eco = match os.id.as_str() {
                "rhel" => "Red Hat".to_string(),
                "rocky" => format!("Rocky Linux:{major}"),
                "almalinux" => format!("AlmaLinux:{major}"),
                _ => return None,
            };
            (eco, pkg.name.clone(), pkg.version.clone(), Scheme::Rpm)
        }
        Kind::Python => (
            "PyPI".into(),
            pkg.name.clone(),
            pkg.version.clone(),
            Scheme::Pep440,
        ),
        Kind::Npm => (
            "npm".into(),
            pkg.name.clone(),
            pkg.version.clone(),
            Scheme::Semver,
        ),
        Kind::Go => {
            let v = pkg.version.trim_start_matches('v').to_string();
            ("Go".into(), pkg.name.clone(), v, Scheme::Go)
        }
        Kind::Cargo => (
            "crates.io".into(),
            pkg.name.clone(),
            pkg.version.clone(),
            Scheme::Semver,
        ),
        Kind::Maven => (
            "Maven".into(),
            pkg.name.clone(),
            pkg.version.clone(),
            Scheme::Maven,
        ),
    };
    Some(Target {
        key: package_key(&ecosystem, &name),
        ecosystem,
        version,
        scheme,
    })
}

/// Whether `version` is affected, and the first fixed version above it if there is one.
/// `None` when not affected.
pub fn affected(a: &Affected, version: &str, scheme: Scheme) -> Option<Option<String>> {
    let cmp = |x: &str, y: &str| -> Option<Ordering> {
        // "0" opens every range, whatever the scheme thinks of it as a version.
        match (x, y) {
            ("0", "0") => Some(Ordering::Equal),
            ("0", _) => Some(Ordering::Less),
            (_, "0") => Some(Ordering::Greater),
            _ => scheme.compare(x, y),
        }
    };
    for listed in &a.versions {
        if listed == version || cmp(listed, version) == Some(Ordering::Equal) {
            let fixed = first_fix_above(a, version, &cmp);
            return Some(fixed);
        }
    }
    for range in &a.ranges {
        if range.kind != "ECOSYSTEM" && range.kind != "SEMVER" {
            continue;
        }
        // Walk the events in version order: the last one at or below the installed version
        // decides. Events that cannot be compared are left out rather than guessed.
        let mut events: Vec<(&str, char)> = Vec::new();
        for e in &range.events {
            if let Some(v) = &e.introduced {
                events.push((v, 'i'));
            }
            if let Some(v) = &e.fixed {
                events.push((v, 'f'));
            }
            if let Some(v) = &e.last_affected {
                events.push((v, 'l'));
            }
        }
        // Each event with how it stands against the installed version.
        let mut events: Vec<(&str, char, Ordering)> = events
            .into_iter()
            .filter_map(|(v, kind)| Some((v, kind, cmp(v, version)?)))
            .collect();
        events.sort_by(|x, y| cmp(x.0, y.0).unwrap_or(Ordering::Equal));
        let mut hit = false;
        for &(_, kind, order) in &events {
            match kind {
                'i' if order != Ordering::Greater => hit = true,
                'f' if order != Ordering::Greater => hit = false,
                'l' if order == Ordering::Less => hit = false,
                _ => {}
            }
        }
        if hit {
            return Some(first_fix_above(a, version, &cmp));
        }
    }
    None
}

fn first_fix_above(
    a: &Affected,
    version: &str,
    cmp: &dyn Fn(&str, &str) -> Option<Ordering>,
) -> Option<String> {
    a.ranges
        .iter()
        .flat_map(|r| r.events.iter().filter_map(|e| e.fixed.as_deref()))
        .filter(|f| cmp(f, version) == Some(Ordering::Greater))
        .min_by(|x, y| cmp(x, y).unwrap_or(Ordering::Equal))
        .map(str::to_string)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The CVE when there is one, else the advisory's own ID.
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub package: String,
    pub kind: Kind,
    /// The source package advisories name, when it is not the package itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_package: Option<String>,
    pub installed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    pub fixable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub severity: Severity,
    /// The advisory sources that name it, e.g. `debian12`, `crates.io-rustsec`.
    pub sources: Vec<String>,
    pub ecosystem: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub image: String,
    pub os: Option<Os>,
    pub packages: usize,
    pub findings: Vec<Finding>,
    /// Findings per severity.
    pub summary: BTreeMap<Severity, usize>,
    pub partial: bool,
    pub warnings: Vec<Warning>,
    /// Why nothing could be said about the image, when that is so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// `CVE-YYYY-NNNN...` and nothing else.
fn is_cve(id: &str) -> bool {
    let mut parts = id.split('-');
    parts.next() == Some("CVE")
        && parts
            .next()
            .is_some_and(|y| y.len() == 4 && y.bytes().all(|c| c.is_ascii_digit()))
        && parts
            .next()
            .is_some_and(|n| n.len() >= 4 && n.bytes().all(|c| c.is_ascii_digit()))
        && parts.next().is_none()
}

fn summarize(findings: &[Finding]) -> BTreeMap<Severity, usize> {
    let mut summary = BTreeMap::new();
    for f in findings {
        *summary.entry(f.severity).or_insert(0) += 1;
    }
    summary
}

impl Report {
    /// Keeps only the findings `keep` accepts; the summary follows.
    pub fn retain(&mut self, keep: impl FnMut(&Finding) -> bool) {
        self.findings.retain(keep);
        self.summary = summarize(&self.findings);
    }
}

/// The ID a group of advisories is reported under: a CVE if any names one.
fn canonical_id(a: &Advisory) -> String {
    if is_cve(&a.id) {
        return a.id.clone();
    }
    let mut cves: Vec<&String> = a.aliases.iter().filter(|x| is_cve(x)).collect();
    cves.sort();
    match cves.first() {
        Some(c) => (*c).clone(),
        None => a.id.clone(),
    }
}

/// Matches `inv` against `advisories` (those stored under the inventory's targets, in any order)
/// with `scores` from the scoring tables.
pub fn match_inventory(inv: &Inventory, advisories: &[Advisory], scores: &[Score]) -> Report {
    let mut by_key: BTreeMap<(&str, String), Vec<&Advisory>> = BTreeMap::new();
    for a in advisories.iter().filter(|a| a.withdrawn.is_none()) {
        for aff in &a.affected {
            by_key
                .entry((
                    aff.ecosystem.as_str(),
                    package_key(&aff.ecosystem, &aff.package),
                ))
                .or_default()
                .push(a);
        }
    }
    let mut score_by_id: BTreeMap<&str, Vec<&Score>> = BTreeMap::new();
    for s in scores {
        score_by_id.entry(s.cve.as_str()).or_default().push(s);
    }
    let mut findings = Vec::new();
    for pkg in &inv.packages {
        let Some(t) = target(pkg, inv.os.as_ref()) else {
            continue;
        };
        let Some(candidates) = by_key.get(&(t.ecosystem.as_str(), t.key.clone())) else {
            continue;
        };
        // Advisories for this package, grouped by the CVE they are about.
        let mut groups: BTreeMap<String, Vec<(&Advisory, Option<String>)>> = BTreeMap::new();
        for a in candidates {
            let hit = a
                .affected
                .iter()
                .filter(|aff| {
                    aff.ecosystem == t.ecosystem
                        && package_key(&aff.ecosystem, &aff.package) == t.key
                })
                .find_map(|aff| affected(aff, &t.version, t.scheme));
            if let Some(fixed) = hit {
                groups.entry(canonical_id(a)).or_default().push((a, fixed));
            }
        }
        for (id, group) in groups {
            let mut aliases = BTreeSet::new();
            let mut sources = BTreeSet::new();
            let mut vectors = Vec::new();
            let mut fixed: Option<String> = None;
            let mut summary = None;
            for (a, f) in &group {
                aliases.insert(a.id.clone());
                aliases.extend(a.aliases.iter().cloned());
                sources.insert(a.source.clone());
                vectors.extend(a.cvss.iter().cloned());
                if summary.is_none() {
                    summary = a.summary.clone();
                }
                // Where sources disagree on the fix, the lowest fix above the installed version
                // is the upgrade that resolves it.
                if let Some(f) = f {
                    let lower = match &fixed {
                        None => true,
                        Some(cur) => t.scheme.compare(f, cur) == Some(Ordering::Less),
                    };
                    if lower {
                        fixed = Some(f.clone());
                    }
                }
            }
            aliases.remove(&id);
            let score = best_score(&id, &aliases, &vectors, &score_by_id);
            findings.push(Finding {
                id,
                aliases: aliases.into_iter().collect(),
                package: pkg.name.clone(),
                kind: pkg.kind,
                source_package: (t.key != pkg.name).then(|| t.key.clone()),
                installed: pkg.version.clone(),
                fixable: fixed.is_some(),
                fixed,
                score,
                severity: Severity::from_score(score),
                sources: sources.into_iter().collect(),
                ecosystem: t.ecosystem.clone(),
                path: pkg.path.clone(),
                summary,
            });
        }
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.package.cmp(&b.package))
            .then_with(|| a.id.cmp(&b.id))
    });
    let summary = summarize(&findings);
    Report {
        image: inv.image.clone(),
        os: inv.os.clone(),
        packages: inv.packages.len(),
        findings,
        summary,
        partial: inv.partial,
        warnings: inv.warnings.clone(),
        unknown: inv.unknown_reason(),
    }
}

/// The highest CVSS v3/v4 score any source gives the vulnerability or one of its aliases; v2
/// scores count only where no newer score exists, since v2 rates the same flaw differently.
fn best_score(
    id: &str,
    aliases: &BTreeSet<String>,
    vectors: &[String],
    table: &BTreeMap<&str, Vec<&Score>>,
) -> Option<f64> {
    let mut modern: Option<f64> = None;
    let mut legacy: Option<f64> = None;
    let mut consider = |version: &str, score: f64| {
        let slot = if version.starts_with('2') {
            &mut legacy
        } else {
            &mut modern
        };
        *slot = Some(slot.map_or(score, |s: f64| s.max(score)));
    };
    for v in vectors {
        if let Ok(s) = base_score(v) {
            consider(v.get(5..8).unwrap_or("3"), s);
        }
    }
    for name in std::iter::once(id).chain(aliases.iter().map(String::as_str)) {
        for s in table.get(name).into_iter().flatten() {
            consider(&s.version, s.score);
        }
    }
    modern.or(legacy)
}

/// The score and severity a finding of the vulnerability known by `ids` gets (the first is its
/// own ID), from the vectors its advisories carry and the `scores` stored for those IDs.
pub fn rate(ids: &[String], vectors: &[String], scores: &[Score]) -> (Option<f64>, Severity) {
    let mut table: BTreeMap<&str, Vec<&Score>> = BTreeMap::new();
    for s in scores {
        table.entry(s.cve.as_str()).or_default().push(s);
    }
    let (id, aliases) = match ids.split_first() {
        Some((id, rest)) => (id.as_str(), rest.iter().cloned().collect()),
        None => ("", BTreeSet::new()),
    };
    let score = best_score(id, &aliases, vectors, &table);
    (score, Severity::from_score(score))
}

/// The (ecosystem, keys) lookups an inventory needs, for fetching candidates from the store.
pub fn lookups(inv: &Inventory) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pkg in &inv.packages {
        if let Some(t) = target(pkg, inv.os.as_ref()) {
            out.entry(t.ecosystem).or_default().insert(t.key);
        }
    }
    out
}

/// Every ID whose scores are worth fetching for these advisories.
pub fn score_ids(advisories: &[Advisory]) -> BTreeSet<String> {
    advisories
        .iter()
        .flat_map(|a| std::iter::once(a.id.clone()).chain(a.aliases.iter().cloned()))
        .filter(|id| is_cve(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advisory::{Event, Range};

    fn range(events: &[(&str, &str)]) -> Range {
        Range {
            kind: "ECOSYSTEM".into(),
            events: events
                .iter()
                .map(|(k, v)| {
                    let v = Some(v.to_string());
                    match *k {
                        "i" => Event {
                            introduced: v,
                            ..Event::default()
                        },
                        "f" => Event {
                            fixed: v,
                            ..Event::default()
                        },
                        _ => Event {
                            last_affected: v,
                            ..Event::default()
                        },
                    }
                })
                .collect(),
        }
    }

    fn aff(ranges: Vec<Range>, versions: &[&str]) -> Affected {
        Affected {
            ecosystem: "Debian:12".into(),
            package: "openssl".into(),
            ranges,
            versions: versions.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn ranges_in_dpkg_order() {
        let a = aff(vec![range(&[("i", "0"), ("f", "3.0.11-1~deb12u2")])], &[]);
        assert_eq!(
            affected(&a, "3.0.11-1~deb12u1", Scheme::Dpkg),
            Some(Some("3.0.11-1~deb12u2".into()))
        );
        assert_eq!(affected(&a, "3.0.11-1~deb12u2", Scheme::Dpkg), None);
        assert_eq!(affected(&a, "3.0.13-1~deb12u1", Scheme::Dpkg), None);
    }

    #[test]
    fn several_intervals_and_last_affected() {
        let a = aff(
            vec![range(&[
                ("i", "1.0.0"),
                ("f", "1.2.0"),
                ("i", "2.0.0"),
                ("l", "2.3.0"),
            ])],
            &[],
        );
        let s = Scheme::Semver;
        assert_eq!(affected(&a, "0.9.0", s), None);
        assert_eq!(affected(&a, "1.1.0", s), Some(Some("1.2.0".into())));
        assert_eq!(affected(&a, "1.5.0", s), None);
        assert_eq!(affected(&a, "2.3.0", s), Some(None));
        assert_eq!(affected(&a, "2.3.1", s), None);
    }

    #[test]
    fn versions_lists() {
        let a = aff(vec![], &["1.26.4", "1.26.3"]);
        assert_eq!(affected(&a, "1.26.4", Scheme::Pep440), Some(None));
        assert_eq!(affected(&a, "1.26.4.0", Scheme::Pep440), Some(None));
        assert_eq!(affected(&a, "1.26.5", Scheme::Pep440), None);
    }

    fn advisory(id: &str, aliases: &[&str], source: &str, fixed: &str, cvss: &[&str]) -> Advisory {
        Advisory {
            id: id.into(),
            source: source.into(),
            modified: String::new(),
            published: None,
            withdrawn: None,
            summary: None,
            details: None,
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            references: vec![],
            cvss: cvss.iter().map(|s| s.to_string()).collect(),
            affected: vec![Affected {
                ecosystem: "PyPI".into(),
                package: "urllib3".into(),
                ranges: vec![range(&[("i", "0"), ("f", fixed)])],
                versions: vec![],
            }],
        }
    }

    fn inventory(name: &str, version: &str) -> Inventory {
        Inventory {
            detector_version: 1,
            image: "sha256:x".into(),
            os: None,
            packages: vec![Package {
                kind: Kind::Python,
                name: name.into(),
                version: version.into(),
                source: None,
                source_version: None,
                path: "site-packages".into(),
            }],
            warnings: vec![],
            partial: false,
        }
    }

    #[test]
    fn aliases_merge_and_the_highest_score_wins() {
        let advisories = vec![
            advisory(
                "GHSA-q2q7-5pp4-w6pg",
                &["CVE-2021-33503"],
                "ghsa",
                "1.26.5",
                &["CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"],
            ),
            advisory("PYSEC-2021-108", &["CVE-2021-33503"], "pypa", "1.26.6", &[]),
            advisory("PYSEC-2099-1", &[], "pypa", "2.0.0", &[]),
        ];
        let scores = vec![Score {
            cve: "CVE-2021-33503".into(),
            source: "nvd".into(),
            version: "2.0".into(),
            vector: None,
            score: 10.0,
            modified: None,
        }];
        // The package name is normalised the same way on both sides.
        let r = match_inventory(&inventory("URLLib3", "1.26.4"), &advisories, &scores);
        assert_eq!(r.findings.len(), 2);
        let f = &r.findings[0];
        assert_eq!(f.id, "CVE-2021-33503");
        assert_eq!(f.aliases, ["GHSA-q2q7-5pp4-w6pg", "PYSEC-2021-108"]);
        assert_eq!(f.fixed.as_deref(), Some("1.26.5"));
        assert_eq!(f.sources, ["ghsa", "pypa"]);
        // 7.5 from the v3 vector; the v2 10.0 does not count when a v3 score exists.
        assert_eq!(f.score, Some(7.5));
        assert_eq!(f.severity, Severity::High);
        let g = &r.findings[1];
        assert_eq!(
            (g.id.as_str(), g.severity),
            ("PYSEC-2099-1", Severity::Unknown)
        );
        assert_eq!(r.summary.get(&Severity::High), Some(&1));

        let r = match_inventory(&inventory("urllib3", "2.0.0"), &advisories, &scores);
        assert!(r.findings.is_empty());
    }
}
