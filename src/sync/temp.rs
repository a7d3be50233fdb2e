//! rsync's temporary files. What a transfer receives is written into a directory of its own
//! under `TEMP_DIR`, at the top of the receiving side's directory (rsync's `--temp-dir`), and
//! renamed into place once complete: a transfer cut short leaves no half file among the
//! project's, and no transfer carries `TEMP_DIR` either way. Each of these directories belongs
//! to a live holder: here the ssh-ec2 process that holds its lock, there the SSH connection
//! whose sshd (pid and start time) names it. A transfer to a side first removes those whose
//! holder is gone, with what a killed transfer left in them (a laptop that died during a pull,
//! an instance stopped during a push).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::Rsync;
use super::options::TEMP_DIR;
use crate::remote::lease::started;
use crate::remote::parts::{PARTS_ABANDONED_MINUTES, PARTS_PREFIX};
use crate::remote::shell_quote;

/// A pull's temporary directory here, and the lock that says it is in use; removed when
/// dropped.
pub(super) struct LocalTemp {
    dir: PathBuf,
    lock_file: PathBuf,
    _held: Flock<File>,
}

impl LocalTemp {
    /// Removes what dead transfers left under `local_dir`'s `TEMP_DIR`, and makes a directory
    /// of this transfer's own there.
    pub(super) fn take(local_dir: &Path) -> Result<LocalTemp> {
        let top = local_dir.join(TEMP_DIR);
        loop {
            // Again each time: the last transfer out of another run may just have removed it.
            std::fs::create_dir_all(&top).with_context(|| {
                format!("cannot create {}: check its permissions", top.display())
            })?;
            remove_abandoned(&top);
            let name = format!("{:016x}", rand::random::<u64>());
            let lock_file = top.join(format!("{name}.lock"));
            let file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock_file)
            {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                opened => {
                    opened.with_context(|| format!("cannot create {}", lock_file.display()))?
                }
            };
            let Ok(held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // Another run's clean-up may have taken it for abandoned before it was locked.
            if !same_file(&held, &lock_file) {
                continue;
            }
            let dir = top.join(&name);
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            return Ok(LocalTemp {
                dir,
                lock_file,
                _held: held,
            });
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalTemp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_file);
        // The last one out leaves the project as it found it.
        if let Some(top) = self.dir.parent() {
            let _ = std::fs::remove_dir(top);
        }
    }
}

/// Whether `held` is the file linked at `path`.
fn same_file(held: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let linked = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let open = held.metadata().ok().map(|m| (m.dev(), m.ino()));
    linked.is_some() && linked == open
}

/// Removes from `top` each transfer's directory whose lock nobody holds, and anything else.
fn remove_abandoned(top: &Path) {
    for entry in std::fs::read_dir(top).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let lock_of_dir = top.join(format!("{}.lock", name.to_string_lossy()));
        let abandoned = match path.extension() {
            Some(extension) if extension == "lock" => {
                let held = File::open(&path)
                    .map(|file| Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err());
                if held.is_ok_and(|held| !held) {
                    let _ = std::fs::remove_dir_all(path.with_extension(""));
                    true
                } else {
                    false
                }
            }
            // A directory is removed with its lock file, and made after it.
            _ => !lock_of_dir.exists(),
        };
        if abandoned {
            let _ = match entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
        }
    }
}

impl Rsync<'_> {
    /// On the instance, for a push: the same, through one shell command; the directory of this
    /// connection, for rsync.
    pub(super) async fn remote_temp(&self) -> Result<String> {
        let top = self.remote_temp_top();
        let answer = self
            .session
            .run_captured(&remote_temp_command(&top))
            .await
            .with_context(|| format!("cannot prepare {top} on the instance"))?;
        let own = answer.lines().last().unwrap_or_default().trim();
        anyhow::ensure!(
            !own.is_empty() && !own.contains('/'),
            "the instance did not name a temporary directory in {top}"
        );
        Ok(format!("{top}/{own}"))
    }

    /// What rsync runs on the instance for a push into a directory this run made (its
    /// `--rsync-path`, after `before`): the temporary directory of `remote_temp` made, then
    /// rsync told to use it; no round trip of its own.
    pub(super) fn remote_temp_then_rsync(&self, before: &str) -> String {
        let made = make_remote_temp(&self.remote_temp_top());
        format!("{before}{made} rsync --temp-dir=\"$t/$me\"")
    }

    /// Where the instance's temporary directories are, in the remote directory.
    fn remote_temp_top(&self) -> String {
        format!("{}{TEMP_DIR}", self.remote_dir.for_rsync())
    }
}

