//! One run at a time per directory: two runs would share the directory's instance, and the
//! first to finish would terminate it under the other.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// Held for the whole run; the kernel releases it if ssh-ec2 dies.
pub struct DirLock {
    _held: Flock<File>,
}

impl DirLock {
    pub fn acquire(state_dir: &Path, local_dir: &Path) -> Result<DirLock> {
        let dir = state_dir.join("locks");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(lock_file_name(local_dir));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The holder's pid, for the message another run prints.
                lock.set_len(0)?;
                lock.rewind()?;
                write!(lock, "{}", std::process::id())?;
                Ok(DirLock { _held: lock })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "another ssh-ec2 run (pid {}) is using {} and its instance: wait for it to \
                     finish, or stop it with Ctrl-C",
                    holder.trim(),
                    local_dir.display()
                )
            }
            Err((_, errno)) => {
                Err(errno).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
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
