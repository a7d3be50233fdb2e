//! A pull told by the instance what changed since the last pull that brought everything home
//! (`remote::pulled`): what did not change there is as that pull left it, so only what did is
//! decided, without rsync's listing of the tree. Logs (which the rules always bring home, and
//! which replace this side's copy) in the answer are written here; what the push left as it
//! is needs nothing; other files are decided as a whole pull would (`narrow_plan`), then
//! fetched: small ones in one command's answer (`small`), the others by one rsync. What the
//! answer cannot tell (a link, a new directory, which may have
//! been moved there whole, a directory renamed, too many changes) is for a whole pull, which
//! lists and decides path by path (`pull`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;

use super::itemize::Kind;
use super::manifest::Stamp;
use super::narrow_plan::DECIDED_AT_MOST;
use super::options::TEMP_DIR;
use super::pull::settle;
use super::pull_plan::{Plan, kind_of};
use super::report::{Pulled, Report};
use super::small::Arrived;
use super::temp::LocalTemp;
use super::{Manifest, Rsync};
use crate::remote::changes::{Change, Changes, Time};
use crate::remote::logs::{LOG_DIR, always_home};

impl Rsync<'_> {
    /// Brings home what `changes` says the instance changed (and adds to `report` what the
    /// rules keep there), if a whole pull's listing is not needed to decide it; `None` when it
    /// is.
    pub async fn pull_changes(
        &self,
        changes: &Changes,
        manifest: &mut Manifest,
        report: &mut Report,
    ) -> Result<Option<Pulled>> {
        let Some(Narrowed { fetch, decide }) = self.narrowed(changes, manifest) else {
            return Ok(None);
        };
        if fetch.is_empty() && decide.is_empty() {
            return Ok(Some(Pulled::default()));
        }
        let temp = LocalTemp::take(self.local_dir)?;
        let decided = match self.decide(&decide, temp.path()).await {
            Ok(Some(decided)) => decided,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::debug!("a whole pull: {e:#}");
                return Ok(None);
            }
        };
        for (path, why) in &decided.held {
            report.hold(path.clone(), *why);
        }
        let planned = decided.plan(self, manifest);
        let pulled = self.bring_home(fetch, planned, temp.path(), manifest, report);
        pulled.await.map(Some)
    }

    /// What changed there, sorted (`narrow`); `None` when a whole pull must decide.
    fn narrowed<'c>(&self, changes: &'c Changes, manifest: &Manifest) -> Option<Narrowed<'c>> {
        let local = |path: &Path| self.local_dir.join(path);
        // To the nanosecond, where a listing has whole seconds.
        let there_unchanged = |change: &Change| {
            (manifest.get(&change.path)).is_some_and(|synced| synced.stamp == stamp_of(change))
        };
        let dir_time_here = |path: &Path| {
            let meta = local(path).symlink_metadata().ok()?;
            meta.is_dir()
                .then(|| (meta.mtime(), meta.mtime_nsec() as u32))
        };
        let here = |path: &Path| kind_of(&local(path));
        match narrow(changes, here, dir_time_here, there_unchanged) {
            Ok(narrowed) => (narrowed.decide.len() <= DECIDED_AT_MOST).then_some(narrowed),
            Err(change) => {
                tracing::debug!("a whole pull: {:?} changed there", change.path);
                None
            }
        }
    }

    /// Brings home the logs and results `fetch` and `planned` name: logs in the answer written
    /// here, into the directory of logs this side has (else rsync fetches them, and makes that
    /// directory), results in one command when small, else with the logs in one rsync;
    /// conflicts kept both. Then the manifest is recorded, and every failure said.
    async fn bring_home(
        &self,
        fetch: Vec<&Change>,
        planned: Plan<'_>,
        temp: &Path,
        manifest: &mut Manifest,
        report: &mut Report,
    ) -> Result<Pulled> {
        let log_dir_here = kind_of(&self.local_dir.join(LOG_DIR)) == Some(Kind::Dir);
        let (written, fetched): (Vec<&Change>, Vec<&Change>) =
            (fetch.into_iter()).partition(|change| log_dir_here && change.content.is_some());
        let mut pulled = Pulled::default();
        let mut failures = Vec::new();
        let logs = written.iter().map(|change| Arrived {
            path: &change.path,
            bytes: change.content.as_deref().unwrap_or_default(),
            mtime: change.mtime,
            executable: false,
        });
        self.write_all_home(logs, temp, manifest, (&mut pulled, &mut failures));
        // Logs fetched by rsync: it brings the results too.
        let by_rsync = match fetched.is_empty() {
            true => {
                let outcome = (&mut pulled, &mut failures);
                (self.fetch_small(planned.fetch, temp, manifest, outcome)).await
            }
            false => planned.fetch,
        };
        let paths: Vec<&Path> = (fetched.iter().map(|change| change.path.as_path()))
            .chain(by_rsync.iter().map(|item| item.path.as_path()))
            .collect();
        if !paths.is_empty() {
            let outcome = self.fetch(&paths, self.local_dir, temp).await?;
            pulled.add(self.noted_home(&outcome.items, manifest));
            failures.extend(outcome.failure);
        }
        for item in planned.both {
            failures.extend(self.keep_both(item, temp, manifest, report).await?);
        }
        settle(manifest, &failures)?;
        Ok(pulled)
    }
}