/// Makes `top/<sshd pid>-<its start time>` for this connection, removes the directories of
/// connections that are gone, and prints the name of its own.
fn remote_temp_command(top: &str) -> String {
    format!("{} echo \"$me\"", make_remote_temp(top))
}

/// Makes this connection's temporary directory in `top` (`$t/$me`), removes those of
/// connections that are gone, and the files of parts untouched for `PARTS_ABANDONED_MINUTES`
/// (a run killed while it sent them through a connection that stays: see `sync::parts`).
fn make_remote_temp(top: &str) -> String {
    format!(
        "t={top}; me=\"$PPID-$({started} $PPID)\"; mkdir -p \"$t/$me\" && \
         for d in \"$t\"/*; do n=\"${{d##*/}}\"; p=\"${{n%%-*}}\"; \
         [ \"$p-$({started} \"$p\")\" = \"$n\" ] || rm -rf \"$d\"; done; \
         find \"$t\" -name '{PARTS_PREFIX}*' -cmin +{PARTS_ABANDONED_MINUTES} -exec rm -f {{}} +;",
        top = shell_quote(top),
        started = started(),
    )
}

/// `--temp-dir=DIR`.
pub(super) fn temp_dir_option(dir: impl AsRef<Path>) -> std::ffi::OsString {
    let mut option = std::ffi::OsString::from("--temp-dir=");
    option.push(dir.as_ref());
    option
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_dead_transfer_left_is_removed_and_a_live_ones_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join(TEMP_DIR);
        let live = LocalTemp::take(dir.path()).unwrap();
        std::fs::write(live.path().join("big.bin.AbC123"), "half").unwrap();
        // A transfer whose process died: its lock file is there, nobody holds it.
        std::fs::create_dir(top.join("dead")).unwrap();
        std::fs::write(top.join("dead/big.bin.XyZ789"), "half").unwrap();
        std::fs::write(top.join("dead.lock"), "").unwrap();
        std::fs::create_dir(top.join("no-lock")).unwrap();

        let other = LocalTemp::take(dir.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&top)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = Vec::new();
        for temp in [&live, &other] {
            let name = temp.path().file_name().unwrap().to_string_lossy();
            expected.extend([name.to_string(), format!("{name}.lock")]);
        }
        expected.sort();
        assert_eq!(left, expected);
        assert!(live.path().join("big.bin.AbC123").exists());
        drop(live);
        assert_eq!(
            std::fs::read_dir(&top).unwrap().count(),
            2,
            "each removes its own"
        );
        drop(other);
        assert!(!top.exists(), "the last one out removes the directory");
    }

    #[test]
    fn the_instances_side_keeps_what_live_connections_write_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join(TEMP_DIR);
        std::fs::create_dir_all(top.join("1-0")).unwrap();
        let run = || {
            let output = std::process::Command::new("sh")
                .args(["-c", &remote_temp_command(top.to_str().unwrap())])
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap().trim().to_string()
        };
        // The shell's parent, this test, stands for the connection's sshd.
        let own = run();
        assert!(top.join(&own).is_dir());
        assert!(!top.join("1-0").exists(), "a gone connection's");
        let parts = top.join(&own).join(format!("{PARTS_PREFIX}0123"));
        std::fs::write(&parts, "being written").unwrap();
        assert_eq!(run(), own);
        assert!(parts.exists(), "parts written a moment ago stay");
    }

    #[test]
    fn the_remote_directory_is_named_after_the_connection() {
        let command = remote_temp_command("/home/u/my proj/.ssh-ec2-tmp");
        assert!(command.starts_with("t='/home/u/my proj/.ssh-ec2-tmp'; me=\"$PPID-$("));
        assert!(command.ends_with("echo \"$me\""));
    }
}
