//! A pull told by the instance what changed since the last whole pull (`remote::pulled`): what
//! did not change there is as that pull left it, so only what did is decided. When all that
//! changed is logs (which the rules always bring home, and which replace this side's copy) or
//! what this side already holds, one rsync fetches them without listing the tree first; anything
//! else is for a whole pull, which lists and decides path by path (`pull`).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use super::itemize::Kind;
use super::manifest::Stamp;
use super::options::{TEMP_DIR, always_home};
use super::pull_plan::kind_of;
use super::report::Pulled;
use super::temp::LocalTemp;
use super::{Manifest, Rsync};
use crate::printer::escape_path;
use crate::remote::logs::LOG_DIR;
use crate::remote::pulled::Change;

impl Rsync<'_> {
    /// Brings home what `changes` says the instance changed, if a whole pull's listing is not
    /// needed to decide it; `None` when it is.
    pub async fn pull_changes(
        &self,
        changes: &[Change],
        manifest: &mut Manifest,
    ) -> Result<Option<Pulled>> {
        let local = |path: &Path| self.local_dir.join(path);
        // To the nanosecond, where a listing has whole seconds.
        let there_unchanged = |change: &Change| {
            (manifest.get(&change.path)).is_some_and(|synced| synced.stamp == stamp_of(change))
        };
        let fetch = match narrow(changes, |path| kind_of(&local(path)), there_unchanged) {
            Ok(fetch) => fetch,
            Err(change) => {
                tracing::debug!("a whole pull: {:?} changed there", change.path);
                return Ok(None);
            }
        };
        if fetch.is_empty() {
            return Ok(Some(Pulled::default()));
        }
        let temp = LocalTemp::take(self.local_dir)?;
        // Logs that came with the answer are written here, unless a directory of logs is to be
        // made (rsync makes it as it fetches).
        let inline = |change: &&Change| change.content.is_some() && change.kind == b'f';
        let (written, fetched): (Vec<&Change>, Vec<&Change>) =
            match fetch.iter().all(|change| change.kind == b'f') {
                true => fetch.into_iter().partition(inline),
                false => (Vec::new(), fetch),
            };
        let mut pulled = Pulled::default();
        let mut failures = Vec::new();
        for change in written {
            match self.write_log(change, temp.path(), manifest) {
                Ok(()) => pulled.add(Pulled {
                    files: 1,
                    bytes: change.size,
                }),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if !fetched.is_empty() {
            let paths: Vec<&Path> = fetched.iter().map(|change| change.path.as_path()).collect();
            let outcome = self.fetch(&paths, self.local_dir, temp.path()).await?;
            pulled.add(self.noted_home(&outcome.items, manifest));
            failures.extend(outcome.failure);
        }
        manifest.save()?;
        if !failures.is_empty() {
            bail!(
                "not everything came home from the instance:\n{}",
                failures.join("\n")
            );
        }
        Ok(Some(pulled))
    }

    /// Writes a log that came with the instance's answer as rsync would have fetched it: through
    /// a temporary file, with the instance's time, the mode of the copy it replaces (a new one
    /// gets the umask's).
    fn write_log(&self, change: &Change, temp: &Path, manifest: &mut Manifest) -> Result<()> {
        let home = self.local_dir.join(&change.path);
        let staged = temp.join("log");
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&staged)?;
            file.write_all(change.content.as_deref().unwrap_or_default())?;
            if let Ok(meta) = home.symlink_metadata()
                && meta.is_file()
            {
                file.set_permissions(meta.permissions())?;
            }
            let stamp = stamp_of(change);
            let secs = Duration::new(stamp.mtime_secs as u64, stamp.mtime_nanos);
            file.set_modified(SystemTime::UNIX_EPOCH + secs)?;
            std::fs::rename(&staged, &home)
        };
        write().with_context(|| format!("cannot write {}", escape_path(&change.path)))?;
        self.list_path(&change.path);
        if let Some(stamp) = Stamp::of(&home) {
            manifest.set(change.path.clone(), stamp, &home);
        }
        Ok(())
    }
}

/// The stamp a change says the instance's file has.
fn stamp_of(change: &Change) -> Stamp {
    Stamp {
        size: change.size,
        mtime_secs: change.mtime_secs,
        mtime_nanos: change.mtime_nanos,
    }
}

