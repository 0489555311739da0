/// Where the shared vulnerability data lives: `WHARF_VULNDB_DIR`, else `shared/data/vulndb`
/// beside the checkout (or any folder above it). Tests fail, never skip, when it is missing.
pub fn vulndb_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("WHARF_VULNDB_DIR") {
        return dir.into();
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors().chain([std::path::Path::new("/work")]) {
        let candidate = dir.join("shared/data/vulndb");
        if candidate.is_dir() {
            return candidate;
        }
    }
    panic!("shared/data/vulndb not found above {manifest:?}: set WHARF_VULNDB_DIR");
}
