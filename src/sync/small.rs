//! Files that come home in a command's answer rather than through rsync: logs in the answer of
//! "what changed?", and small results read in one command (`remote::contents`). Each is written
//! here as rsync would have fetched it: through a temporary file, with the instance's time, the
//! mode of the file it replaces, or for a new one rw (and x where the instance's has x) masked
//! by the umask, as `--no-perms --chmod=ugo=rwX` gives.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    pub(super) fn write_home(
        &self,
        arrived: &Arrived<'_>,
        temp: &Path,
        manifest: &mut Manifest,
    ) -> Result<()> {
        let home = self.local_dir.join(arrived.path);
        let staged = temp.join("arrived");
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&staged);
            let mode = if arrived.executable { 0o777 } else { 0o666 };
            let mut file = (OpenOptions::new().write(true).create_new(true))
                .mode(mode)
                .open(&staged)?;
            file.write_all(arrived.bytes)?;
            if let Ok(meta) = home.symlink_metadata()
                && meta.is_file()
            {
                file.set_permissions(meta.permissions())?;
            }
            let (secs, nanos) = arrived.mtime;
            let since_epoch = Duration::new(secs.unsigned_abs(), nanos);
            file.set_modified(SystemTime::UNIX_EPOCH + since_epoch)?;
            std::fs::rename(&staged, &home)
        };
        write().with_context(|| {
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

    /// Brings home the small files among `fetch` (planned fetches) in one command, adding them
    /// to `pulled` (and what could not be written to `failures`); the others, and any the
    /// instance did not send, are left for rsync.
    pub(super) async fn fetch_small<'i>(
        &self,
        fetch: Vec<&'i Item>,
        temp: &Path,
        manifest: &mut Manifest,
        (pulled, failures): (&mut Pulled, &mut Vec<String>),
    ) -> Vec<&'i Item> {
        let here = |path: &Path| kind_of(&self.local_dir.join(path));
        let (small, mut rest) = small_ones(fetch, here);
        if small.is_empty() {
            return rest;
        }
        let list = super::nul_separated(small.iter().map(|item| item.path.as_path()));
        let command = contents_command(&self.remote, SMALL);
        let answer = self
            .session
            .run_fed_bytes("the read of small files", &command, &list);
        let sent = match answer
            .await
            .ok()
            .and_then(|a| parse_contents(&a, small.len()))
        {
            Some(sent) => sent,
            None => {
                rest.extend(small);
                return rest;
            }
        };
        for (item, content) in small.into_iter().zip(sent) {
            let Some(Content { mode, mtime, bytes }) = content else {
                rest.push(item);
                continue;
            };
            let arrived = Arrived {
                path: &item.path,
                bytes: &bytes,
                mtime,
                executable: mode & 0o111 != 0,
            };
            match self.write_home(&arrived, temp, manifest) {
                Ok(()) => pulled.add(Pulled {
                    files: 1,
                    bytes: bytes.len() as u64,
                }),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        rest
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
