//! A big new file goes up in parts, over several channels at once, rather than in rsync's one:
//! the instance's sshd gives each channel a window of its own (OpenSSH's 2 MiB), which caps one
//! channel near 210 Mbit/s at 80 ms whatever the link carries. Each part is written in place
//! into a temporary file on the instance; once all are there, the file gets this side's mode
//! and time and is linked into place, only where nothing is by then, as `--ignore-existing`
//! would (`remote::parts`). rsync, after, finds it there. A file that changed here meanwhile,
//! or whose parts did not all arrive, is left to rsync.

use std::io::SeekFrom;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Rsync;
use super::itemize::{Item, Kind, rsync_time};
use super::manifest::Stamp;
use super::options::{TEMP_DIR, Way};
use super::temp::LocalTemp;
use crate::remote::parts::{PART_BLOCK, Placed, part_command, place_command};
use crate::remote::shell_quote;

/// Files from this size go up in parts: below it, the parts' one more round trip costs about
/// what they save.
const PARTED_FROM: u64 = 16 << 20;
/// Channels at once: each counts as one of the connection's sessions for sshd (`MaxSessions`,
/// ten), beside those a run keeps opened ahead.
const CHANNELS: u64 = 4;

/// The most entries a push into a new directory looks at for big files: a tree bigger than
/// that (a dataset the rules may keep here) goes up through rsync alone, which lists it anyway.
const WALKED_AT_MOST: usize = 50_000;

/// Whether an item the push sends goes up in parts.
pub(super) fn in_parts(item: &Item) -> bool {
    item.kind == Kind::File && item.size >= PARTED_FROM
}

/// The parts of a file of `size` bytes, one per channel, each starting at a whole block.
fn ranges(size: u64) -> Vec<Range<u64>> {
    let part = size.div_ceil(CHANNELS).div_ceil(PART_BLOCK).max(1) * PART_BLOCK;
    (0..size.div_ceil(part))
        .map(|i| i * part..((i + 1) * part).min(size))
        .collect()
}

impl Rsync<'_> {
    /// The files of a push into a new directory that go up in parts: big regular files here,
    /// as a walk finds them, that the push's rules let up. None when they cannot be judged:
    /// rsync sends all.
    pub(super) async fn big_files_here(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut budget = WALKED_AT_MOST;
        walk(self.local_dir, Path::new(""), &mut found, &mut budget);
        if found.is_empty() || budget == 0 {
            return Vec::new();
        }
        let judged = async {
            let temp = LocalTemp::take(self.local_dir)?;
            let names: Vec<&Path> = found.iter().map(PathBuf::as_path).collect();
            self.judge(&names, Way::Push, temp.path()).await
        };
        match judged.await {
            Ok(judged) => (found.into_iter())
                .filter(|path| judged.hidden_by(path).is_none() && judged.seen(path))
                .collect(),
            Err(e) => {
                tracing::debug!("big files left to rsync: {e:#}");
                Vec::new()
            }
        }
    }

    /// Sends each of `paths` in parts through the instance's temporary directory `temp`, one
    /// file after another; the items placed. What could not be is left to rsync.
    pub(super) async fn send_in_parts(&self, paths: &[PathBuf], temp: &str) -> Vec<Item> {
        let mut placed = Vec::new();
        for path in paths {
            match self.send_file_in_parts(path, temp).await {
                Ok(Some(item)) => placed.push(item),
                Ok(None) => tracing::debug!("{} left to rsync", path.display()),
                Err(e) => tracing::debug!("{} left to rsync: {e:#}", path.display()),
            }
        }
        placed
    }

    async fn send_file_in_parts(&self, path: &Path, temp: &str) -> Result<Option<Item>> {
        let local = self.local_dir.join(path);
        let name = path.to_str().context("not a UTF-8 name")?;
        let meta = local.symlink_metadata()?;
        anyhow::ensure!(meta.is_file(), "no longer a file");
        let before = Stamp::of(&local);
        let file = format!("{temp}/parts-{:016x}", rand::random::<u64>());
        let ranges = ranges(meta.len());
        tracing::debug!("{name}: in {} parts", ranges.len());
        let parts = ranges.into_iter().map(|range| {
            let what = format!("the part of {name} from byte {}", range.start);
            self.send_part(&local, &file, range, what)
        });
        if let Err(e) = futures_util::future::try_join_all(parts).await {
            let _ = self
                .session
                .run_captured(&format!("rm -f {}", shell_quote(&file)))
                .await;
            return Err(e);
        }
        let dir = self.remote_dir.for_rsync();
        let placed = Placed {
            path: name,
            parent: path
                .parent()
                .and_then(Path::to_str)
                .filter(|p| !p.is_empty()),
            size: meta.len(),
            mode: meta.permissions().mode(),
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec() as u32,
        };
        let place = place_command(&dir, &file, &placed);
        // Changed while it went up: rsync sends the new version.
        if Stamp::of(&local) != before {
            let _ = self
                .session
                .run_captured(&format!("rm -f {}", shell_quote(&file)))
                .await;
            return Ok(None);
        }
        let answer = self.session.run_captured(&place).await?;
        Ok((answer.trim() == "placed").then(|| {
            Item::sent(
                Kind::File,
                meta.len(),
                rsync_time(meta.mtime()),
                path.into(),
            )
        }))
    }

    async fn send_part(
        &self,
        local: &Path,
        file: &str,
        range: Range<u64>,
        what: String,
    ) -> Result<()> {
        let mut input = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot open {}", local.display()))?;
        input.seek(SeekFrom::Start(range.start)).await?;
        let command = part_command(file, range.start);
        let input = input.take(range.end - range.start);
        self.session.run_fed_from(&what, &command, input).await?;
        Ok(())
    }
}