/// What to fetch, given what changed there, what this side holds at a path (`here`), and
/// whether a change left a file as the last sync did (`there_unchanged`: its mode or owner
/// changed, or the push wrote it); else the change only a whole pull can decide. The decisions are
/// the whole pull's (`pull_plan`) for these cases.
fn narrow(
    changes: &[Change],
    here: impl Fn(&Path) -> Option<Kind>,
    there_unchanged: impl Fn(&Change) -> bool,
) -> Result<Vec<&Change>, &Change> {
    let mut fetch = Vec::new();
    let log_dir_here = here(Path::new(LOG_DIR));
    let logs_may_come = matches!(log_dir_here, None | Some(Kind::Dir));
    for change in changes {
        let path = change.path.as_path();
        match kind(change.kind) {
            // The directory itself; rsync's temporary files (the push's), and what is neither
            // file, link nor directory never come home.
            _ if path == Path::new("") || path.starts_with(TEMP_DIR) => {}
            Kind::Other => {}
            Kind::Dir if here(path) == Some(Kind::Dir) => {}
            Kind::Dir if path == Path::new(LOG_DIR) && log_dir_here.is_none() => fetch.push(change),
            Kind::File | Kind::Link if there_unchanged(change) => {}
            Kind::File
                if always_home(path)
                    && logs_may_come
                    && matches!(here(path), None | Some(Kind::File)) =>
            {
                fetch.push(change)
            }
            _ => return Err(change),
        }
    }
    Ok(fetch)
}

/// The kind `find`'s `%y` letter names.
fn kind(letter: u8) -> Kind {
    match letter {
        b'f' => Kind::File,
        b'd' => Kind::Dir,
        b'l' => Kind::Link,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn change(kind: u8, path: &str) -> Change {
        Change {
            kind,
            size: 1,
            mtime_secs: 1,
            mtime_nanos: 0,
            path: PathBuf::from(path),
            content: None,
        }
    }

    /// What this side holds in the cases below: a directory of logs, one log, a result file,
    /// a directory.
    fn here(path: &Path) -> Option<Kind> {
        match path.to_str()? {
            "ssh-ec2-logs" | "data" => Some(Kind::Dir),
            "ssh-ec2-logs/run.log" | "model.pt" => Some(Kind::File),
            "ssh-ec2-logs/odd.log" => Some(Kind::Link),
            _ => None,
        }
    }

    fn fetched(changes: &[Change], unchanged: &[&str]) -> Option<Vec<PathBuf>> {
        let there_unchanged = |c: &Change| unchanged.iter().any(|p| c.path == Path::new(p));
        let fetch = narrow(changes, here, there_unchanged).ok()?;
        Some(fetch.into_iter().map(|c| c.path.clone()).collect())
    }

    #[test]
    fn only_logs_and_what_the_last_sync_left_are_decided_without_a_listing() {
        let logs = [
            change(b'd', ""),
            change(b'd', ".ssh-ec2-tmp"),
            change(b'f', ".ssh-ec2-tmp/0123/.a.txt.Xy12"),
            change(b'd', "ssh-ec2-logs"),
            change(b'f', "ssh-ec2-logs/run.log"),
            change(b'f', "ssh-ec2-logs/job-node-0.log"),
            change(b'd', "data"),
            change(b'p', "fifo"),
            change(b'f', "model.pt"),
        ];
        let paths = ["ssh-ec2-logs/run.log", "ssh-ec2-logs/job-node-0.log"];
        assert_eq!(
            fetched(&logs, &["model.pt"]),
            Some(paths.map(PathBuf::from).to_vec()),
            "a file the push wrote, or whose mode changed, is as the last sync left it"
        );
        assert_eq!(fetched(&logs[..1], &[]), Some(vec![]));
        #[rustfmt::skip]
        let whole = [
            (change(b'f', "model.pt"), "a result"),
            (change(b'f', "new.txt"), "a new file"),
            (change(b'd', "results"), "a new directory"),
            (change(b'l', "ssh-ec2-logs/run.log"), "a log that is a link there"),
            (change(b'f', "ssh-ec2-logs/odd.log"), "a log that is a link here"),
            (change(b'f', "ssh-ec2-logs/notes.txt"), "not a log"),
            (change(b'f', "ssh-ec2-logs/deep/run.log"), "not a log"),
            (change(b'f', "data"), "a file where this side has a directory"),
        ];
        for (change, case) in whole {
            assert_eq!(fetched(&[change], &[]), None, "{case}");
        }
    }

    #[test]
    fn a_new_directory_of_logs_comes_home_with_them_but_never_through_a_link() {
        let new_here = |path: &Path| here(path).filter(|_| !path.starts_with(LOG_DIR));
        let changes = [change(b'd', LOG_DIR), change(b'f', "ssh-ec2-logs/run.log")];
        let fetch = narrow(&changes, new_here, |_| false).unwrap();
        assert_eq!(fetch, [&changes[0], &changes[1]]);
        let linked = |path: &Path| (path == Path::new(LOG_DIR)).then_some(Kind::Link);
        assert_eq!(narrow(&changes[1..], linked, |_| false), Err(&changes[1]));
    }
}
