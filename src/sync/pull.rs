//! The pull: what the instance changed since the last sync comes home, decided path by path
//! against the manifest and what this side holds (see the module's summary in `sync`). Where
//! the two sides hold different kinds of things, both are kept: a directory there beside a file
//! or link here comes home whole under a name of its own, and nothing is ever written through a
//! link of this side.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::itemize::{Item, Kind};
use super::manifest::Stamp;
use super::options::Way;
use super::pull_plan::{kind_of, plan};
use super::report::{Conflict, Pulled, Report};
use super::temp::{LocalTemp, temp_dir_option};
use super::{LISTING, Manifest, Rsync};
use crate::remote::pulled::PullMark;

/// Links that come home: as links, but not those that lead outside the tree (a compromised or
/// careless instance could point one at the laptop's own files).
const HOME_LINKS: [&str; 2] = ["--links", "--safe-links"];

/// Modes of files that come home: an existing file keeps its own (`--no-perms`); a new one
/// gets rw for everyone, plus x where the remote file has one, masked by the local umask.
const HOME_MODES: [&str; 2] = ["--no-perms", "--chmod=ugo=rwX"];

impl Rsync<'_> {
    /// Brings home what the instance changed since the last sync, keeping both versions where
    /// both sides changed (added to `report`, with what the rules keep there). Fails, after
    /// bringing home what it could, if anything could not come home.
    /// With `mark`, the instance stamps it as the listing starts (see `remote::pulled`).
    pub async fn pull(
        &self,
        manifest: &mut Manifest,
        report: &mut Report,
        mark: Option<&PullMark>,
    ) -> Result<Pulled> {
        let temp = LocalTemp::take(self.local_dir)?;
        let temp = temp.path();
        // What differs, without changing anything; what the rules hide, and the unsafe links.
        let mut rsync = self.command(Some(Way::Pull));
        // Every file is listed (--ignore-times), and the manifest decides what changed: rsync's
        // own quick check takes a file of the same size and second here for the same, which
        // two nodes writing one path at once (or both sides in one second) are not.
        rsync
            .args(["--recursive", "--times", "--no-perms", "--ignore-times"])
            .args(HOME_LINKS)
            .args(LISTING)
            .args(["-i", "--info=NAME1", "-M--debug=FILTER1"]);
        if let Some(mark) = mark {
            rsync.arg(format!("--rsync-path={}", mark.stamp_then_rsync()));
        }
        rsync
            .arg(self.remote_root(Path::new("")))
            .arg(self.local_root());
        let listed = self.invoke(rsync, None).await?;
        let mut failures: Vec<String> = listed.failure.clone().into_iter().collect();
        self.find_held_back(&listed, manifest, report).await?;

        let local = |path: &Path| self.local_dir.join(path);
        let plan = plan(
            &listed.items,
            |path| kind_of(&local(path)),
            |item| self.unchanged_here(item, manifest),
            |item| {
                (manifest.get(&item.path))
                    .is_some_and(|synced| synced.stamp.matches_listing(item.size, &item.mtime))
            },
        );
        let mut pulled = Pulled::default();
        if !plan.fetch.is_empty() {
            let paths: Vec<&Path> = plan.fetch.iter().map(|item| item.path.as_path()).collect();
            let fetched = self.fetch(&paths, self.local_dir, temp).await?;
            pulled = self.noted_home(&fetched.items, manifest);
            failures.extend(fetched.failure);
        }
        for item in plan.both {
            failures.extend(self.keep_both(item, temp, manifest, report).await?);
        }
        for tree in plan.trees {
            failures.extend(self.keep_both_tree(&tree, temp, manifest, report).await?);
        }
        settle(manifest, &failures)?;
        Ok(pulled)
    }

    /// Whether this side's file at `item`'s path is what the last sync left (the manifest).
    pub(super) fn unchanged_here(&self, item: &Item, manifest: &Manifest) -> bool {
        let local = self.local_dir.join(&item.path);
        Stamp::of(&local).is_some_and(|stamp| manifest.unchanged(&item.path, &stamp, &local))
    }

    /// Brings `paths` home into `into` (this directory, or a staging one).
    pub(super) async fn fetch(
        &self,
        paths: &[&Path],
        into: &Path,
        temp: &Path,
    ) -> Result<super::Outcome> {
        let list = super::nul_separated(paths.iter().copied());
        let mut rsync = self.command(Some(Way::Pull));
        rsync
            .args(["--times", "--dirs"])
            .args(HOME_LINKS)
            .args(HOME_MODES)
            .arg(temp_dir_option(temp))
            .args(["-i", "--files-from=-", "--from0"])
            .arg(self.remote_root(Path::new("")))
            .arg(super::contents_of(into));
        self.invoke(rsync, Some(list)).await
    }

    /// Records in the manifest what a fetch brought home (`items`, in this directory), and
    /// counts it.
    pub(super) fn noted_home(&self, items: &[Item], manifest: &mut Manifest) -> Pulled {
        let mut pulled = Pulled::default();
        for item in items {
            self.list(item);
            self.note_home(manifest, item, &item.path);
            if item.kind != Kind::Dir {
                pulled.add(Pulled {
                    files: 1,
                    bytes: item.size,
                });
            }
        }
        pulled
    }

    /// Records in the manifest that `item` (as the listing gave it) is home at `home`, if what
    /// is there is what rsync wrote: its time, and at least its size (a file the instance was
    /// still appending to comes home longer than listed).
    fn note_home(&self, manifest: &mut Manifest, item: &Item, home: &Path) {
        let file = self.local_dir.join(home);
        let Some(stamp) = Stamp::of(&file) else {
            return;
        };
        match item.kind {
            _ if !stamp.written_at(&item.mtime) => {}
            Kind::File | Kind::Link if stamp.size >= item.size => {
                manifest.set(item.path.clone(), stamp, &file)
            }
            // A directory's size is its file system's: the instance's, to compare with its next
            // listing.
            Kind::Dir => {
                let listed = Stamp {
                    size: item.size,
                    ..stamp
                };
                manifest.set(item.path.clone(), listed, &file)
            }
            _ => {}
        }
    }

    /// Saves the instance's version of a path changed on both sides beside the local one.
    pub(super) async fn keep_both(
        &self,
        item: &Item,
        temp: &Path,
        manifest: &mut Manifest,
        report: &mut Report,
    ) -> Result<Option<String>> {
        let saved_as = beside(self.local_dir, &item.path, self.instance_id);
        let mut rsync = self.command(Some(Way::Pull));
        rsync
            .arg("--times")
            .args(HOME_LINKS)
            .args(HOME_MODES)
            .arg(temp_dir_option(temp))
            .arg(self.remote_root(&item.path))
            .arg(self.local_dir.join(&saved_as));
        let copied = self.invoke(rsync, None).await?;
        if copied.failure.is_none() {
            // The instance's version is home now: the local one may go up next time.
            self.note_home(manifest, item, &saved_as);
            report.conflicts.push(Conflict {
                path: item.path.clone(),
                saved_as,
            });
        }
        Ok(copied.failure)
    }

    /// Brings home a directory of the instance's where this side has something else: whole,
    /// through a staging directory, then beside the local one.
    async fn keep_both_tree(
        &self,
        tree: &[&Item],
        temp: &Path,
        manifest: &mut Manifest,
        report: &mut Report,
    ) -> Result<Option<String>> {
        let root = &tree[0].path;
        // In this pull's own temporary directory, one tree at a time.
        let staging = temp.join("tree");
        let paths: Vec<&Path> = tree.iter().map(|item| item.path.as_path()).collect();
        let fetched = self.fetch(&paths, &staging, temp).await?;
        let saved_as = beside(self.local_dir, root, self.instance_id);
        let moved = std::fs::rename(staging.join(root), self.local_dir.join(&saved_as));
        let _ = std::fs::remove_dir_all(&staging);
        if let Err(e) = moved {
            let failure = fetched.failure.unwrap_or_default();
            return Ok(Some(format!(
                "{failure}\ncannot save {}: {e}",
                saved_as.display()
            )));
        }
        for item in &fetched.items {
            let inside = item.path.strip_prefix(root).unwrap_or(Path::new(""));
            self.note_home(manifest, item, &saved_as.join(inside));
        }
        report.conflicts.push(Conflict {
            path: root.clone(),
            saved_as,
        });
        Ok(fetched.failure)
    }
}

/// Records what came home; then fails, after all, if anything could not.
pub(super) fn settle(manifest: &Manifest, failures: &[String]) -> Result<()> {
    manifest.save()?;
    if !failures.is_empty() {
        bail!(
            "not everything came home from the instance:\n{}",
            failures.join("\n")
        );
    }
    Ok(())
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