/// Adds the regular files of at least `PARTED_FROM` bytes under `dir`/`under` to `found`,
/// relative to `dir`, looking at `budget` entries at most (it is left at 0 when there were
/// more); links are not followed, rsync's temporary files not looked at.
fn walk(dir: &Path, under: &Path, found: &mut Vec<PathBuf>, budget: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir.join(under)) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = under.join(entry.file_name());
        match entry.file_type() {
            Ok(kind) if kind.is_dir() && path != Path::new(TEMP_DIR) => {
                walk(dir, &path, found, budget)
            }
            Ok(kind)
                if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() >= PARTED_FROM) =>
            {
                found.push(path)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_finds_big_regular_files_only_and_gives_up_on_a_huge_tree() {
        let dir = tempfile::tempdir().unwrap();
        let big = |relative: &str| {
            let path = dir.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            // Sparse: no disk used.
            std::fs::File::create(&path)
                .unwrap()
                .set_len(PARTED_FROM)
                .unwrap();
        };
        big("top.bin");
        big("data/deep/weights.bin");
        big(&format!("{TEMP_DIR}/half.bin"));
        std::fs::write(dir.path().join("data/small.txt"), "small").unwrap();
        std::os::unix::fs::symlink("top.bin", dir.path().join("link.bin")).unwrap();
        std::os::unix::fs::symlink("data", dir.path().join("linked-dir")).unwrap();

        let (mut found, mut budget) = (Vec::new(), 100);
        walk(dir.path(), Path::new(""), &mut found, &mut budget);
        found.sort();
        assert_eq!(
            found,
            [Path::new("data/deep/weights.bin"), Path::new("top.bin")]
        );
        assert!(budget > 0);

        let (mut found, mut budget) = (Vec::new(), 3);
        walk(dir.path(), Path::new(""), &mut found, &mut budget);
        assert_eq!(budget, 0, "more entries than it may look at");
    }

    #[test]
    fn a_file_is_cut_in_one_part_per_channel_at_whole_blocks() {
        let mib = PART_BLOCK;
        assert_eq!(
            ranges(300 * mib),
            [
                0..75 * mib,
                75 * mib..150 * mib,
                150 * mib..225 * mib,
                225 * mib..300 * mib
            ]
        );
        assert_eq!(
            ranges(16 * mib + 1),
            [
                0..5 * mib,
                5 * mib..10 * mib,
                10 * mib..15 * mib,
                15 * mib..16 * mib + 1
            ]
        );
        assert_eq!(ranges(2 * mib), [0..mib, mib..2 * mib]);
        let odd = ranges(123_456_789);
        assert_eq!(odd.first().unwrap().start, 0);
        assert_eq!(odd.last().unwrap().end, 123_456_789);
        assert!(
            odd.windows(2)
                .all(|w| w[0].end == w[1].start && w[1].start % mib == 0)
        );
    }
}
