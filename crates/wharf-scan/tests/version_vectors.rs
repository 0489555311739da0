//! The version orderings against the published test vectors in shared/data/vulndb/version-vectors
//! (apk-tools' own tests, rpm's rpmvercmp.at, and the univers package's apk and dpkg tables).

use std::cmp::Ordering;
use std::path::PathBuf;
use wharf_scan::version;

mod support;

fn vectors() -> PathBuf {
    support::vulndb_dir().join("version-vectors")
}

fn ordering(sym: &str) -> Ordering {
    match sym {
        "<" | "-1" => Ordering::Less,
        ">" | "1" => Ordering::Greater,
        "=" | "0" => Ordering::Equal,
        other => panic!("unknown comparison {other:?}"),
    }
}

#[test]
fn apk_tools_vectors() {
    let text = std::fs::read_to_string(vectors().join("alpine_test.txt")).expect("alpine_test.txt");
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [a, op, b] = parts[..] else {
            panic!("unreadable vector line {line:?}")
        };
        assert_eq!(version::apk(a, b), Some(ordering(op)), "{line}");
        n += 1;
    }
    assert!(n > 700, "only {n} vectors read");
}

#[test]
fn rpmvercmp_vectors() {
    let text = std::fs::read_to_string(vectors().join("rpmvercmp.at")).expect("rpmvercmp.at");
    let mut n = 0;
    for line in text.lines().filter(|l| l.starts_with("RPMVERCMP(")) {
        let inner = &line["RPMVERCMP(".len()..line.len() - 1];
        let parts: Vec<&str> = inner.split(", ").collect();
        let [a, b, want] = parts[..] else {
            panic!("unreadable vector line {line:?}")
        };
        assert_eq!(version::rpm(a, b), ordering(want), "{line}");
        n += 1;
    }
    assert!(n > 80, "only {n} vectors read");
}

/// univers' JSON tables: "comparison" lists two versions and expects them sorted; "equality"
/// expects true when they are equal.
fn json_vectors(file: &str, compare: fn(&str, &str) -> Option<Ordering>) {
    let text = std::fs::read_to_string(vectors().join("schema").join(file)).expect(file);
    let cases: serde_json::Value = serde_json::from_str(&text).expect("vector JSON");
    let cases = cases.as_array().expect("an array of cases");
    for case in cases {
        let versions: Vec<&str> = case["input"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v.as_str().expect("version string"))
            .collect();
        let (a, b) = (versions[0], versions[1]);
        match case["test_type"].as_str() {
            Some("comparison") => {
                let sorted: Vec<&str> = case["expected_output"]
                    .as_array()
                    .expect("expected order")
                    .iter()
                    .map(|v| v.as_str().expect("version string"))
                    .collect();
                assert_eq!(
                    compare(sorted[0], sorted[1]),
                    Some(Ordering::Less),
                    "{file}: {} < {}",
                    sorted[0],
                    sorted[1]
                );
            }
            Some("equality") => {
                let equal = case["expected_output"].as_bool().expect("bool");
                assert_eq!(
                    compare(a, b) == Some(Ordering::Equal),
                    equal,
                    "{file}: {a} == {b} should be {equal}"
                );
            }
            other => panic!("unknown test type {other:?}"),
        }
    }
    assert!(cases.len() > 10);
}

#[test]
fn univers_apk_vectors() {
    json_vectors("alpine_version_cmp.json", version::apk);
}

#[test]
fn univers_dpkg_vectors() {
    json_vectors("deb_version_python_pkg_test.json", version::dpkg);
}
