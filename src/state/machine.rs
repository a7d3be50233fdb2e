//! This machine's id, kept in the state directory (`machine-id`): the instances it launches
//! are tagged with it. The host name changes (DHCP, VPN) and would lose them; the id stays
//! with the state directory, which holds their keys anyway.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

const FILE: &str = "machine-id";

/// Reads the id, or makes it on first use.
pub fn load_or_create(state_dir: &Path) -> Result<String> {
    let path = state_dir.join(FILE);
    if !path.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        // Written aside, then linked into place: a run starting at the same time either sees
        // no file or a whole one, and the first link wins (a rename would replace it).
        let aside = state_dir.join(format!("{FILE}.{:016x}", rand::random::<u64>()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .and_then(|mut file| writeln!(file, "{:032x}", rand::random::<u128>()))
            .and_then(|()| match fs::hard_link(&aside, &path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => Ok(()),
            });
        let _ = fs::remove_file(&aside);
        written
            .with_context(|| format!("cannot create this machine's id in {}", path.display()))?;
    }
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read this machine's id from {}", path.display()))?;
    let id = text.trim();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "{} is damaged (it should hold 32 hex digits): restore it from a backup; or delete it, \
             and terminate the instances this machine left stopped or running first, since the \
             next run will not find them",
            path.display()
        );
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_private_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ssh-ec2");
        let id = load_or_create(&state).unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(load_or_create(&state).unwrap(), id);
        let mode = fs::metadata(state.join(FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(&state).unwrap().count(),
            1,
            "nothing left aside"
        );
        fs::write(state.join(FILE), "").unwrap();
        let damaged = load_or_create(&state).unwrap_err().to_string();
        assert!(damaged.contains("is damaged"), "{damaged}");
    }
}
