//! What the last sync left identical on both sides, per instance: for each path, its size and
//! modification time (to the nanosecond) at that moment, and for small files a SHA-256 of the
//! content. A side whose file no longer matches its entry changed it since; the pull decides by
//! that, not by which timestamp is newer. The digest tells a file rewritten with the same
//! content here (a `git checkout`, a `touch`) from one really changed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::itemize::rsync_time;

const HEADER: &[u8] = b"ssh-ec2 manifest 2\n";
/// Files up to this size get a digest: cheap to read, and where `touch`-like rewrites are common.
const DIGEST_UP_TO: u64 = 1 << 20;

type Digest = [u8; 32];

/// What the manifest knows of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub stamp: Stamp,
    digest: Option<Digest>,
}

/// A file's size and modification time, as rsync compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl Stamp {
    /// The stamp of `path` itself (a symlink, not what it points to), if it exists.
    pub fn of(path: &Path) -> Option<Stamp> {
        path.symlink_metadata()
            .ok()
            .map(|meta| Stamp::of_meta(&meta))
    }

    /// The stamp of what `meta` describes.
    pub fn of_meta(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec() as u32,
        }
    }

    /// Whether rsync's listing of a file (size, `%M` time in whole seconds) describes this stamp.
    pub fn matches_listing(&self, size: u64, mtime: &str) -> bool {
        self.size == size && self.written_at(mtime)
    }

    /// Whether its time is the listing's `%M` (whole seconds).
    pub fn written_at(&self, mtime: &str) -> bool {
        rsync_time(self.mtime_secs) == mtime
    }
}

pub struct Manifest {
    file: PathBuf,
    entries: BTreeMap<PathBuf, Entry>,
}

impl Manifest {
    /// Reads the manifest kept in `file`; none yet (a new instance) is an empty one. An unreadable
    /// one is empty too: every difference then counts as a change on both sides, so both
    /// versions are kept and nothing is lost.
    pub fn load(file: &Path) -> Manifest {
        let entries = std::fs::read(file)
            .ok()
            .and_then(|bytes| parse(&bytes))
            .unwrap_or_default();
        Manifest {
            file: file.to_path_buf(),
            entries,
        }
    }

    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Records `path` (relative) as synced with this stamp; `file` is where it is here, to
    /// digest a small file (the previous digest serves while the stamp is the same).
    pub fn set(&mut self, path: PathBuf, stamp: Stamp, file: &Path) {
        let digest = match self.entries.get(&path) {
            Some(known) if known.stamp == stamp && known.digest.is_some() => known.digest,
            _ => digest_of(file, stamp.size),
        };
        self.entries.insert(path, Entry { stamp, digest });
    }

    /// Whether the file at `file` (here) is what the last sync left for `path`: the same stamp,
    /// or, for a small file, the same content.
    pub fn unchanged(&self, path: &Path, stamp: &Stamp, file: &Path) -> bool {
        match self.entries.get(path) {
            None => false,
            Some(entry) if entry.stamp == *stamp => true,
            Some(entry) => {
                entry.stamp.size == stamp.size
                    && entry.digest.is_some()
                    && entry.digest == digest_of(file, stamp.size)
            }
        }
    }

    pub fn remove(&mut self, path: &Path) {
        self.entries.remove(path);
    }

    /// Writes it atomically: a crash leaves the previous manifest, never half of one.
    pub fn save(&self) -> Result<()> {
        let mut bytes = HEADER.to_vec();
        for (path, Entry { stamp, digest }) in &self.entries {
            let digest = digest.map_or("-".to_string(), |d| {
                d.iter().map(|b| format!("{b:02x}")).collect()
            });
            write!(
                bytes,
                "{} {} {} {digest} ",
                stamp.size, stamp.mtime_secs, stamp.mtime_nanos
            )?;
            bytes.extend_from_slice(path.as_os_str().as_bytes());
            bytes.push(0);
        }
        let temporary = self.file.with_extension("new");
        std::fs::write(&temporary, &bytes)
            .and_then(|()| std::fs::rename(&temporary, &self.file))
            .with_context(|| format!("cannot save the sync manifest {}", self.file.display()))
    }
}

/// `SIZE SECS NANOS DIGEST|- PATH\0` records after the header; paths are raw bytes.
fn parse(bytes: &[u8]) -> Option<BTreeMap<PathBuf, Entry>> {
    let body = bytes.strip_prefix(HEADER)?;
    let mut entries = BTreeMap::new();
    for record in body.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let mut fields = record.splitn(5, |&b| b == b' ');
        let mut text = || std::str::from_utf8(fields.next()?).ok();
        let stamp = Stamp {
            size: text()?.parse().ok()?,
            mtime_secs: text()?.parse().ok()?,
            mtime_nanos: text()?.parse().ok()?,
        };
        let digest = match text()? {
            "-" => None,
            hex => Some(parse_hex(hex)?),
        };
        let path = PathBuf::from(OsString::from_vec(fields.next()?.to_vec()));
        entries.insert(path, Entry { stamp, digest });
    }
    Some(entries)
}

fn parse_hex(hex: &str) -> Option<Digest> {
    let mut digest = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// The SHA-256 of a small regular file (not through a symlink).
fn digest_of(file: &Path, size: u64) -> Option<Digest> {
    use sha2::Digest as _;
    let meta = file.symlink_metadata().ok()?;
    if !meta.is_file() || size > DIGEST_UP_TO {
        return None;
    }
    let content = std::fs::read(file).ok()?;
    Some(sha2::Sha256::digest(&content).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("manifest");
        let mut manifest = Manifest::load(&file);
        assert!(manifest.get(Path::new("a")).is_none(), "none yet: empty");
        let stamp = Stamp {
            size: 3,
            mtime_secs: -5,
            mtime_nanos: 999_999_999,
        };
        let odd = PathBuf::from("dir/with space;\n'quote\"/été");
        let content = dir.path().join("content");
        std::fs::write(&content, "abc").unwrap();
        manifest.set(odd.clone(), stamp, &content);
        manifest.set("b".into(), stamp, &content);
        manifest.remove(Path::new("b"));
        manifest.save().unwrap();
        let again = Manifest::load(&file);
        assert_eq!(again.get(&odd), manifest.get(&odd));
        assert!(
            again.get(&odd).unwrap().digest.is_some(),
            "small files get a digest"
        );
        assert_eq!(again.get(Path::new("b")), None);

        std::fs::write(&file, b"garbage").unwrap();
        assert!(Manifest::load(&file).entries.is_empty());
    }

    #[test]
    fn a_file_rewritten_with_the_same_content_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "same").unwrap();
        let mut manifest = Manifest::load(&dir.path().join("manifest"));
        let synced = Stamp::of(&file).unwrap();
        manifest.set("f".into(), synced, &file);
        let touched = Stamp {
            mtime_secs: synced.mtime_secs + 60,
            ..synced
        };
        assert!(manifest.unchanged(Path::new("f"), &touched, &file));
        std::fs::write(&file, "diff").unwrap();
        assert!(!manifest.unchanged(Path::new("f"), &touched, &file));
        assert!(!manifest.unchanged(Path::new("other"), &synced, &file));
    }

    #[test]
    fn a_listing_matches_to_the_second() {
        let stamp = Stamp {
            size: 7,
            mtime_secs: 1_795_323_249,
            mtime_nanos: 5,
        };
        assert!(stamp.matches_listing(7, "2026/11/22-04:54:09"));
        assert!(!stamp.matches_listing(8, "2026/11/22-04:54:09"));
        assert!(!stamp.matches_listing(7, "2026/11/22-04:54:10"));
    }
}
