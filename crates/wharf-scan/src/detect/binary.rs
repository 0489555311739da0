//! Executables: the build info Go embeds in every binary (toolchain version, main module,
//! dependencies with versions and replacements), and the dependency list `cargo auditable`
//! stores in a `.dep-v0` ELF section.
//!
//! Go's build info is found by its magic, so it is read from a stream whatever the binary's
//! size; the Rust section needs the section table at the end of the file, so it is read only
//! from binaries small enough to hold in memory.

use crate::inventory::{Kind, Package};
use crate::version::go_toolchain_version as toolchain_version;
use std::io::Read;

const GO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Build info past this many bytes is not believed.
const GO_MAX: usize = 4 << 20;
/// The decompressed cargo-auditable JSON is a few KiB; more is not believed.
const AUDITABLE_MAX: u64 = 8 << 20;

pub struct BinaryScan {
    path: String,
    elf: Option<bool>,
    /// Bytes kept from the end of the previous chunk, so a magic split across chunks is found.
    carry: Vec<u8>,
    /// The bytes from the magic onwards, once found.
    go: Option<Vec<u8>>,
}

impl BinaryScan {
    pub fn new(path: &str) -> Self {
        Self {
            path: path.to_string(),
            elf: None,
            carry: Vec::new(),
            go: None,
        }
    }

    pub fn is_elf(&self) -> bool {
        self.elf == Some(true)
    }

    /// True once the first bytes have shown this is not an ELF file.
    pub fn is_not_elf(&self) -> bool {
        self.elf == Some(false)
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.elf.is_none() {
            self.carry.extend_from_slice(chunk);
            if self.carry.len() < 4 {
                return;
            }
            self.elf = Some(self.carry.starts_with(b"\x7fELF"));
            let first = std::mem::take(&mut self.carry);
            if self.is_elf() {
                self.search(&first);
            }
            return;
        }
        if !self.is_elf() {
            return;
        }
        if let Some(go) = &mut self.go {
            if go.len() < GO_MAX {
                go.extend_from_slice(&chunk[..chunk.len().min(GO_MAX - go.len())]);
            }
            return;
        }
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(chunk);
        self.search(&window);
    }

    fn search(&mut self, window: &[u8]) {
        let mut from = 0;
        while let Some(i) = window[from..].iter().position(|&c| c == 0xff) {
            let at = from + i;
            if window[at..].starts_with(GO_MAGIC) {
                let end = window.len().min(at + GO_MAX);
                self.go = Some(window[at..end].to_vec());
                return;
            }
            if window.len() - at < GO_MAGIC.len() {
                // Possibly the start of a magic cut by the chunk's end.
                self.carry = window[at..].to_vec();
                return;
            }
            from = at + 1;
        }
    }

    /// The packages found in a streamed binary: Go build info only.
    pub fn finish(self) -> Result<Vec<Package>, String> {
        match &self.go {
            Some(info) => go_buildinfo(info, &self.path),
            None => Ok(Vec::new()),
        }
    }

    /// The packages found in a binary held whole in memory: Go build info and the
    /// cargo-auditable section.
    pub fn finish_with_sections(self, whole: &[u8]) -> Result<Vec<Package>, String> {
        if !self.is_elf() {
            return Ok(Vec::new());
        }
        let path = self.path.clone();
        let mut out = self.finish()?;
        out.extend(auditable(whole, &path)?);
        Ok(out)
    }
}

fn uvarint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v: u64 = 0;
    for (i, &c) in b.iter().enumerate().take(10) {
        v |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some((usize::try_from(v).ok()?, i + 1));
        }
    }
    None
}

/// Decodes Go build info starting at its magic (Go 1.18 and later store the strings inline).
pub fn go_buildinfo(b: &[u8], path: &str) -> Result<Vec<Package>, String> {
    let bad = |why: &str| format!("{path}: Go build info {why}");
    let flags = *b.get(15).ok_or_else(|| bad("truncated"))?;
    if flags & 0x2 == 0 {
        return Err(bad("is from a Go release before 1.18, which is not read"));
    }
    let mut rest = b.get(32..).ok_or_else(|| bad("truncated"))?;
    let mut strings = Vec::new();
    for _ in 0..2 {
        let (len, n) = uvarint(rest).ok_or_else(|| bad("has a malformed length"))?;
        let s = rest
            .get(n..n.checked_add(len).ok_or_else(|| bad("is too long"))?)
            .ok_or_else(|| bad("is truncated"))?;
        strings.push(s);
        rest = &rest[n + len..];
    }
    let go_version = String::from_utf8_lossy(strings[0]).into_owned();
    let mut modinfo = strings[1];
    // The module info is framed by 16-byte sentinels.
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        modinfo = &modinfo[16..modinfo.len() - 16];
    }
    let modinfo = String::from_utf8_lossy(modinfo);
    let mut out = Vec::new();
    if let Some(v) = toolchain_version(&go_version) {
        out.push(go_package("stdlib", &v, path));
    }
    for line in modinfo.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["mod" | "dep", module, version, ..]
                if *version != "(devel)" && !version.is_empty() =>
            {
                out.push(go_package(module, version, path));
            }
            // A replacement applies to the dependency just before it. A local directory
            // replacement has no version: the code is not the module's release, so nothing is
            // matched for it.
            ["=>", module, version, ..] => {
                if let Some(last) = out.last_mut() {
                    last.name = module.to_string();
                    last.version = version.to_string();
                }
            }
            [arrow, _local] if *arrow == "=>" => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

