//! Where an image's layers come from: an OCI image layout directory or a `docker save` tarball.
//! Layers are opened one at a time, in order, as streams; nothing is unpacked.

use serde::Deserialize;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One layer as the image lists it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The digest the manifest gives, when it gives one (`sha256:...`).
    pub digest: Option<String>,
    /// A name for messages: the digest, or the file inside the archive.
    pub name: String,
}

/// An image whose layers can be read in order. The store backend implements this too, later.
pub trait ImageSource: Send {
    /// The image's identity: the manifest digest (OCI layout) or config digest (`docker save`).
    fn id(&self) -> &str;
    fn layers(&self) -> &[Layer];
    fn open_layer(&self, index: usize) -> io::Result<Box<dyn Read + '_>>;
}

/// Opens an OCI layout directory or a `docker save` tar file, whichever `path` is.
pub fn open(path: &Path, platform: Option<&str>) -> Result<Box<dyn ImageSource>, ImageError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        Ok(Box::new(OciLayout::open(path, platform)?))
    } else {
        Ok(Box::new(DockerArchive::open(path)?))
    }
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct IndexOrManifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

pub struct OciLayout {
    root: PathBuf,
    id: String,
    layers: Vec<Layer>,
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

impl OciLayout {
    pub fn open(root: &Path, platform: Option<&str>) -> Result<Self, ImageError> {
        let index_path = root.join("index.json");
        let bytes = std::fs::read(&index_path).map_err(io_err(&index_path))?;
        let mut doc: IndexOrManifest = serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::Invalid(format!("{}: not an OCI index: {e}", index_path.display()))
        })?;
        // Follow nested indexes down to one image manifest, choosing the platform asked for, or
        // linux/amd64, or the only one there is.
        for _ in 0..8 {
            let chosen = choose(&doc.manifests, platform).ok_or_else(|| {
                ImageError::Invalid(format!(
                    "{}: no image manifest{}",
                    root.display(),
                    platform
                        .map(|p| format!(" for platform {p}"))
                        .unwrap_or_default()
                ))
            })?;
            let digest = chosen.digest.clone();
            let blob = blob_path(root, &digest)?;
            let bytes = std::fs::read(&blob).map_err(io_err(&blob))?;
            let next: IndexOrManifest = serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::Invalid(format!("{}: not a manifest or index: {e}", blob.display()))
            })?;
            if is_index(&chosen.media_type)
                || is_index(&next.media_type)
                || !next.manifests.is_empty()
            {
                doc = next;
                continue;
            }
            let layers = next
                .layers
                .iter()
                .map(|l| Layer {
                    digest: Some(l.digest.clone()),
                    name: l.digest.clone(),
                })
                .collect();
            return Ok(Self {
                root: root.to_path_buf(),
                id: digest,
                layers,
            });
        }
        Err(ImageError::Invalid(format!(
            "{}: indexes nested too deep",
            root.display()
        )))
    }
}

fn choose<'a>(manifests: &'a [Descriptor], platform: Option<&str>) -> Option<&'a Descriptor> {
    let matches = |d: &Descriptor, want: &str| {
        d.platform.as_ref().is_some_and(|p| {
            let full = match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            };
            full == want || format!("{}/{}", p.os, p.architecture) == want
        })
    };
    match platform {
        Some(want) => manifests.iter().find(|d| matches(d, want)),
        None if manifests.len() == 1 => manifests.first(),
        None => manifests
            .iter()
            .find(|d| matches(d, "linux/amd64"))
            .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
            .or_else(|| manifests.first()),
    }
}

fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (alg, hex) = digest
        .split_once(':')
        .filter(|(a, h)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_alphanumeric())
                && !h.is_empty()
                && h.bytes().all(|c| c.is_ascii_hexdigit())
        })
        .ok_or_else(|| ImageError::Invalid(format!("invalid digest {digest:?}")))?;
    Ok(root.join("blobs").join(alg).join(hex))
}

