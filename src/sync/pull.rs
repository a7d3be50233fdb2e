//! The pull: what the instance changed since the last sync comes home, decided file by file
//! against the manifest (see the module's summary in `sync`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::itemize::{Item, Kind};
use super::manifest::Stamp;
use super::{Conflict, Manifest, Rsync};

/// Links that come home: as links, but not those that lead outside the tree (a compromised or
/// careless instance could point one at the laptop's own files).
const HOME_LINKS: [&str; 2] = ["--links", "--safe-links"];

/// Modes of files that come home: an existing file keeps its own (`--no-perms`); a new one
/// gets rw for everyone, plus x where the remote file has one, masked by the local umask.
const HOME_MODES: [&str; 2] = ["--no-perms", "--chmod=ugo=rwX"];

enum Decision {
    Fetch,
    KeepLocal,
    KeepBoth,
}

impl Rsync<'_> {
    /// Brings home what the instance changed since the last sync, keeping both versions of
    /// files changed on both sides (added to `conflicts`). Fails, after bringing home what it
    /// could, if anything could not come home.
    pub async fn pull(&self, manifest: &mut Manifest, conflicts: &mut Vec<Conflict>) -> Result<()> {
        // What differs, without changing anything.
        let mut rsync = self.command();
        rsync
            .args(["--recursive", "--times", "--no-perms"])
            .args(HOME_LINKS)
            .args(["--dry-run", "-i"])
            .arg(self.remote_root(Path::new("")))
            .arg(self.local_root());
        let listed = self.invoke(rsync, None).await?;
        let mut failures: Vec<String> = listed.failure.into_iter().collect();

        let mut fetch = Vec::new();
        let mut both_changed = Vec::new();
        for item in listed.items.into_iter().filter(Item::transferred) {
            match item.kind {
                Kind::Dir => fetch.push(item),
                Kind::File | Kind::Link => match self.decide(&item, manifest) {
                    Decision::Fetch => fetch.push(item),
                    Decision::KeepBoth => both_changed.push(item),
                    Decision::KeepLocal => {}
                },
                Kind::Other => {}
            }
        }

        if !fetch.is_empty() {
            failures.extend(self.fetch(&fetch, manifest).await?);
        }
        for item in both_changed {
            failures.extend(self.keep_both(item, manifest, conflicts).await?);
        }
        manifest.save()?;
        if !failures.is_empty() {
            bail!(
                "not everything came home from the instance:\n{}",
                failures.join("\n")
            );
        }
        Ok(())
    }

    /// Brings `items` home; what rsync said went wrong, if anything did.
    async fn fetch(&self, items: &[Item], manifest: &mut Manifest) -> Result<Option<String>> {
        let list: Vec<u8> = items
            .iter()
            .flat_map(|item| item.path.as_os_str().as_bytes().iter().chain([&0]))
            .copied()
            .collect();
        let mut rsync = self.command();
        rsync
            .args(["--times", "--dirs"])
            .args(HOME_LINKS)
            .args(HOME_MODES)
            .args(["-i", "--files-from=-", "--from0"])
            .arg(self.remote_root(Path::new("")))
            .arg(self.local_root());
        let fetched = self.invoke(rsync, Some(list)).await?;
        for item in &fetched.items {
            self.list(item);
            let file = self.local_dir.join(&item.path);
            if let Some(stamp) = Stamp::of(&file)
                && matches!(item.kind, Kind::File | Kind::Link)
                && stamp.matches_listing(item.size, &item.mtime)
            {
                manifest.set(item.path.clone(), stamp, &file);
            }
        }
        Ok(fetched.failure)
    }

    /// Saves the instance's version of a file changed on both sides beside the local one.
    async fn keep_both(
        &self,
        item: Item,
        manifest: &mut Manifest,
        conflicts: &mut Vec<Conflict>,
    ) -> Result<Option<String>> {
        let saved_as = beside(self.local_dir, &item.path, self.instance_id);
        let mut rsync = self.command();
        rsync
            .arg("--times")
            .args(HOME_LINKS)
            .args(HOME_MODES)
            .arg(self.remote_root(&item.path))
            .arg(self.local_dir.join(&saved_as));
        let copied = self.invoke(rsync, None).await?;
        if copied.failure.is_none() {
            // The instance's version is home now: the local one may go up next time.
            let saved = self.local_dir.join(&saved_as);
            if let Some(stamp) = Stamp::of(&saved) {
                manifest.set(item.path.clone(), stamp, &saved);
            }
            conflicts.push(Conflict {
                path: item.path,
                saved_as,
            });
        }
        Ok(copied.failure)
    }

    fn decide(&self, item: &Item, manifest: &Manifest) -> Decision {
        let file = self.local_dir.join(&item.path);
        let remote_unchanged = manifest
            .get(&item.path)
            .is_some_and(|synced| synced.stamp.matches_listing(item.size, &item.mtime));
        match Stamp::of(&file) {
            // Deleted here since the last sync, and untouched there: stays deleted.
            None if remote_unchanged => Decision::KeepLocal,
            None => Decision::Fetch,
            Some(local) if manifest.unchanged(&item.path, &local, &file) => Decision::Fetch,
            Some(_) if remote_unchanged => Decision::KeepLocal,
            Some(_) => Decision::KeepBoth,
        }
    }
}

/// `results.csv` → `results.from-i-0123.csv` (then `-2`, `-3`… if that exists already).
fn beside(local_dir: &Path, path: &Path, instance_id: &str) -> PathBuf {
    let name = path.file_name().unwrap_or(OsStr::new("file"));
    let bytes = name.as_bytes();
    // A leading dot starts a hidden name, not an extension.
    let split = bytes
        .iter()
        .rposition(|&b| b == b'.')
        .filter(|&at| at > 0)
        .unwrap_or(bytes.len());
    let (stem, extension) = bytes.split_at(split);
    (1..)
        .map(|n| {
            let mut side = stem.to_vec();
            side.extend_from_slice(format!(".from-{instance_id}").as_bytes());
            if n > 1 {
                side.extend_from_slice(format!("-{n}").as_bytes());
            }
            side.extend_from_slice(extension);
            path.with_file_name(OsStr::from_bytes(&side))
        })
        .find(|candidate| local_dir.join(candidate).symlink_metadata().is_err())
        .expect("some name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_copies_say_where_they_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let side = beside(dir.path(), Path::new("out/results.csv"), "i-0abc");
        assert_eq!(side, Path::new("out/results.from-i-0abc.csv"));
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join(&side), "taken").unwrap();
        assert_eq!(
            beside(dir.path(), Path::new("out/results.csv"), "i-0abc"),
            Path::new("out/results.from-i-0abc-2.csv")
        );
        assert_eq!(
            beside(dir.path(), Path::new(".env"), "i-1"),
            Path::new(".env.from-i-1")
        );
    }
}