/// The stamp a change says the instance's file has.
fn stamp_of(change: &Change) -> Stamp {
    let (mtime_secs, mtime_nanos) = change.mtime;
    Stamp {
        size: change.size,
        mtime_secs,
        mtime_nanos,
    }
}

/// What changed there, sorted.
#[derive(Debug, PartialEq)]
struct Narrowed<'a> {
    /// Logs, and a new directory of logs: fetched as they are.
    fetch: Vec<&'a Change>,
    /// Files, to decide as a whole pull would (`narrow_plan`).
    decide: Vec<&'a Change>,
}

/// What to fetch and what to decide, given what changed there, what this side holds at a path
/// (`here`), and whether a change left a file as the last sync did (`there_unchanged`: its
/// mode changed, or the push wrote it); else the change only a whole pull can decide. The
/// decisions are the whole pull's (`pull_plan`) for these cases.
///
/// A directory changed since the stamp lists what changed in it, except when it was renamed
/// (or its mode changed): then its modification time is from before the stamp, and what it
/// holds shows no change of its own. Unless that time is the one the directory here has
/// (`dir_time_here`): rsync set it, pushing into it.
fn narrow(
    changes: &Changes,
    here: impl Fn(&Path) -> Option<Kind>,
    dir_time_here: impl Fn(&Path) -> Option<Time>,
    there_unchanged: impl Fn(&Change) -> bool,
) -> Result<Narrowed<'_>, &Change> {
    let mut fetch = Vec::new();
    let mut decide = Vec::new();
    let log_dir_here = here(Path::new(LOG_DIR));
    let logs_may_come = matches!(log_dir_here, None | Some(Kind::Dir));
    let ancestors_are_dirs = |path: &Path| {
        (path.ancestors().skip(1)).all(|above| matches!(here(above), None | Some(Kind::Dir)))
    };
    let listing = |change: &Change| {
        change.mtime >= changes.since || dir_time_here(&change.path) == Some(change.mtime)
    };
    for change in &changes.list {
        let path = change.path.as_path();
        match kind(change.kind) {
            // rsync's temporary files (the push's), and what is neither file, link nor
            // directory never come home (version-control metadata is for the rules to name).
            _ if path.starts_with(TEMP_DIR) => {}
            Kind::Other => {}
            Kind::Dir if !listing(change) => return Err(change),
            Kind::Dir if path == Path::new("") || here(path) == Some(Kind::Dir) => {}
            Kind::Dir if path == Path::new(LOG_DIR) && log_dir_here.is_none() => fetch.push(change),
            // Moved there whole, it may hold what changed before the stamp, which the answer
            // does not name: a whole pull.
            Kind::Dir => return Err(change),
            Kind::File | Kind::Link if there_unchanged(change) => {}
            Kind::File
                if always_home(path)
                    && logs_may_come
                    && matches!(here(path), None | Some(Kind::File)) =>
            {
                fetch.push(change)
            }
            // Never through a link (or a file) of this side's: a whole pull keeps both.
            Kind::File if !ancestors_are_dirs(path) => return Err(change),
            Kind::File => decide.push(change),
            // Whether it leads out of the tree (`--safe-links`) is for rsync's listing to say.
            Kind::Link => return Err(change),
        }
    }
    Ok(Narrowed { fetch, decide })
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

    /// The stamp's time in the cases below; a change is listed after it unless said.
    const SINCE: Time = (10, 0);

    fn change(kind: u8, path: &str) -> Change {
        Change {
            kind,
            size: 1,
            mtime: (11, 0),
            path: PathBuf::from(path),
            content: None,
        }
    }

    fn changes(list: &[Change]) -> Changes {
        Changes {
            since: SINCE,
            list: list.to_vec(),
        }
    }

    /// What this side holds in the cases below: a directory of logs, one log, a result file,
    /// a directory.
    fn here(path: &Path) -> Option<Kind> {
        match path.to_str()? {
            "" | "ssh-ec2-logs" | "data" | "pushed" => Some(Kind::Dir),
            "ssh-ec2-logs/run.log" | "model.pt" => Some(Kind::File),
            "ssh-ec2-logs/odd.log" => Some(Kind::Link),
            _ => None,
        }
    }

    /// The time of `pushed` here: rsync gave it the same there.
    fn dir_time_here(path: &Path) -> Option<Time> {
        (path == Path::new("pushed")).then_some((5, 0))
    }

    /// What is fetched as it is, and what is decided (`narrow_plan`); `None`: a whole pull.
    fn narrowed(list: &[Change], unchanged: &[&str]) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
        let there_unchanged = |c: &Change| unchanged.iter().any(|p| c.path == Path::new(p));
        let changes = changes(list);
        let Narrowed { fetch, decide } =
            narrow(&changes, here, dir_time_here, there_unchanged).ok()?;
        let paths = |list: Vec<&Change>| list.iter().map(|c| c.path.clone()).collect();
        Some((paths(fetch), paths(decide)))
    }

    #[test]
    fn logs_are_fetched_results_decided_and_what_the_last_sync_left_let_be() {
        let logs = [
            change(b'd', ""),
            change(b'd', ".ssh-ec2-tmp"),
            change(b'f', ".ssh-ec2-tmp/0123/.a.txt.Xy12"),
            change(b'f', ".git/index"),
            change(b'd', "ssh-ec2-logs"),
            change(b'f', "ssh-ec2-logs/run.log"),
            change(b'f', "ssh-ec2-logs/job-node-0.log"),
            change(b'd', "data"),
            Change {
                mtime: (5, 0),
                ..change(b'd', "pushed")
            },
            change(b'p', "fifo"),
            change(b'f', "model.pt"),
        ];
        let paths = ["ssh-ec2-logs/run.log", "ssh-ec2-logs/job-node-0.log"];
        assert_eq!(
            narrowed(&logs, &["model.pt"]),
            Some((
                paths.map(PathBuf::from).to_vec(),
                vec![PathBuf::from(".git/index")]
            )),
            "a file the push wrote, or whose mode changed, is as the last sync left it"
        );
        assert_eq!(narrowed(&logs[..1], &[]), Some((vec![], vec![])));
        #[rustfmt::skip]
        let decided = [
            (change(b'f', "model.pt"), "a result"),
            (change(b'f', "new.txt"), "a new file"),
            (change(b'f', "ssh-ec2-logs/odd.log"), "a log that is a link here"),
            (change(b'f', "ssh-ec2-logs/notes.txt"), "not a log"),
            (change(b'f', "ssh-ec2-logs/deep/run.log"), "not a log"),
            (change(b'f', "data"), "a file where this side has a directory"),
        ];
        for (change, case) in decided {
            let path = change.path.clone();
            assert_eq!(
                narrowed(&[change], &[]),
                Some((vec![], vec![path])),
                "{case}"
            );
        }
        let renamed = Change {
            mtime: (9, 0),
            ..change(b'd', "data")
        };
        #[rustfmt::skip]
        let whole = [
            (renamed, "a directory renamed over this one: what it holds shows no change"),
            (change(b'd', "results"), "a new directory: it may have been moved there whole"),
            (change(b'd', "model.pt"), "a directory where this side has a file"),
            (change(b'l', "ssh-ec2-logs/run.log"), "a log that is a link there"),
            (change(b'l', "out/latest"), "a link: whether it leads out of the tree"),
            (change(b'f', "model.pt/x"), "under a file here"),
            (change(b'f', "ssh-ec2-logs/odd.log/x"), "under a link here"),
        ];
        for (change, case) in whole {
            assert_eq!(narrowed(&[change], &[]), None, "{case}");
        }
    }

    #[test]
    fn a_new_directory_of_logs_comes_home_with_them_but_never_through_a_link() {
        let new_here = |path: &Path| here(path).filter(|_| !path.starts_with(LOG_DIR));
        let list = changes(&[change(b'd', LOG_DIR), change(b'f', "ssh-ec2-logs/run.log")]);
        let narrowed = narrow(&list, new_here, dir_time_here, |_| false).unwrap();
        assert_eq!(narrowed.fetch, [&list.list[0], &list.list[1]]);
        let linked = |path: &Path| (path == Path::new(LOG_DIR)).then_some(Kind::Link);
        let logs = changes(&list.list[1..]);
        assert_eq!(
            narrow(&logs, linked, dir_time_here, |_| false),
            Err(&logs.list[0])
        );
    }
}
