//! A big new file goes up in parts, over several channels at once, rather than in rsync's one:
//! the instance's sshd gives each channel a window of its own (OpenSSH's 2 MiB), which caps one
//! channel near 210 Mbit/s at 80 ms whatever the link carries. Each part is written in place
//! into a temporary file on the instance; once all are there, the file gets this side's mode
//! and time and is linked into place, only where nothing is by then, as `--ignore-existing`
//! would (`remote::parts`). rsync, after, finds it there. A file that changed here meanwhile,
//! or whose parts did not all arrive, is left to rsync.

use std::fs::Metadata;
use std::io::SeekFrom;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::itemize::{Item, Kind, rsync_time};
use super::manifest::Stamp;
use super::options::{TEMP_DIR, Way};
use super::{LISTING, PUSH_OPTIONS, Rsync};
use crate::remote::parts::{PART_BLOCK, PARTS_PREFIX, Placed, part_command, place_command};
use crate::remote::shell_quote;
use crate::ssh::Session;

/// Files from this size go up in parts: below it, the parts' one more round trip costs about
/// what they save.
const PARTED_FROM: u64 = 16 << 20;
/// Channels at once: each counts as one of the connection's sessions for sshd (`MaxSessions`,
/// ten), beside those a run keeps opened ahead.
const CHANNELS: u64 = 4;
/// The most entries a push into a new directory glances at for a big file before it asks
/// rsync, which applies the rules (and skips the directories they leave out).
const GLANCED_AT_MOST: usize = 20_000;

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
    /// For a push into a new directory: the big files here that the push sends, in parts; the
    /// items placed. Nothing when there are none, or they cannot be listed: rsync sends all.
    pub(super) async fn send_big_files_here(&self) -> Vec<Item> {
        let dir = self.local_dir.to_path_buf();
        let glance = tokio::task::spawn_blocking(move || may_hold_big(&dir, GLANCED_AT_MOST));
        if !glance.await.unwrap_or(true) {
            return Vec::new();
        }
        // As the push itself sees the tree: its rules, its links.
        let mut rsync = self.command(Some(Way::Push));
        rsync
            .args(PUSH_OPTIONS)
            .args(LISTING)
            .arg("-i")
            .arg(format!("--min-size={PARTED_FROM}"))
            .arg(self.local_root())
            .arg(super::nowhere());
        let big: Vec<PathBuf> = match self.invoke(rsync, None).await {
            Ok(listed) if listed.failure.is_none() => (listed.items.into_iter())
                .filter(in_parts)
                .map(|item| item.path)
                .collect(),
            Ok(listed) => return left_to_rsync(listed.failure.unwrap_or_default()),
            Err(e) => return left_to_rsync(format!("{e:#}")),
        };
        if big.is_empty() {
            return Vec::new();
        }
        match self.remote_temp().await {
            Ok(temp) => self.send_in_parts(&big, &temp).await,
            Err(e) => left_to_rsync(format!("{e:#}")),
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
        ensure!(meta.is_file(), "no longer a file");
        // `touch -d @S.N` reads a time before 1970 otherwise than it is kept.
        ensure!(meta.mtime() >= 0, "a time before 1970");
        let sampled = local.clone();
        let compresses = tokio::task::spawn_blocking(move || compresses_well(&sampled)).await?;
        ensure!(
            !compresses?,
            "it compresses well: rsync's --compress carries it better"
        );
        let file = RemoteFile {
            path: format!("{temp}/{PARTS_PREFIX}{:016x}", rand::random::<u64>()),
            session: Some(self.session.clone()),
        };
        let ranges = ranges(meta.len());
        tracing::debug!("{name}: in {} parts", ranges.len());
        let parts = ranges.into_iter().map(|range| {
            let what = format!("the part of {name} from byte {}", range.start);
            send_part(&self.session, &local, &meta, &file.path, range, what)
        });
        futures_util::future::try_join_all(parts).await?;
        // Changed while it went up: rsync sends the new version.
        if Stamp::of(&local) != Some(Stamp::of_meta(&meta)) {
            return Ok(None);
        }
        let placed = Placed {
            path: name,
            size: meta.len(),
            mode: meta.permissions().mode(),
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec() as u32,
        };
        let dir = self.remote_dir.for_rsync();
        let answer = (self.session)
            .run_captured(&place_command(&dir, &file.path, &placed))
            .await?;
        file.gone();
        Ok((answer.trim() == "placed").then(|| {
            Item::sent(
                Kind::File,
                meta.len(),
                rsync_time(meta.mtime()),
                path.into(),
            )
        }))
    }
}

