//! Files that come home in a command's answer rather than through rsync: logs in the answer of
//! "what changed?", and small results read in one command (`remote::contents`). Each is written
//! here as rsync would have fetched it: through a temporary file, with the instance's time, the
//! mode of the file it replaces, or for a new one rw (and x where the instance's has x) masked
//! by the umask, as `--no-perms --chmod=ugo=rwX` gives.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::itemize::{Item, Kind};
use super::manifest::Stamp;
use super::pull_plan::kind_of;
use super::report::Pulled;
use super::{Manifest, Rsync};
use crate::printer::escape_path;
use crate::remote::changes::Time;
use crate::remote::contents::{Content, contents_command, parse_contents};

/// Files up to this size are read in one command; rsync fetches bigger ones.
const SMALL: u64 = 256 << 10;
/// At most this much in all is read that way.
const SMALL_IN_ALL: u64 = 1 << 20;

/// A file to write here as it came from the instance.
pub(super) struct Arrived<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
    pub mtime: Time,
    /// The instance's file has an x bit (a new file here gets them too).
    pub executable: bool,
}

impl Rsync<'_> {
    /// Writes `arrived` here (see the module's summary) through `temp`, and records it in the
    /// manifest.
    fn write_home(
        &self,
        arrived: &Arrived<'_>,
        temp: &Path,
        manifest: &mut Manifest,
    ) -> Result<()> {
        let home = self.local_dir.join(arrived.path);
        let staged = temp.join("arrived");
        write_file(arrived, &staged, &home).with_context(|| {
            format!(
                "cannot write {} here: check that its directory is one you may write to",
                escape_path(arrived.path)
            )
        })?;
        self.list_path(arrived.path);
        if let Some(stamp) = Stamp::of(&home) {
            manifest.set(arrived.path.to_path_buf(), stamp, &home);
        }
        Ok(())
    }

    /// Writes each of `arrived` here (`write_home`), adding it to `pulled`, or why it could not
    /// be to `failures`.
    pub(super) fn write_all_home<'a>(
        &self,
        arrived: impl IntoIterator<Item = Arrived<'a>>,
        temp: &Path,
        manifest: &mut Manifest,
        (pulled, failures): (&mut Pulled, &mut Vec<String>),
    ) {
        for arrived in arrived {
            match self.write_home(&arrived, temp, manifest) {
                Ok(()) => pulled.add(Pulled {
                    files: 1,
                    bytes: arrived.bytes.len() as u64,
                }),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
    }

    /// Brings home `fetch` (planned fetches) in one command when all are small (see
    /// `small_ones`: rsync, started for one, would bring the others for nothing more); those
    /// it did not (the instance did not send them) are left for rsync, as all are otherwise.
    pub(super) async fn fetch_small<'i>(
        &self,
        fetch: Vec<&'i Item>,
        temp: &Path,
        manifest: &mut Manifest,
        outcome: (&mut Pulled, &mut Vec<String>),
    ) -> Vec<&'i Item> {
        let device = |path: &Path| path.metadata().ok().map(|meta| meta.dev());
        let temp_device = device(temp);
        let here = |path: &Path| {
            let local = self.local_dir.join(path);
            // A file staged there is renamed into place: on another file system, rsync copies.
            let kind = kind_of(&local);
            let elsewhere = kind == Some(Kind::Dir) && device(&local) != temp_device;
            kind.filter(|_| !elsewhere)
        };
        let (small, rest) = small_ones(fetch, here);
        if small.is_empty() || !rest.is_empty() {
            return small.into_iter().chain(rest).collect();
        }
        let list = super::nul_separated(small.iter().map(|item| item.path.as_path()));
        let command = contents_command(&self.remote_dir, SMALL);
        let answer =
            self.session
                .run_fed_from("the read of small files", &command, list.as_slice());
        let sent = match answer
            .await
            .map(|answer| parse_contents(&answer, small.len()))
        {
            Ok(Some(sent)) => sent,
            failed => {
                tracing::debug!("rsync fetches them: the read of small files failed: {failed:?}");
                return small;
            }
        };
        let (mut arrived, mut rest) = (Vec::new(), Vec::new());
        for (item, content) in small.into_iter().zip(&sent) {
            match content {
                Some(Content { mode, mtime, bytes }) => arrived.push(Arrived {
                    path: &item.path,
                    bytes,
                    mtime: *mtime,
                    executable: mode & 0o111 != 0,
                }),
                None => rest.push(item),
            }
        }
        self.write_all_home(arrived, temp, manifest, outcome);
        rest
    }
}

