//! The directory's lock: held while a run finds or launches the instance and takes its lease
//! on it, and while it decides the end of life, so that two runs never launch two instances
//! for one directory, and the last one out sees every other run's lease.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::interrupt::Interrupt;
use crate::poll::Poll;
use crate::printer::Printer;

/// Released when dropped; the kernel releases it if ssh-ec2 dies.
pub struct DirLock {
    _held: Flock<File>,
}

impl DirLock {
    /// Takes the lock, waiting (and saying so) while another run of this directory holds it;
    /// a signal ends the wait when `interrupt` is given.
    pub async fn wait(
        state_dir: &Path,
        local_dir: &Path,
        printer: &Printer,
        interrupt: Option<&Interrupt>,
    ) -> Result<DirLock> {
        let path = lock_path(state_dir, local_dir)?;
        let mut poll = Poll::every(Duration::from_millis(500));
        if let Some(interrupt) = interrupt {
            poll = poll.interruptible(interrupt);
        }
        let mut phase = None;
        loop {
            match try_lock(&path)? {
                Ok(lock) => return Ok(lock),
                Err(holder) => {
                    phase.get_or_insert_with(|| {
                        printer.phase(format!(
                            "waiting for another ssh-ec2 run in this directory (pid {holder})"
                        ))
                    });
                    poll.wait().await?;
                }
            }
        }
    }

    /// The lock if nobody holds it (for `--gc`, which leaves busy directories alone).
    pub fn try_take(state_dir: &Path, local_dir: &Path) -> Result<Option<DirLock>> {
        Ok(try_lock(&lock_path(state_dir, local_dir)?)?.ok())
    }
}

/// Where the lock files are.
fn locks_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("locks")
}

/// The lock file of `local_dir`, in a directory that exists.
fn lock_path(state_dir: &Path, local_dir: &Path) -> Result<PathBuf> {
    let dir = locks_dir(state_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.join(lock_file_name(local_dir)))
}

/// Whether a run holds the lock of `local_dir`.
pub fn busy(state_dir: &Path, local_dir: &Path) -> bool {
    let path = locks_dir(state_dir).join(lock_file_name(local_dir));
    path.exists() && matches!(try_lock(&path), Ok(Err(_)))
}

/// Removes the lock files in `state_dir` that no run holds.
pub fn sweep(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(locks_dir(state_dir)) else {
        return;
    };
    for entry in entries.filter_map(|entry| entry.ok()) {
        let path = entry.path();
        // Unlinked while held: a run that opened it before sees that and opens a new one.
        if let Ok(Ok(_held)) = try_lock(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The lock, or the pid of the run that holds it.
fn try_lock(path: &PathBuf) -> Result<Result<DirLock, String>> {
    loop {
        if let Some(taken) = try_lock_once(path)? {
            return Ok(taken);
        }
    }
}

/// `None`: the file was removed (by `--gc`) between its opening and its locking.
fn try_lock_once(path: &PathBuf) -> Result<Option<Result<DirLock, String>>> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let linked = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
            let held = lock.metadata()?;
            if linked != Some((held.dev(), held.ino())) {
                return Ok(None);
            }
            // The holder's pid, for the message another run prints.
            lock.set_len(0)?;
            lock.rewind()?;
            write!(lock, "{}", std::process::id())?;
            Ok(Some(Ok(DirLock { _held: lock })))
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Ok(Some(Err(holder.trim().to_string())))
        }
        Err((_, errno)) => Err(errno).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// The same for a directory in every build of ssh-ec2: two versions side by side (an upgrade
/// during a run) must still exclude each other, so no hasher whose output may change.
fn lock_file_name(local_dir: &Path) -> String {
    Sha256::digest(local_dir.as_os_str().as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_name_is_a_stable_digest_of_the_path() {
        // `printf %s /home/me/proj | sha256sum`
        assert_eq!(
            lock_file_name(Path::new("/home/me/proj")),
            "4c3b4937ddaa21c332cba088d92b4d242d3bc33a6e82ec6ed46c2bbb31262ed3"
        );
    }
}
