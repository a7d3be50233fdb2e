//! One run at a time per directory: two runs would share the directory's instance, and the
//! first to finish would terminate it under the other.

use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

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
        let mut hasher = std::hash::DefaultHasher::new();
        local_dir.hash(&mut hasher);
        let path = dir.join(format!("{:016x}", hasher.finish()));
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
