//! RPM's sqlite database (`rpmdb.sqlite`, RHEL 9 / Fedora 33 and later): table `Packages` holds
//! one header blob per package. The database is opened from memory, never written to disk.

use crate::inventory::{Kind, Package};

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_SOURCERPM: u32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

pub fn parse_sqlite(bytes: &[u8], path: &str) -> Result<Vec<Package>, String> {
    let fail = |e: rusqlite::Error| format!("{path}: not a readable rpm sqlite database: {e}");
    let mut db = rusqlite::Connection::open_in_memory().map_err(fail)?;
    db.deserialize(
        rusqlite::DatabaseName::Main,
        sqlite_copy(bytes, path)?,
        true,
    )
    .map_err(fail)?;
    let mut stmt = db.prepare("SELECT blob FROM Packages").map_err(fail)?;
    let rows = stmt
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .map_err(fail)?;
    let mut out = Vec::new();
    for blob in rows {
        let blob = blob.map_err(fail)?;
        let h = parse_header(&blob).map_err(|e| format!("{path}: {e}"))?;
        // gpg-pubkey entries are keys imported into the database, not packages.
        if h.name == "gpg-pubkey" {
            continue;
        }
        let version = match h.epoch {
            Some(e) if e != 0 => format!("{e}:{}-{}", h.version, h.release),
            _ => format!("{}-{}", h.version, h.release),
        };
        out.push(Package {
            kind: Kind::Rpm,
            source: h.source_name.filter(|s| *s != h.name),
            name: h.name,
            version,
            source_version: None,
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// SQLite takes ownership of a deserialized database's memory, which must come from its own
/// allocator: copy the file's bytes into such a buffer.
fn sqlite_copy(bytes: &[u8], path: &str) -> Result<rusqlite::serialize::OwnedData, String> {
    if bytes.is_empty() {
        return Err(format!("{path}: empty rpm database"));
    }
    // SAFETY: the buffer is allocated by sqlite3_malloc64 with exactly bytes.len() bytes, filled
    // completely before use, and handed to OwnedData, which frees it with sqlite3_free.
    unsafe {
        let ptr = rusqlite::ffi::sqlite3_malloc64(bytes.len() as u64).cast::<u8>();
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| format!("{path}: no memory for the rpm database"))?;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len());
        Ok(rusqlite::serialize::OwnedData::from_raw_nonnull(
            ptr,
            bytes.len(),
        ))
    }
}

#[derive(Debug, Default)]
struct Header {
    name: String,
    version: String,
    release: String,
    epoch: Option<u32>,
    source_name: Option<String>,
}

fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or_else(|| "truncated rpm header".to_string())
}

/// An rpm header as stored in the database: index count, data length, 16-byte index entries
/// (tag, type, offset, count), then the data store.
fn parse_header(b: &[u8]) -> Result<Header, String> {
    let il = be32(b, 0)? as usize;
    let dl = be32(b, 4)? as usize;
    let data_start = 8usize
        .checked_add(il.checked_mul(16).ok_or("rpm header index too large")?)
        .ok_or("rpm header index too large")?;
    let data = b
        .get(data_start..data_start.saturating_add(dl))
        .ok_or("truncated rpm header")?;
    let mut h = Header::default();
    for i in 0..il {
        let at = 8 + i * 16;
        let (tag, ty, off) = (be32(b, at)?, be32(b, at + 4)?, be32(b, at + 8)? as usize);
        let string = || -> Result<String, String> {
            let s = data.get(off..).ok_or("rpm header offset out of range")?;
            let end = s
                .iter()
                .position(|&c| c == 0)
                .ok_or("unterminated rpm string")?;
            Ok(String::from_utf8_lossy(&s[..end]).into_owned())
        };
        match (tag, ty) {
            (TAG_NAME, TYPE_STRING) => h.name = string()?,
            (TAG_VERSION, TYPE_STRING) => h.version = string()?,
            (TAG_RELEASE, TYPE_STRING) => h.release = string()?,
            (TAG_SOURCERPM, TYPE_STRING) => h.source_name = source_rpm_name(&string()?),
            (TAG_EPOCH, TYPE_INT32) => h.epoch = Some(be32(data, off)?),
            _ => {}
        }
    }
    if h.name.is_empty() || h.version.is_empty() {
        return Err("rpm header without a name or version".to_string());
    }
    Ok(h)
}

/// `openssl-3.0.7-24.el9.src.rpm` → `openssl`: drop `.src.rpm`, then the release and version.
fn source_rpm_name(srpm: &str) -> Option<String> {
    let base = srpm.strip_suffix(".rpm")?;
    let base = base.rsplit_once('.').map_or(base, |(b, _arch)| b);
    let (rest, _release) = base.rsplit_once('-')?;
    let (name, _version) = rest.rsplit_once('-')?;
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a header blob the way rpm stores one.
    fn header(name: &str, epoch: Option<u32>, version: &str, release: &str, srpm: &str) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        let mut add = |tag: u32, ty: u32, bytes: &[u8], data: &mut Vec<u8>| {
            if ty == TYPE_INT32 {
                while !data.len().is_multiple_of(4) {
                    data.push(0);
                }
            }
            index.extend_from_slice(&tag.to_be_bytes());
            index.extend_from_slice(&ty.to_be_bytes());
            index.extend_from_slice(&(data.len() as u32).to_be_bytes());
            index.extend_from_slice(&1u32.to_be_bytes());
            data.extend_from_slice(bytes);
        };
        for (tag, s) in [
            (TAG_NAME, name),
            (TAG_VERSION, version),
            (TAG_RELEASE, release),
            (TAG_SOURCERPM, srpm),
        ] {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            add(tag, TYPE_STRING, &b, &mut data);
        }
        if let Some(e) = epoch {
            add(TAG_EPOCH, TYPE_INT32, &e.to_be_bytes(), &mut data);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((index.len() / 16) as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend(index);
        out.extend(data);
        out
    }

    /// An rpmdb.sqlite file with the given header blobs, as bytes.
    fn rpmdb(blobs: &[Vec<u8>]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("rpmdb.sqlite");
        let db = rusqlite::Connection::open(&file).expect("open");
        db.execute_batch(
            "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)",
        )
        .expect("schema");
        for b in blobs {
            db.execute("INSERT INTO Packages (blob) VALUES (?1)", [b])
                .expect("insert");
        }
        drop(db);
        std::fs::read(file).expect("read")
    }

    #[test]
    fn reads_packages_from_sqlite_rpmdb() {
        let db = rpmdb(&[
            header(
                "openssl-libs",
                Some(1),
                "3.0.7",
                "24.el9",
                "openssl-3.0.7-24.el9.src.rpm",
            ),
            header(
                "bash",
                None,
                "5.1.8",
                "6.el9_1",
                "bash-5.1.8-6.el9_1.src.rpm",
            ),
        ]);
        let p = parse_sqlite(&db, "var/lib/rpm/rpmdb.sqlite").expect("parse");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "openssl-libs");
        assert_eq!(p[0].version, "1:3.0.7-24.el9");
        assert_eq!(p[0].source.as_deref(), Some("openssl"));
        assert_eq!(p[1].version, "5.1.8-6.el9_1");
        assert_eq!(p[1].source, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_sqlite(b"not sqlite at all", "x").is_err());
        assert!(parse_header(&[0, 0, 0, 9, 255, 255, 255, 255]).is_err());
        assert!(parse_header(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_err());
    }
}
