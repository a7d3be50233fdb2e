//! The push: what changed here since the last sync goes up, and nothing the instance changed
//! since is replaced, since a job may be writing it (a log it appends to would go on into a
//! file nobody can see). Each side is listed first: this one as rsync compares it with the
//! instance, the instance's as it stands. A path new to the instance goes up only if nothing
//! appeared there meanwhile (`--ignore-existing`); a path of another kind there stays as it is
//! (the pull keeps both). A big new file goes up first, in parts over several channels
//! (`parts`). Then the manifest records what both sides hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Result, bail};

use super::itemize::{Item, Kind};
use super::manifest::Stamp;
use super::options::{Options, Way, is_version_control, secret_patterns};
use super::parts::in_parts;
use super::{LISTING, Manifest, Outcome, PUSH_OPTIONS, Rsync, nowhere};
use crate::printer::escape_path;
use crate::remote::pulled::PullMark;

/// The remote directory a push goes into.
pub enum PushInto<'a> {
    /// One that was there.
    Existing,
    /// One this run made, which holds nothing yet; stamped as the push starts, when `stamp`
    /// is given (see `remote::pulled`).
    New { stamp: Option<&'a PullMark> },
}

impl Rsync<'_> {
    /// Sends what changed here since the last sync, and records what both sides now hold. What
    /// it sent is returned (the paths, relative to the directory): a cluster's head copies them on
    /// to its other nodes.
    pub async fn push(&self, manifest: &mut Manifest, into: PushInto<'_>) -> Result<Vec<PathBuf>> {
        let started = SystemTime::now();
        if let PushInto::New { stamp } = into {
            return self.push_into_new(manifest, started, stamp).await;
        }
        // Every item here (the identical ones too: -ii), as rsync compares it with the instance.
        let mut here = self.command(Some(Way::Push));
        here.args(PUSH_OPTIONS)
            .args(LISTING)
            .args(["-ii", "--debug=FILTER1"])
            .arg(self.local_root())
            .arg(self.remote_root(Path::new("")));
        // Every item there, as it stands: listed into a directory that is never made.
        let mut there = self.command(Some(Way::Push));
        there
            .args(["--recursive", "--links", "--times", "--dry-run", "-i"])
            .arg(self.remote_root(Path::new("")))
            .arg(nowhere());
        // At once: each is rsync's dozen round trips to the instance, and neither changes
        // anything there.
        let (temp, here, there) = tokio::try_join!(
            self.remote_temp(),
            self.invoke(here, None),
            self.invoke(there, None)
        )?;
        if let Some(failure) = (here.failure.as_ref()).or(there.failure.as_ref()) {
            // The manifest stays as it was: what the instance holds now is not known.
            bail!("could not sync this directory to the instance: {failure}");
        }
        let there: HashMap<&Path, &Item> = (there.items.iter())
            .map(|item| (item.path.as_path(), item))
            .collect();
        let local = |path: &Path| self.local_dir.join(path);
        let plan = plan(
            &here.items,
            |item| {
                Stamp::of(&local(&item.path))
                    .is_some_and(|stamp| manifest.unchanged(&item.path, &stamp, &local(&item.path)))
            },
            |path| {
                there.get(path).map(|item| {
                    let synced = manifest.get(path);
                    let unchanged =
                        synced.is_some_and(|e| e.stamp.matches_listing(item.size, &item.mtime));
                    (item.kind, unchanged)
                })
            },
        );
        let big: Vec<PathBuf> = (plan.new.iter())
            .filter(|item| in_parts(item))
            .map(|item| item.path.clone())
            .collect();
        let placed = self.send_in_parts(&big, &temp).await;
        let new: Vec<&Item> = (plan.new.iter().copied())
            .filter(|item| !placed.iter().any(|placed| placed.path == item.path))
            .collect();
        let new = self.send(&new, &temp, true).await?;
        let replaced = self.send(&plan.replace, &temp, false).await?;
        for item in plan.in_sync {
            self.note_same(manifest, item, started, false);
        }
        let sent: Vec<Item> = (placed.into_iter())
            .chain(new.items)
            .chain(replaced.items)
            .collect();
        for item in &sent {
            self.list(item);
            self.note_same(manifest, item, started, true);
        }
        let failure = new.failure.or(replaced.failure);
        self.pushed(manifest, &here, failure.as_ref(), &sent)
    }

    /// Everything here into a directory this run made: nothing there to compare with, so one
    /// rsync, which replaces nothing that appeared there meanwhile (and stamps `mark` as it
    /// starts, when there is one); big files in parts before it (`parts`).
    async fn push_into_new(
        &self,
        manifest: &mut Manifest,
        started: SystemTime,
        mark: Option<&PullMark>,
    ) -> Result<Vec<PathBuf>> {
        let placed = self.send_big_files_here().await;
        let stamp = mark.map(|mark| format!("{}; ", mark.stamp_alone()));
        let remote = self.remote_temp_then_rsync(&stamp.unwrap_or_default());
        let mut rsync = self.command(Some(Way::Push));
        rsync
            .args(PUSH_OPTIONS)
            .arg(format!("--rsync-path={remote}"))
            .args(["-i", "--ignore-existing", "--debug=FILTER1"])
            .arg(self.local_root())
            .arg(self.remote_root(Path::new("")));
        let mut listed = self.invoke(rsync, None).await?;
        let sent: Vec<Item> = (placed.into_iter())
            .chain(std::mem::take(&mut listed.items))
            .collect();
        for item in &sent {
            self.list(item);
            self.note_same(manifest, item, started, true);
        }
        self.pushed(manifest, &listed, listed.failure.as_ref(), &sent)
    }

    /// Records the manifest, says what the secrets rules held back (`listed` has what they
    /// hid), fails with rsync's `failure`; else the paths of `sent` that moved.
    fn pushed(
        &self,
        manifest: &Manifest,
        listed: &Outcome,
        failure: Option<&String>,
        sent: &[Item],
    ) -> Result<Vec<PathBuf>> {
        manifest.save()?;
        if let Some(line) = held_back_line(listed, self.options) {
            self.printer.info(&line);
        }
        if let Some(failure) = failure {
            bail!("could not sync this directory to the instance: {failure}");
        }
        // Not the top itself: named in a list, it would send all it holds.
        let moved = (sent.iter()).filter(|item| item.transferred() && item.path != Path::new("."));
        Ok(moved.map(|item| item.path.clone()).collect())
    }

    /// Sends `items` (none: nothing to do); `only_new`: none replaces what is there by now.
    async fn send(&self, items: &[&Item], temp: &str, only_new: bool) -> Result<Outcome> {
        if items.is_empty() {
            return Ok(Outcome::default());
        }
        let list = super::nul_separated(items.iter().map(|item| item.path.as_path()));
        let mut rsync = self.command(Some(Way::Push));
        rsync
            .args(PUSH_OPTIONS)
            .arg(super::temp::temp_dir_option(temp))
            .args(["-i", "--files-from=-", "--from0"]);
        if only_new {
            rsync.arg("--ignore-existing");
        }
        rsync
            .arg(self.local_root())
            .arg(self.remote_root(Path::new("")));
        self.invoke(rsync, Some(list)).await
    }

    /// Records that `item` is the same on both sides now, unless it changed here meanwhile.
    /// Then, if it was `sent`, which version the instance got is unknown, and its entry goes
    /// (the next pull keeps both); else the entry of the last sync still says what is there.
    fn note_same(&self, manifest: &mut Manifest, item: &Item, started: SystemTime, sent: bool) {
        if !matches!(item.kind, Kind::File | Kind::Link) {
            return;
        }
        let file = self.local_dir.join(&item.path);
        match Stamp::of(&file) {
            Some(stamp) if stamp.size == item.size && !written_since(&stamp, started) => {
                manifest.set(item.path.clone(), stamp, &file)
            }
            _ if sent => manifest.remove(&item.path),
            _ => {}
        }
    }
}