impl ImageSource for OciLayout {
    fn id(&self) -> &str {
        &self.id
    }
    fn layers(&self) -> &[Layer] {
        &self.layers
    }
    fn open_layer(&self, index: usize) -> io::Result<Box<dyn Read + '_>> {
        let digest = self.layers[index].digest.as_deref().unwrap_or_default();
        let path = blob_path(&self.root, digest).map_err(io::Error::other)?;
        Ok(Box::new(File::open(path)?))
    }
}

/// A `docker save` file: `manifest.json` names the config and the layer files inside the tar.
/// Entry offsets are indexed once, so each layer is read in place.
pub struct DockerArchive {
    path: PathBuf,
    id: String,
    layers: Vec<Layer>,
    /// (offset, size) of each layer's bytes inside the tar.
    spans: Vec<(u64, u64)>,
}

impl DockerArchive {
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = std::collections::HashMap::new();
        let mut manifest = None;
        let invalid = |why: String| ImageError::Invalid(format!("{}: {why}", path.display()));
        for entry in archive.entries().map_err(io_err(path))? {
            let mut entry = entry.map_err(|e| invalid(format!("not a readable tar file: {e}")))?;
            let name = entry
                .path()
                .map_err(io_err(path))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            if name == "manifest.json" {
                let mut bytes = Vec::new();
                entry
                    .by_ref()
                    .take(4 << 20)
                    .read_to_end(&mut bytes)
                    .map_err(io_err(path))?;
                manifest = Some(bytes);
            } else {
                entries.insert(name, (entry.raw_file_position(), entry.size()));
            }
        }
        let manifest = manifest.ok_or_else(|| {
            invalid("no manifest.json: not a `docker save` file or OCI layout".to_string())
        })?;
        #[derive(Deserialize)]
        struct Item {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let items: Vec<Item> = serde_json::from_slice(&manifest)
            .map_err(|e| invalid(format!("invalid manifest.json: {e}")))?;
        let item = items
            .into_iter()
            .next()
            .ok_or_else(|| invalid("manifest.json lists no image".to_string()))?;
        let mut spans = Vec::new();
        let mut layers = Vec::new();
        for name in &item.layers {
            let span = entries
                .get(name.trim_start_matches("./"))
                .ok_or_else(|| invalid(format!("layer {name} is missing from the archive")))?;
            spans.push(*span);
            layers.push(Layer {
                digest: digest_from_name(name),
                name: name.clone(),
            });
        }
        let id = match digest_from_name(&item.config) {
            Some(d) => d,
            None => {
                let span = entries
                    .get(item.config.trim_start_matches("./"))
                    .ok_or_else(|| invalid(format!("config {} is missing", item.config)))?;
                let mut f = File::open(path).map_err(io_err(path))?;
                f.seek(SeekFrom::Start(span.0)).map_err(io_err(path))?;
                let mut h = crate::digest::Sha256Reader::new(f.take(span.1));
                io::copy(&mut h, &mut io::sink()).map_err(io_err(path))?;
                h.digest()
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            id,
            layers,
            spans,
        })
    }
}

/// `blobs/sha256/<hex>` (OCI-style archives) or `<hex>.json` / `<hex>/layer.tar` (older ones).
fn digest_from_name(name: &str) -> Option<String> {
    let hex_ok = |h: &str| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit());
    if let Some(hex) = name.strip_prefix("blobs/sha256/") {
        return hex_ok(hex).then(|| format!("sha256:{hex}"));
    }
    let stem = name.strip_suffix(".json").unwrap_or(name);
    hex_ok(stem).then(|| format!("sha256:{stem}"))
}

impl ImageSource for DockerArchive {
    fn id(&self) -> &str {
        &self.id
    }
    fn layers(&self) -> &[Layer] {
        &self.layers
    }
    fn open_layer(&self, index: usize) -> io::Result<Box<dyn Read + '_>> {
        let (offset, size) = self.spans[index];
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f.take(size)))
    }
}
