//! What the last sync left identical on both sides, per instance: for each path, its size and
//! modification time (to the nanosecond) at that moment. A side whose file no longer matches
//! its entry changed it since; the pull decides by that, not by which timestamp is newer.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::itemize::rsync_time;

const HEADER: &[u8] = b"ssh-ec2 manifest 1\n";

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
        let meta = path.symlink_metadata().ok()?;
        Some(Stamp {
            size: meta.len(),
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec() as u32,
        })
    }

    /// Whether rsync's listing of a file (size, `%M` time in whole seconds) describes this stamp.
    pub fn matches_listing(&self, size: u64, mtime: &str) -> bool {
        self.size == size && rsync_time(self.mtime_secs) == mtime
    }
}

pub struct Manifest {
    file: PathBuf,
    entries: BTreeMap<PathBuf, Stamp>,
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

    pub fn get(&self, path: &Path) -> Option<&Stamp> {
        self.entries.get(path)
    }

    pub fn set(&mut self, path: PathBuf, stamp: Stamp) {
        self.entries.insert(path, stamp);
    }

    pub fn remove(&mut self, path: &Path) {
        self.entries.remove(path);
    }

    /// Writes it atomically: a crash leaves the previous manifest, never half of one.
    pub fn save(&self) -> Result<()> {
        let mut bytes = HEADER.to_vec();
        for (path, stamp) in &self.entries {
            write!(
                bytes,
                "{} {} {} ",
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

/// `SIZE SECS NANOS PATH\0` records after the header; paths are raw bytes.
fn parse(bytes: &[u8]) -> Option<BTreeMap<PathBuf, Stamp>> {
    let body = bytes.strip_prefix(HEADER)?;
    let mut entries = BTreeMap::new();
    for record in body.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let mut fields = record.splitn(4, |&b| b == b' ');
        let mut number = || std::str::from_utf8(fields.next()?).ok();
        let size = number()?.parse().ok()?;
        let mtime_secs = number()?.parse().ok()?;
        let mtime_nanos = number()?.parse().ok()?;
        let path = PathBuf::from(OsString::from_vec(fields.next()?.to_vec()));
        entries.insert(
            path,
            Stamp {
                size,
                mtime_secs,
                mtime_nanos,
            },
        );
    }
    Some(entries)
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
        manifest.set(odd.clone(), stamp);
        manifest.set("b".into(), stamp);
        manifest.remove(Path::new("b"));
        manifest.save().unwrap();
        let again = Manifest::load(&file);
        assert_eq!(again.get(&odd), Some(&stamp));
        assert_eq!(again.get(Path::new("b")), None);

        std::fs::write(&file, b"garbage").unwrap();
        assert!(Manifest::load(&file).entries.is_empty());
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