/// What the push does with one item of this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Send {
    /// The same on both sides already.
    InSync,
    /// Nothing of its kind there: sent, unless something appears there meanwhile.
    New,
    /// Changed here only: sent over the instance's. Or only its attributes differ: they are
    /// set in place.
    Replace,
    /// The instance's stays: it changed it (the pull brings it home), or both sides did, or it
    /// holds something of another kind there (the pull keeps both).
    Keep,
}

/// `there`: the kind the instance holds at the path and whether it is what the last sync left.
fn decide(here: &Item, here_unchanged: bool, there: Option<(Kind, bool)>) -> Send {
    // The instance's version never comes home: where both sides changed it, keeping both is
    // not possible, and this side's (a commit's index, refs) goes up as it always did.
    let comes_home = !is_version_control(&here.path);
    match there {
        None => Send::New,
        Some((kind, _)) if kind != here.kind => Send::Keep,
        Some(_) if here.attributes_only() => Send::Replace,
        Some(_) if !here.transferred() => Send::InSync,
        Some(_) if here.kind == Kind::Dir => Send::Replace,
        Some(_) if here.kind == Kind::Other || here_unchanged => Send::Keep,
        Some((_, there_unchanged)) if there_unchanged || !comes_home => Send::Replace,
        Some(_) => Send::Keep,
    }
}

/// The push's listing, sorted by what it does.
#[derive(Default)]
struct Plan<'a> {
    in_sync: Vec<&'a Item>,
    new: Vec<&'a Item>,
    replace: Vec<&'a Item>,
}

