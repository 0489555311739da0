//! The layer walker: every layer is streamed in order through its decompressor and tar reader,
//! never unpacked. Files the detectors want are read (up to their size limits) and parsed at
//! once; what they yield is kept per path, so a whiteout or a replacement in a later layer
//! removes it exactly as the union filesystem would.

use crate::detect::{self, BinaryScan, Found, Interest};
use crate::digest::Sha256Reader;
use crate::image::ImageSource;
use crate::inventory::{Inventory, Package, Warning, DETECTOR_VERSION};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};

const CHUNK: usize = 64 * 1024;
/// Symlink hops followed before a chain is called a loop (Linux's own limit).
const MAX_HOPS: usize = 40;

#[derive(Debug, Clone)]
enum Node {
    Found(Found),
    /// A symlink, with its target as a normalised path from the root.
    Symlink(String),
}

/// Links remembered per image; past this, further links are ignored.
const MAX_LINKS: usize = 500_000;

#[derive(Default)]
struct Walk {
    lower: BTreeMap<String, Node>,
    links: usize,
    warnings: Vec<Warning>,
}

/// Reads the image's layers and returns what is installed in the final filesystem.
pub fn inventory(image: &dyn ImageSource) -> Inventory {
    let mut walk = Walk::default();
    for (index, layer) in image.layers().iter().enumerate() {
        let mut current = BTreeMap::new();
        let result = image
            .open_layer(index)
            .map_err(|e| format!("cannot open the layer: {e}"))
            .and_then(|raw| walk.layer(raw, layer.digest.as_deref(), &layer.name, &mut current));
        if let Err(reason) = result {
            walk.warn(&layer.name, reason);
        }
        // Whatever this layer added, even before an error cut it short, lies over the layers
        // below.
        walk.lower.extend(current);
    }
    walk.finish(image.id())
}

impl Walk {
    fn warn(&mut self, location: &str, reason: String) {
        self.warnings.push(Warning {
            location: location.to_string(),
            reason,
        });
    }

    /// Removes `path` and everything under it from the layers below.
    fn remove_lower(&mut self, path: &str, with_self: bool) {
        if with_self {
            self.lower.remove(path);
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let doomed: Vec<String> = self
            .lower
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.lower.remove(&k);
        }
    }

    fn layer(
        &mut self,
        raw: Box<dyn Read + '_>,
        digest: Option<&str>,
        name: &str,
        current: &mut BTreeMap<String, Node>,
    ) -> Result<(), String> {
        let mut hashed = Sha256Reader::new(raw);
        {
            let mut buffered = BufReader::with_capacity(CHUNK, &mut hashed);
            let head = buffered
                .fill_buf()
                .map_err(|e| format!("cannot read the layer: {e}"))?
                .to_vec();
            let mut stream = decompressor(&head, buffered)?;
            self.entries(&mut stream, name, current)?;
            // Read the compressed stream to its end, so its checksum and the digest cover it all.
            io::copy(&mut stream, &mut io::sink())
                .map_err(|e| format!("layer data is corrupt after the tar archive: {e}"))?;
        }
        io::copy(&mut hashed, &mut io::sink())
            .map_err(|e| format!("cannot read the layer: {e}"))?;
        let actual = hashed.digest();
        match digest {
            Some(want) if want.starts_with("sha256:") && want != actual => Err(format!(
                "layer content does not match its digest (read {actual})"
            )),
            _ => Ok(()),
        }
    }

    fn entries(
        &mut self,
        stream: &mut dyn Read,
        layer: &str,
        current: &mut BTreeMap<String, Node>,
    ) -> Result<(), String> {
        let mut archive = tar::Archive::new(stream);
        let entries = archive
            .entries()
            .map_err(|e| format!("not a tar archive: {e}"))?;
        for (count, entry) in entries.enumerate() {
            let mut entry = entry
                .map_err(|e| format!("layer is truncated or corrupt after {count} entries: {e}"))?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(path) = normalize("", &raw_path) else {
                self.warn(
                    &format!("{layer}: {raw_path}"),
                    "path escapes the image root; entry skipped".to_string(),
                );
                continue;
            };
            let (dir, file) = match path.rsplit_once('/') {
                Some((d, f)) => (d, f),
                None => ("", path.as_str()),
            };
            if file == ".wh..wh..opq" {
                self.remove_lower(dir, false);
                continue;
            }
            if let Some(hidden) = file.strip_prefix(".wh.") {
                let target = if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                };
                self.remove_lower(&target, true);
                current.remove(&target);
                continue;
            }
            let kind = entry.header().entry_type();
            // Anything at a path hides what lower layers had there; a non-directory also hides
            // what was below it, if the lower path was a directory.
            self.lower.remove(&path);
            current.remove(&path);
            if !kind.is_dir() {
                self.remove_lower(&path, false);
            }
            let executable = entry
                .header()
                .mode()
                .map(|m| m & 0o111 != 0)
                .unwrap_or(false);
            if kind.is_symlink() || kind.is_hard_link() {
                // Every link is kept (they are small, and a chain may pass through any of them)
                // up to a bound that only a hostile layer reaches.
                if self.links >= MAX_LINKS {
                    continue;
                }
                self.links += 1;
                let link = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                // Hard links name their target from the root; symlinks from their directory.
                let base = if kind.is_hard_link() || link.starts_with('/') {
                    ""
                } else {
                    dir
                };
                if let Some(target) = normalize(base, &link) {
                    current.insert(path, Node::Symlink(target));
                }
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let Some(interest) = detect::classify(&path, executable) else {
                continue;
            };
            let location = format!("{layer}: /{path}");
            let size = entry.header().size().unwrap_or(u64::MAX);
            match read_interesting(&mut entry, interest, &path, size) {
                Ok(Some(found)) => {
                    current.insert(path, Node::Found(found));
                }
                Ok(None) => {}
                Err(reason) => self.warn(&location, reason),
            }
        }
        Ok(())
    }