/// Sends `range` of `local` (the file `meta` describes: one put in its place meanwhile is not
/// mixed in) into `file` on the instance.
async fn send_part(
    session: &Session,
    local: &Path,
    meta: &Metadata,
    file: &str,
    range: Range<u64>,
    what: String,
) -> Result<()> {
    let mut input = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("cannot open {}", local.display()))?;
    let opened = input.metadata().await?;
    ensure!(
        (opened.dev(), opened.ino()) == (meta.dev(), meta.ino()),
        "replaced meanwhile"
    );
    input.seek(SeekFrom::Start(range.start)).await?;
    let input = input.take(range.end - range.start);
    session
        .run_fed_from(&what, &part_command(file, &range), input)
        .await?;
    Ok(())
}

/// The temporary file on the instance, removed unless it is `gone` (removed by the command
/// that placed it). A part cut short removes it on the instance itself (`part_command`); this
/// is for parts that all arrived, then a file that changed here or a transfer cancelled.
struct RemoteFile {
    path: String,
    /// Where to remove it; `None` once it is gone.
    session: Option<Arc<Session>>,
}

impl RemoteFile {
    fn gone(mut self) {
        self.session = None;
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let remove = format!("rm -f {}", shell_quote(&self.path));
            tokio::spawn(async move {
                let _ = session.run_captured(&remove).await;
            });
        }
    }
}

/// How much of a big file is compressed to judge it.
const SAMPLE: u64 = 1 << 20;

/// Whether a sample from the middle of `file` shrinks by a quarter or more at zlib's fastest:
/// the parts go up as they are (russh compresses nothing), so over a slow link one rsync that
/// compresses them carries such a file faster than four channels.
fn compresses_well(file: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, Write};
    let mut input = std::fs::File::open(file)?;
    let size = input.metadata()?.len();
    input.seek(SeekFrom::Start(size.saturating_sub(SAMPLE) / 2))?;
    let mut sample = Vec::new();
    input.take(SAMPLE).read_to_end(&mut sample)?;
    let mut compressed =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    compressed.write_all(&sample)?;
    Ok(compressed.finish()?.len() * 4 <= sample.len() * 3)
}

fn left_to_rsync(why: String) -> Vec<Item> {
    tracing::debug!("big files left to rsync: {why}");
    Vec::new()
}

/// Whether the tree under `dir` may hold a regular file of at least `PARTED_FROM` bytes: it
/// has one, or more than `budget` entries to look at. Links are not followed, rsync's
/// temporary files (at the top) not looked at.
fn may_hold_big(dir: &Path, budget: usize) -> bool {
    let mut left = budget;
    let rsyncs_own = dir.join(TEMP_DIR);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(still) = left.checked_sub(1) else {
                return true;
            };
            left = still;
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && entry.path() != rsyncs_own => dirs.push(entry.path()),
                Ok(kind)
                    if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() >= PARTED_FROM) =>
                {
                    return true;
                }
                _ => {}
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glance_finds_a_big_regular_file_and_gives_up_on_a_huge_tree() {
        let dir = tempfile::tempdir().unwrap();
        let file = |relative: &str, size: u64| {
            let path = dir.path().join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            // Sparse: no disk used.
            std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        };
        let link = |target: &str, relative: &str| {
            std::os::unix::fs::symlink(dir.path().join(target), dir.path().join(relative)).unwrap()
        };
        file("elsewhere/big.bin", PARTED_FROM);
        file("project/small.txt", 5);
        file(&format!("project/{TEMP_DIR}/half.bin"), PARTED_FROM);
        link("elsewhere/big.bin", "project/big.bin");
        link("elsewhere", "project/elsewhere");
        let project = dir.path().join("project");
        assert!(!may_hold_big(&project, 100), "links, rsync's own files");
        file(&format!("project/deep/{TEMP_DIR}/weights.bin"), PARTED_FROM);
        assert!(
            may_hold_big(&project, 100),
            "rsync's own directory is at the top only"
        );
        std::fs::remove_dir_all(project.join("deep")).unwrap();
        file("project/deep/er/weights.bin", PARTED_FROM - 1);
        assert!(!may_hold_big(&project, 100));
        file("project/deep/er/weights.bin", PARTED_FROM);
        assert!(may_hold_big(&project, 100));
        file("project/deep/er/weights.bin", 1);
        assert!(
            may_hold_big(&project, 3),
            "more entries than it may look at"
        );
    }

    #[test]
    fn a_file_that_compresses_well_is_left_to_rsync() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("data.csv");
        let rows: String = (0..200_000)
            .map(|i| format!("{i},{},label-{}\n", i * 7, i % 10))
            .collect();
        std::fs::write(&csv, rows).unwrap();
        assert!(compresses_well(&csv).unwrap());
        let weights = dir.path().join("weights.bin");
        let mut state = 7u64;
        let noise: Vec<u8> = (0..3 * SAMPLE)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 56) as u8
            })
            .collect();
        std::fs::write(&weights, noise).unwrap();
        assert!(!compresses_well(&weights).unwrap());
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
