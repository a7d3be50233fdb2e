//! The host key after the launch. The user-data carried the first one, where whoever may read
//! the instance's user-data (through the API or its metadata service) finds it; right after
//! the first pinned connection, a key made for the instance replaces it (see
//! `session::host_key`). Its public half waits in `host_ed25519.next.pub`, accepted beside the
//! pinned key, until the instance is seen presenting it; then it is the pinned key. A try that
//! did not end well (the key on the instance's disk, sshd not reloaded) is kept there beside
//! the next try's: a reboot may bring either.
//! `host_key_origin` says where the pinned key came from.

use std::fs;

use anyhow::{Context, Result};
use russh::keys::PublicKey;

use super::Store;
use super::keys::{HOST_FILE, NEXT_HOST_FILE};

/// Where the pinned host key of an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyOrigin {
    /// The user-data (every instance at first, and those launched by earlier versions).
    UserData,
    /// The user-data, and it stays: the login user may not install another (no sudo). Said
    /// once, then left alone.
    UserDataKept,
    /// Made for the instance and installed over a pinned connection.
    Installed,
}

const ORIGIN_FILE: &str = "host_key_origin";
const KEPT: &str = "user-data, kept";
const INSTALLED: &str = "installed";

impl Store {
    pub fn host_key_origin(&self, instance_id: &str) -> HostKeyOrigin {
        let origin = fs::read_to_string(self.instance_dir(instance_id).join(ORIGIN_FILE));
        match origin.as_deref().map(str::trim) {
            Ok(INSTALLED) => HostKeyOrigin::Installed,
            Ok(KEPT) => HostKeyOrigin::UserDataKept,
            _ => HostKeyOrigin::UserData,
        }
    }

    /// Remembers that the user-data's host key stays (said once).
    pub fn keep_user_data_host_key(&self, instance_id: &str) -> Result<()> {
        self.write_origin(instance_id, KEPT)
    }

    /// Accepts `key` beside the pinned host key (and earlier tries) from now on, before the
    /// instance is given it.
    pub fn stage_host_key(&self, instance_id: &str, key: &PublicKey) -> Result<()> {
        let path = self.instance_dir(instance_id).join(NEXT_HOST_FILE);
        let mut staged = fs::read_to_string(&path).unwrap_or_default();
        staged.push_str(&format!("{}\n", key.to_openssh()?));
        super::replace(&path, &staged)
            .with_context(|| format!("cannot keep the new host key of {instance_id}"))
    }

    /// Forgets the staged host keys: the instance was never given one.
    pub fn unstage_host_key(&self, instance_id: &str) {
        let _ = fs::remove_file(self.instance_dir(instance_id).join(NEXT_HOST_FILE));
    }

    /// The instance presents `key`, one of the staged host keys: it is the only one accepted
    /// from now on, by ssh-ec2 and by the OpenSSH entry `--ssh-config` wrote, if any.
    pub fn pin_staged_host_key(&self, instance_id: &str, key: &PublicKey) -> Result<()> {
        let pinned = self.instance_dir(instance_id).join(HOST_FILE);
        super::replace(&pinned, &key.to_openssh()?)
            .with_context(|| format!("cannot pin the new host key of {instance_id}"))?;
        self.unstage_host_key(instance_id);
        self.write_origin(instance_id, INSTALLED)?;
        if self.known_hosts_path(instance_id).exists() {
            self.write_known_hosts(instance_id, std::iter::once(key))?;
        }
        Ok(())
    }

    fn write_origin(&self, instance_id: &str, origin: &str) -> Result<()> {
        let path = self.instance_dir(instance_id).join(ORIGIN_FILE);
        fs::write(&path, format!("{origin}\n"))
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::keys::{LoginKey, new_host_key};

    #[test]
    fn a_staged_host_key_is_accepted_beside_the_pinned_one_until_it_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let launched = store.generate(&LoginKey::PerRun, "0abc").unwrap();
        let user_data_key = launched.keys.host.clone();
        store.adopt(launched, "i-1").unwrap();
        assert_eq!(store.host_key_origin("i-1"), HostKeyOrigin::UserData);

        let key = || new_host_key().unwrap().public_key().clone();
        let next = key();
        store.stage_host_key("i-1", &next).unwrap();
        let keys = store.load("i-1", &LoginKey::PerRun).unwrap();
        let accepted: Vec<_> = keys.accepted_hosts().cloned().collect();
        assert_eq!(accepted, [user_data_key.clone(), next.clone()]);

        store.unstage_host_key("i-1");
        let keys = store.load("i-1", &LoginKey::PerRun).unwrap();
        assert_eq!(keys.accepted_hosts().count(), 1, "never given: forgotten");

        // A try that ended badly stays accepted beside the next one.
        let earlier = key();
        store.stage_host_key("i-1", &earlier).unwrap();
        store.stage_host_key("i-1", &next).unwrap();
        let keys = store.load("i-1", &LoginKey::PerRun).unwrap();
        let accepted: Vec<_> = keys.accepted_hosts().cloned().collect();
        assert_eq!(accepted, [user_data_key, earlier, next.clone()]);
        let known_hosts = store.write_known_hosts("i-1", keys.accepted_hosts());
        let known_hosts = known_hosts.unwrap();
        store.pin_staged_host_key("i-1", &next).unwrap();
        let keys = store.load("i-1", &LoginKey::PerRun).unwrap();
        let accepted: Vec<_> = keys.accepted_hosts().cloned().collect();
        assert_eq!(
            accepted,
            std::slice::from_ref(&next),
            "the user-data's key is refused"
        );
        assert_eq!(store.host_key_origin("i-1"), HostKeyOrigin::Installed);
        let openssh = fs::read_to_string(known_hosts).unwrap();
        assert_eq!(openssh, format!("i-1 {}\n", next.to_openssh().unwrap()));

        store.keep_user_data_host_key("i-1").unwrap();
        assert_eq!(store.host_key_origin("i-1"), HostKeyOrigin::UserDataKept);
    }
}