    fn resolve(&self, path: &str) -> Result<Option<&Found>, String> {
        let mut at = path.to_string();
        for _ in 0..MAX_HOPS {
            match self.lower.get(&at) {
                None => return Ok(None),
                Some(Node::Found(f)) => return Ok(Some(f)),
                Some(Node::Symlink(t)) => at = t.clone(),
            }
        }
        Err(format!(
            "/{path}: symlink loop (more than {MAX_HOPS} links)"
        ))
    }

    fn finish(mut self, image: &str) -> Inventory {
        let mut os = None;
        for candidate in ["etc/os-release", "usr/lib/os-release"] {
            match self.resolve(candidate) {
                Ok(Some(Found::Os(found))) => {
                    os = Some(found.clone());
                    break;
                }
                Ok(_) => {}
                Err(reason) => self.warn("image", reason),
            }
        }
        let mut packages: Vec<Package> = self
            .lower
            .values()
            .filter_map(|n| match n {
                Node::Found(Found::Packages(p)) => Some(p.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        // The same package found twice (a lock file and node_modules, say) is one package.
        packages.sort_by(|a, b| {
            (a.kind, &a.name, &a.version, &a.path).cmp(&(b.kind, &b.name, &b.version, &b.path))
        });
        packages.dedup_by(|a, b| a.kind == b.kind && a.name == b.name && a.version == b.version);
        Inventory {
            detector_version: DETECTOR_VERSION,
            image: image.to_string(),
            os,
            packages,
            partial: !self.warnings.is_empty(),
            warnings: self.warnings,
        }
    }
}

/// Picks the decompressor from the stream's first bytes, whatever the media type claims.
fn decompressor<'a>(head: &[u8], input: impl BufRead + 'a) -> Result<Box<dyn Read + 'a>, String> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Box::new(flate2::bufread::MultiGzDecoder::new(input)));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(input)
            .map_err(|e| format!("corrupt zstd layer: {e}"))?;
        return Ok(Box::new(decoder));
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" || head.is_empty() {
        return Ok(Box::new(input));
    }
    let what = if head.starts_with(b"BZh") {
        "bzip2".to_string()
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz".to_string()
    } else {
        format!("first bytes {}", hex::encode(&head[..head.len().min(8)]))
    };
    Err(format!(
        "unknown layer compression ({what}): not gzip, zstd or tar"
    ))
}

/// Resolves `path` (relative to `base`, or absolute) to a path from the root without `.` or
/// `..`; `None` when it climbs above the root, as a hostile archive might.
fn normalize(base: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = if path.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn read_interesting(
    entry: &mut dyn Read,
    interest: Interest,
    path: &str,
    size: u64,
) -> Result<Option<Found>, String> {
    let limit = interest.limit();
    let read_err = |e: io::Error| format!("cannot read the file: {e}");
    if interest == Interest::Executable {
        // Look at the first bytes before holding a whole file: most executables are scripts or
        // binaries without anything to find, and big ones are streamed.
        let mut scan = BinaryScan::new(path);
        // Executables too big to hold are only streamed through the Go build-info search.
        let hold = size < limit;
        let mut whole = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = entry.read(&mut buf).map_err(read_err)?;
            if n == 0 {
                break;
            }
            scan.feed(&buf[..n]);
            if scan.is_not_elf() {
                return Ok(None);
            }
            if hold {
                whole.extend_from_slice(&buf[..n]);
            }
        }
        let result = if hold {
            scan.finish_with_sections(&whole)
        } else {
            scan.finish()
        };
        return result.map(|p| (!p.is_empty()).then_some(Found::Packages(p)));
    }
    if limit == 0 {
        // Kinds recognised by their path alone (an rpmdb format that is not read): nothing to
        // read, and no size to complain about.
        return detect::parse(interest, path, &[]);
    }
    let mut bytes = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "file is larger than the {} MiB read for this kind of file; skipped",
            limit / (1024 * 1024)
        ));
    }
    detect::parse(interest, path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(
            normalize("", "./etc/os-release").as_deref(),
            Some("etc/os-release")
        );
        assert_eq!(
            normalize("etc", "../usr/lib/os-release").as_deref(),
            Some("usr/lib/os-release")
        );
        assert_eq!(
            normalize("etc", "/usr/lib/os-release").as_deref(),
            Some("usr/lib/os-release")
        );
        assert_eq!(normalize("", "a/../../etc/passwd"), None);
        assert_eq!(normalize("", "../x"), None);
    }
}