fn go_package(module: &str, version: &str, path: &str) -> Package {
    Package {
        kind: Kind::Go,
        name: module.to_string(),
        version: version.to_string(),
        source: None,
        source_version: None,
        path: path.to_string(),
    }
}

/// cargo-auditable's `.dep-v0` section: zlib-compressed JSON listing every crate compiled in.
fn auditable(whole: &[u8], path: &str) -> Result<Vec<Package>, String> {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(whole) else {
        return Ok(Vec::new());
    };
    let Some(section) = file.section_by_name(".dep-v0") else {
        return Ok(Vec::new());
    };
    let data = section
        .data()
        .map_err(|e| format!("{path}: unreadable .dep-v0 section: {e}"))?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(AUDITABLE_MAX)
        .read_to_end(&mut json)
        .map_err(|e| format!("{path}: .dep-v0 section is not zlib data: {e}"))?;
    #[derive(serde::Deserialize)]
    struct Info {
        packages: Vec<Dep>,
    }
    #[derive(serde::Deserialize)]
    struct Dep {
        name: String,
        version: String,
        #[serde(default)]
        source: String,
        #[serde(default)]
        kind: String,
    }
    let info: Info = serde_json::from_slice(&json)
        .map_err(|e| format!("{path}: .dep-v0 section is not cargo-auditable JSON: {e}"))?;
    Ok(info
        .packages
        .into_iter()
        // Build-time dependencies (build scripts, proc macros) are not in the running binary.
        .filter(|d| d.source == "crates.io" && d.kind != "build")
        .map(|d| Package {
            kind: Kind::Cargo,
            name: d.name,
            version: d.version,
            source: None,
            source_version: None,
            path: path.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varstr(s: &[u8]) -> Vec<u8> {
        let mut out = vec![s.len() as u8 | 0x80, (s.len() >> 7) as u8];
        out.extend_from_slice(s);
        out
    }

    pub fn fake_buildinfo(modinfo: &str) -> Vec<u8> {
        let mut b = GO_MAGIC.to_vec();
        b.push(8);
        b.push(2);
        b.resize(32, 0);
        b.extend(varstr(b"go1.21.3"));
        let mut framed = vec![b'0'; 16];
        framed.extend_from_slice(modinfo.as_bytes());
        framed.extend_from_slice(b"\n");
        framed.extend_from_slice(&[b'1'; 16]);
        b.extend(varstr(&framed));
        b
    }

    #[test]
    fn build_info_across_chunks() {
        let info = fake_buildinfo("path\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/text\tv0.3.6\th1:x=\ndep\tgithub.com/a/b\tv1.0.0\th1:y=\n=>\tgithub.com/c/b\tv1.1.0\th1:z=\ndep\tgithub.com/local/x\tv1.0.0\n=>\t../x");
        let mut file = b"\x7fELF".to_vec();
        file.extend(vec![0u8; 70_000]);
        file.extend(&info);
        file.extend(vec![0u8; 1000]);
        // Cut the stream so the magic straddles two chunks.
        let cut = 4 + 70_000 + 5;
        let mut scan = BinaryScan::new("usr/bin/app");
        scan.feed(&file[..2]);
        scan.feed(&file[2..cut]);
        scan.feed(&file[cut..]);
        let p = scan.finish().expect("decode");
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("stdlib", "1.21.3"),
                ("golang.org/x/text", "v0.3.6"),
                ("github.com/c/b", "v1.1.0")
            ]
        );
    }

    #[test]
    fn not_elf_and_garbage() {
        let mut scan = BinaryScan::new("x");
        scan.feed(b"#!/bin/sh\n\xff Go buildinf:");
        assert!(scan.finish().expect("nothing").is_empty());
        let mut bad = GO_MAGIC.to_vec();
        bad.extend([8, 2]);
        bad.resize(32, 0);
        bad.extend([0xff; 12]);
        assert!(go_buildinfo(&bad, "x").is_err());
        let mut old = GO_MAGIC.to_vec();
        old.extend([8, 0]);
        old.resize(64, 0);
        assert!(go_buildinfo(&old, "x").unwrap_err().contains("before 1.18"));
    }
}
