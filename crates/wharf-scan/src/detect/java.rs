//! Java archives (jar, war, ear): the Maven coordinates in `META-INF/maven/**/pom.properties`,
//! also of the jars nested inside (Spring Boot's `BOOT-INF/lib/`, a war's `WEB-INF/lib/`).
//! Archives come from untrusted images: what is read is bounded in size, depth and count, so a
//! zip bomb costs a warning, not the scanner's memory.

use std::io::{Cursor, Read};

use crate::inventory::{Kind, Package};

/// Nested archives are opened this deep (an app jar's libraries, not their libraries' jars).
const MAX_DEPTH: usize = 2;
/// The largest nested archive read into memory.
const MAX_NESTED: u64 = 32 * 1024 * 1024;
/// The largest `pom.properties` read.
const MAX_PROPERTIES: u64 = 64 * 1024;
/// Bytes inflated from one top-level archive at most, nested ones included.
const MAX_INFLATED: u64 = 512 * 1024 * 1024;
/// Entries looked at in one archive at most.
const MAX_ENTRIES: usize = 100_000;

/// Whether a file name is a Java archive.
pub fn is_archive(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jar", ".war", ".ear"].iter().any(|e| lower.ends_with(e))
}

/// The packages of the archive at `path`; `Err` when it is not a readable zip or a limit was
/// reached (with what was found up to then lost: the scan is then partial).
pub fn parse_archive(bytes: &[u8], path: &str) -> Result<Vec<Package>, String> {
    let mut budget = MAX_INFLATED;
    let mut out = Vec::new();
    read(bytes, path, 0, &mut budget, &mut out).map_err(|e| match e {
        Refused::NotAnArchive(m) | Refused::Limit(m) => m,
    })?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Why an archive was not read.
enum Refused {
    NotAnArchive(String),
    Limit(String),
}

fn read(
    bytes: &[u8],
    path: &str,
    depth: usize,
    budget: &mut u64,
    out: &mut Vec<Package>,
) -> Result<(), Refused> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Refused::NotAnArchive(format!("{path}: not a readable Java archive: {e}")))?;
    if zip.len() > MAX_ENTRIES {
        return Err(Refused::Limit(format!(
            "{path}: {} entries, more than the {MAX_ENTRIES} read",
            zip.len()
        )));
    }
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Refused::Limit(format!("{path}: entry {i}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .name()
            .map_err(|e| Refused::Limit(format!("{path}: entry {i}: {e}")))?
            .to_string();
        let properties = name.starts_with("META-INF/maven/") && name.ends_with("/pom.properties");
        let nested = depth < MAX_DEPTH && is_archive(&name);
        if !properties && !nested {
            continue;
        }
        let limit = if properties {
            MAX_PROPERTIES
        } else {
            MAX_NESTED
        };
        if entry.size() > limit {
            return Err(Refused::Limit(format!(
                "{path}!{name}: {} bytes inflated, more than the {limit} read",
                entry.size()
            )));
        }
        // The size in the header may lie: read one byte more than it may hold to see.
        let mut data = Vec::new();
        (&mut entry)
            .take(limit.min(*budget) + 1)
            .read_to_end(&mut data)
            .map_err(|e| Refused::Limit(format!("{path}!{name}: {e}")))?;
        if data.len() as u64 > limit.min(*budget) {
            return Err(Refused::Limit(format!(
                "{path}!{name}: inflates beyond what is read from one archive (a zip bomb?)"
            )));
        }
        *budget -= data.len() as u64;
        let inner = format!("{path}!{name}");
        if properties {
            if let Some(p) = pom_properties(&String::from_utf8_lossy(&data), &inner) {
                out.push(p);
            }
        } else {
            // A nested file named .jar that is no zip is not Java's: it is passed over. A limit
            // reached inside stops the whole archive.
            match read(&data, &inner, depth + 1, budget, out) {
                Err(Refused::NotAnArchive(_)) => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// `groupId`, `artifactId` and `version` of a `pom.properties` (Java properties syntax).
fn pom_properties(text: &str, path: &str) -> Option<Package> {
    let (mut group, mut artifact, mut version) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once(['=', ':']) else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "groupId" => group = Some(v),
            "artifactId" => artifact = Some(v),
            "version" => version = Some(v),
            _ => {}
        }
    }
    match (group, artifact, version) {
        (Some(g), Some(a), Some(v)) if !g.is_empty() && !a.is_empty() && !v.is_empty() => {
            Some(Package {
                kind: Kind::Maven,
                name: format!("{g}:{a}"),
                version: v,
                source: None,
                source_version: None,
                path: path.to_string(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A zip of (name, bytes) entries, deflated.
    pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            w.start_file(*name, opts).expect("entry");
            w.write_all(data).expect("write");
        }
        w.finish().expect("finish").into_inner()
    }

    pub(crate) fn pom(group: &str, artifact: &str, version: &str) -> Vec<u8> {
        format!("#Generated by Maven\ngroupId={group}\nartifactId={artifact}\nversion={version}\n")
            .into_bytes()
    }

    #[test]
    fn fat_jars_list_their_own_and_nested_coordinates() {
        let log4j = zip_of(&[(
            "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties",
            &pom("org.apache.logging.log4j", "log4j-core", "2.14.1"),
        )]);
        let app = zip_of(&[
            ("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\n"),
            (
                "META-INF/maven/com.example/app/pom.properties",
                &pom("com.example", "app", "1.0.0"),
            ),
            ("BOOT-INF/lib/log4j-core-2.14.1.jar", &log4j),
            ("BOOT-INF/classes/App.class", b"\xca\xfe\xba\xbe"),
        ]);
        let found = parse_archive(&app, "app/app.jar").expect("read");
        let names: Vec<(&str, &str, &str)> = found
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.path.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "com.example:app",
                    "1.0.0",
                    "app/app.jar!META-INF/maven/com.example/app/pom.properties"
                ),
                (
                    "org.apache.logging.log4j:log4j-core",
                    "2.14.1",
                    "app/app.jar!BOOT-INF/lib/log4j-core-2.14.1.jar!META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties"
                ),
            ]
        );
    }

    #[test]
    fn bombs_and_junk_are_refused_with_the_reason() {
        // 30 MiB of zeros deflate to 30 KiB; nested twice, they add up past the budget.
        let zeros = vec![0u8; 30 * 1024 * 1024];
        let inner = zip_of(&[("big.jar", &zeros), ("more.jar", &zeros)]);
        let entries: Vec<(String, Vec<u8>)> = (0..10)
            .map(|i| (format!("lib/{i}.jar"), inner.clone()))
            .collect();
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let bomb = zip_of(&refs);
        assert!(bomb.len() < 10 * 1024 * 1024, "{}", bomb.len());
        let err = parse_archive(&bomb, "bomb.jar").unwrap_err();
        assert!(err.contains("bomb.jar!lib/"), "{err}");
        let err = parse_archive(b"PK not a zip", "junk.jar").unwrap_err();
        assert!(err.contains("not a readable Java archive"), "{err}");
    }
}