/// Writes `arrived` at `home` through `staged`: the mode of a file there (a link there is
/// replaced, never followed), else `created_mode` masked by the umask; the instance's time.
fn write_file(arrived: &Arrived<'_>, staged: &Path, home: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(staged);
    let mut file = (OpenOptions::new().write(true).create_new(true))
        .mode(created_mode(arrived.executable))
        .open(staged)?;
    file.write_all(arrived.bytes)?;
    if let Ok(meta) = home.symlink_metadata()
        && meta.is_file()
    {
        file.set_permissions(meta.permissions())?;
    }
    let (secs, nanos) = arrived.mtime;
    let since_epoch = Duration::new(secs.unsigned_abs(), nanos);
    file.set_modified(SystemTime::UNIX_EPOCH + since_epoch)?;
    std::fs::rename(staged, home)
}

/// The mode a new file is made with, before the umask: rw, and x where the instance's has x.
fn created_mode(executable: bool) -> u32 {
    match executable {
        true => 0o777,
        false => 0o666,
    }
}

/// Which of `fetch` come in one command: files up to `SMALL`, `SMALL_IN_ALL` in all, where
/// this side has a file or nothing, in a directory it has (`here`); and the others.
fn small_ones(fetch: Vec<&Item>, here: impl Fn(&Path) -> Option<Kind>) -> (Vec<&Item>, Vec<&Item>) {
    let mut in_all = 0;
    fetch.into_iter().partition(|item| {
        let parent = item.path.parent().unwrap_or(Path::new(""));
        let fits = item.kind == Kind::File
            && item.size <= SMALL
            && in_all + item.size <= SMALL_IN_ALL
            && matches!(here(&item.path), None | Some(Kind::File))
            && (parent == Path::new("") || here(parent) == Some(Kind::Dir));
        if fits {
            in_all += item.size;
        }
        fits
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(path: &str, size: u64) -> Item {
        Item::changed_there(Kind::File, size, String::new(), PathBuf::from(path))
    }

    #[test]
    fn a_file_arrives_with_the_mode_of_the_one_it_replaces_else_rw_and_x_as_there() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (staged, at) = (dir.path().join("staged"), |name: &str| {
            dir.path().join(name)
        });
        let mode = |name: &str| std::fs::metadata(at(name)).unwrap().permissions().mode() & 0o777;
        let arrive = |name: &str, executable: bool| {
            let arrived = Arrived {
                path: Path::new(name),
                bytes: b"new",
                mtime: (7, 5),
                executable,
            };
            write_file(&arrived, &staged, &at(name)).unwrap();
            assert_eq!(std::fs::read(at(name)).unwrap(), b"new");
        };
        std::fs::write(at("kept"), "old").unwrap();
        std::fs::set_permissions(at("kept"), PermissionsExt::from_mode(0o400)).unwrap();
        arrive("kept", true);
        assert_eq!(
            mode("kept"),
            0o400,
            "the mode of the file replaced, read-only too"
        );
        arrive("script", true);
        arrive("data", false);
        assert_ne!(mode("script") & 0o100, 0);
        assert_eq!(mode("data") & 0o111, 0);
        let modified = std::fs::metadata(at("data")).unwrap().modified().unwrap();
        assert_eq!(modified, SystemTime::UNIX_EPOCH + Duration::new(7, 5));
        std::fs::write(at("target"), "outside").unwrap();
        std::os::unix::fs::symlink(at("target"), at("link")).unwrap();
        arrive("link", false);
        assert_eq!(
            std::fs::read(at("target")).unwrap(),
            b"outside",
            "not through the link"
        );
        assert!(std::fs::symlink_metadata(at("link")).unwrap().is_file());
    }

    #[test]
    fn small_files_in_directories_here_come_in_one_command_up_to_a_total() {
        let here = |path: &Path| match path.to_str()? {
            "out" => Some(Kind::Dir),
            "linked" | "out/link.txt" => Some(Kind::Link),
            "out/old.txt" => Some(Kind::File),
            _ => None,
        };
        let items = [
            file("a.txt", 10),
            file("out/old.txt", 20),
            file("out/big.bin", SMALL + 1),
            file("out/link.txt", 5),
            file("linked/x.txt", 5),
            file("gone/x.txt", 5),
            file("out/m1", SMALL),
            file("out/m2", SMALL),
            file("out/m3", SMALL),
            file("out/m4", SMALL),
        ];
        let (small, rest) = small_ones(items.iter().collect(), here);
        let names = |list: Vec<&Item>| -> Vec<String> {
            list.iter().map(|i| i.path.display().to_string()).collect()
        };
        assert_eq!(
            names(small),
            ["a.txt", "out/old.txt", "out/m1", "out/m2", "out/m3"]
        );
        assert_eq!(
            names(rest),
            [
                "out/big.bin",
                "out/link.txt",
                "linked/x.txt",
                "gone/x.txt",
                "out/m4"
            ]
        );
    }
}