fn plan<'a>(
    items: &'a [Item],
    here_unchanged: impl Fn(&Item) -> bool,
    there: impl Fn(&Path) -> Option<(Kind, bool)>,
) -> Plan<'a> {
    let mut plan = Plan::default();
    // Directories here where the instance has something else: nothing goes under them.
    let mut kept_dirs: Vec<&Path> = Vec::new();
    // The top itself: named in a list, it would send all it holds.
    for item in items.iter().filter(|item| item.path != Path::new(".")) {
        if kept_dirs.iter().any(|dir| item.path.starts_with(dir)) {
            continue;
        }
        let there = there(&item.path);
        let unchanged = there.is_some() && here_unchanged(item);
        match decide(item, unchanged, there) {
            Send::InSync => plan.in_sync.push(item),
            Send::New => plan.new.push(item),
            Send::Replace => plan.replace.push(item),
            Send::Keep if item.kind == Kind::Dir => kept_dirs.push(&item.path),
            Send::Keep => {}
        }
    }
    plan
}

/// One line naming what the secrets rules kept here, if anything: by name, or as a file where
/// AWS keys live that holds one or could not be checked.
fn held_back_line(listed: &Outcome, options: &Options) -> Option<String> {
    let secrets = secret_patterns(options);
    let names: Vec<String> = (listed.hidden.iter())
        .filter(|(_, pattern)| secrets.contains(pattern))
        .map(|(path, _)| {
            let unchecked = options.key_files.iter().find(|file| &file.path == path);
            match unchecked.and_then(|file| file.unchecked.as_ref()) {
                Some(why) => format!("{} (not checked for AWS keys: {why})", escape_path(path)),
                None => escape_path(path),
            }
        })
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "held back (credentials, private keys and files with AWS keys are never synced): \
             {}; to send one, re-include it in .rsyncignore with `+ NAME`",
            names.join(", ")
        )
    })
}

fn written_since(stamp: &Stamp, moment: SystemTime) -> bool {
    let written = SystemTime::UNIX_EPOCH
        + std::time::Duration::new(stamp.mtime_secs.max(0) as u64, stamp.mtime_nanos);
    stamp.mtime_secs < 0 || written >= moment
}

#[cfg(test)]
mod tests {
    use super::super::itemize::item;
    use super::*;
    use Kind::{Dir, File, Link};

    #[test]
    fn only_what_changed_here_alone_replaces_the_instances() {
        let changed = item("<f.st......\t9\tT\ttrain.log");
        let same = item(".f         \t9\tT\tcode.py");
        let chmodded = item(".f...p.....\t9\tT\trun.sh");
        let index = item("<f.st......\t9\tT\t.git/index");
        #[rustfmt::skip]
        let table = [
            ("new", &changed, false, None, Send::New),
            ("the same", &same, false, Some((File, true)), Send::InSync),
            ("a mode changed", &chmodded, true, Some((File, true)), Send::Replace),
            ("changed here only", &changed, false, Some((File, true)), Send::Replace),
            ("changed there only: a job writes it", &changed, true, Some((File, false)), Send::Keep),
            ("changed on both sides", &changed, false, Some((File, false)), Send::Keep),
            ("a directory there", &changed, false, Some((Dir, true)), Send::Keep),
            ("a link there", &changed, false, Some((Link, true)), Send::Keep),
            ("VCS changed on both sides: yours", &index, false, Some((File, false)), Send::Replace),
            ("VCS changed there only", &index, true, Some((File, false)), Send::Keep),
        ];
        for (case, here, here_unchanged, there, expected) in table {
            assert_eq!(decide(here, here_unchanged, there), expected, "{case}");
        }
    }

    #[test]
    fn nothing_goes_under_a_directory_the_instance_replaced() {
        let items = [
            item(".d..t......\t4096\tT\t./"),
            item("cd+++++++++\t4096\tT\tresults/"),
            item("<f+++++++++\t1\tT\tresults/a.txt"),
            item("<f+++++++++\t1\tT\tresults.txt"),
            item(".d..t......\t4096\tT\tsrc/"),
            item("<f.st......\t1\tT\tsrc/main.py"),
        ];
        let there = |path: &Path| match path.to_str() {
            Some("results") => Some((File, false)),
            Some("src") => Some((Dir, true)),
            Some("src/main.py") => Some((File, true)),
            _ => None,
        };
        let plan = plan(&items, |_| false, there);
        let paths = |items: &[&Item]| -> Vec<String> {
            items.iter().map(|i| i.path.display().to_string()).collect()
        };
        assert_eq!(paths(&plan.new), ["results.txt"]);
        assert_eq!(paths(&plan.replace), ["src", "src/main.py"]);
        assert!(plan.in_sync.is_empty());
    }
}
