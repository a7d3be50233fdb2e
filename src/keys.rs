//! The SSH keys of each instance, kept under the XDG state directory:
//! `instances/<id>/login_ed25519` (0600, only for per-run keys) and
//! `instances/<id>/host_ed25519.pub`, the only host key ssh-ec2 accepts from that instance, and
//! `instances/<id>/manifest`, what its last sync left on both sides; `--ssh-config` adds
//! `known_hosts` (that host key, for OpenSSH) and `ssh_config_entry` (where `--install` wrote
//! its OpenSSH entry, which goes with the keys); `volume_gib`, its root volume's size, prices
//! it. Before the instance exists
//! they wait in `instances/pending-<launch id>/`, beside the launch's record (`launch.json`, see
//! `fleet::journal`); adopting the instance renames that directory in one step.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

/// How ssh-ec2 logs in to instances it launches.
#[derive(Debug, Clone)]
pub enum LoginKey {
    /// A fresh ed25519 key per instance, handed over in user-data: nothing left in EC2.
    PerRun,
    /// An existing EC2 key pair and its private key (`-i`, AWS_KEY_NAME).
    KeyPair {
        name: String,
        key: Arc<PrivateKey>,
        /// Where it was read from, for OpenSSH (`--ssh-config`).
        path: PathBuf,
    },
}

impl LoginKey {
    /// The EC2 key pair to launch with, if one is used.
    pub fn key_pair_name(&self) -> Option<&str> {
        match self {
            LoginKey::KeyPair { name, .. } => Some(name),
            LoginKey::PerRun => None,
        }
    }
}

/// What ssh-ec2 needs to reach one instance.
#[derive(Clone)]
pub struct InstanceKeys {
    pub login: Arc<PrivateKey>,
    pub host: PublicKey,
}

/// Keys made for an instance about to be launched; moved under its id once it exists.
pub struct NewKeys {
    launch: String,
    pub keys: InstanceKeys,
    /// The login public key to install through user-data, for per-run keys.
    pub authorized_key: Option<String>,
    pub host_private_openssh: String,
    pub host_public_openssh: String,
}

pub struct KeyStore {
    root: PathBuf,
}

const LOGIN_FILE: &str = "login_ed25519";
const HOST_FILE: &str = "host_ed25519.pub";
/// The EC2 key pair an instance was launched with, instead of a per-run key.
const KEY_PAIR_FILE: &str = "key_pair";
/// The record of the launch the keys are waiting for.
const LAUNCH_FILE: &str = "launch.json";
const PENDING: &str = "pending-";
/// The pinned host key in OpenSSH's known_hosts form, for `--ssh-config`.
const KNOWN_HOSTS_FILE: &str = "known_hosts";
/// Where `--ssh-config --install` wrote the instance's entry, removed when it is forgotten.
const SSH_CONFIG_ENTRY_FILE: &str = "ssh_config_entry";
/// The GiB of the root volume it was launched with, to price it.
const VOLUME_FILE: &str = "volume_gib";

impl KeyStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("instances"),
        }
    }

    fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.root.join(instance_id)
    }

    /// What the last sync left on both sides (see `sync::Manifest`); forgotten with the keys.
    pub fn manifest_path(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join("manifest")
    }

    fn pending_dir(&self, launch: &str) -> PathBuf {
        self.root.join(format!("{PENDING}{launch}"))
    }

    /// Generates the host key (and a per-run login key) into the private directory of `launch`.
    pub fn generate(&self, login: &LoginKey, launch: &str) -> Result<NewKeys> {
        let dir = self.pending_dir(launch);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the key directory {}", dir.display()))?;
        let mut host = random_ed25519()?;
        host.set_comment("ssh-ec2-host");
        let host_public_openssh = host.public_key().to_openssh()?;
        write_private(&dir.join(HOST_FILE), &host_public_openssh)?;
        let (login, authorized_key) = match login {
            LoginKey::KeyPair { name, key, .. } => {
                write_private(&dir.join(KEY_PAIR_FILE), name)?;
                (key.clone(), None)
            }
            LoginKey::PerRun => {
                let mut key = random_ed25519()?;
                key.set_comment("ssh-ec2");
                write_private(&dir.join(LOGIN_FILE), &key.to_openssh(LineEnding::LF)?)?;
                let public = key.public_key().to_openssh()?;
                (Arc::new(key), Some(public))
            }
        };
        Ok(NewKeys {
            launch: launch.to_string(),
            keys: InstanceKeys {
                login,
                host: host.public_key().clone(),
            },
            authorized_key,
            host_private_openssh: host.to_openssh(LineEnding::LF)?.to_string(),
            host_public_openssh,
        })
    }

    /// Files the keys under the instance that now exists.
    pub fn adopt(&self, new: NewKeys, instance_id: &str) -> Result<InstanceKeys> {
        self.adopt_launch(&new.launch, instance_id)?;
        Ok(new.keys)
    }

    /// Files the keys of `launch` under its instance, which now exists; its record goes.
    pub fn adopt_launch(&self, launch: &str, instance_id: &str) -> Result<()> {
        let target = self.instance_dir(instance_id);
        fs::rename(self.pending_dir(launch), &target).with_context(|| {
            format!(
                "cannot keep the keys of {instance_id} in {}",
                target.display()
            )
        })?;
        let _ = fs::remove_file(target.join(LAUNCH_FILE));
        Ok(())
    }

    /// Drops keys whose instance was never launched.
    pub fn discard(&self, new: NewKeys) {
        self.discard_launch(&new.launch);
    }

    /// Drops the keys and the record of a launch that made no instance (or whose instance ended).
    pub fn discard_launch(&self, launch: &str) {
        let _ = fs::remove_dir_all(self.pending_dir(launch));
    }

    /// Writes (or replaces) the record of `launch` beside its keys, whole or not at all.
    pub fn record_launch(&self, launch: &str, record: &str) -> Result<()> {
        let path = self.pending_dir(launch).join(LAUNCH_FILE);
        let aside = path.with_extension("new");
        fs::write(&aside, record)
            .and_then(|()| fs::rename(&aside, &path))
            .with_context(|| format!("cannot write the launch record {}", path.display()))
    }

    /// The records of the launches whose instances were never adopted, as written.
    pub fn launch_records(&self) -> Vec<String> {
        self.entries()
            .iter()
            .filter_map(|name| name.strip_prefix(PENDING))
            .filter_map(|launch| {
                fs::read_to_string(self.pending_dir(launch).join(LAUNCH_FILE)).ok()
            })
            .collect()
    }

    /// The keys of an instance launched earlier from this machine.
    pub fn load(&self, instance_id: &str, login: &LoginKey) -> Result<InstanceKeys> {
        let dir = self.instance_dir(instance_id);
        let missing = || {
            format!(
                "instance {instance_id} belongs to this directory, but its SSH keys are not in {} \
                 (was it launched from another machine?): terminate it \
                 (`ssh-ec2 --gc --yes`, or `aws ec2 terminate-instances --instance-ids \
                 {instance_id}`) and run again",
                dir.display()
            )
        };
        let host = fs::read_to_string(dir.join(HOST_FILE)).with_context(missing)?;
        let host = PublicKey::from_openssh(host.trim()).with_context(missing)?;
        let launched_with = fs::read_to_string(dir.join(KEY_PAIR_FILE)).ok();
        let login = match (login, launched_with) {
            (LoginKey::KeyPair { name, key, .. }, Some(pair)) if *name == pair => key.clone(),
            (LoginKey::PerRun, None) => {
                let text = fs::read_to_string(dir.join(LOGIN_FILE)).with_context(missing)?;
                Arc::new(PrivateKey::from_openssh(text).with_context(missing)?)
            }
            // A key the instance does not know would be refused until the boot timeout.
            (_, Some(pair)) => bail!(
                "instance {instance_id} was launched with the EC2 key pair `{pair}`: pass its \
                 private key again (-i FILE --key-name {pair})"
            ),
            (LoginKey::KeyPair { name, .. }, None) => bail!(
                "instance {instance_id} was launched with a key of its own, not the key pair \
                 `{name}`: drop -i/--key-name (AWS_PEM/AWS_KEY_NAME) to reuse it"
            ),
        };
        Ok(InstanceKeys { login, host })
    }

    /// Whether this machine holds the keys of `instance_id`.
    pub fn holds(&self, instance_id: &str) -> bool {
        self.instance_dir(instance_id).join(HOST_FILE).is_file()
    }

    /// The instances whose keys (or manifest) are kept here.
    pub fn instance_ids(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter(|name| !name.starts_with(PENDING))
            .collect()
    }

    /// Launches whose keys wait without a record, untouched for `quiet`: their run ended
    /// between generating the keys and writing the record, before anything was created.
    pub fn unrecorded_launches(&self, quiet: std::time::Duration) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter_map(|name| name.strip_prefix(PENDING).map(str::to_string))
            .filter(|launch| {
                let dir = self.pending_dir(launch);
                !dir.join(LAUNCH_FILE).exists()
                    && fs::metadata(&dir)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= quiet))
            })
            .collect()
    }

    fn entries(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect()
    }

    /// Forgets a terminated instance, and the OpenSSH entry installed for it.
    pub fn forget(&self, instance_id: &str) {
        let dir = self.instance_dir(instance_id);
        if let Some(entry) = self.ssh_config_entry(instance_id) {
            let _ = fs::remove_file(entry);
        }
        let _ = fs::remove_dir_all(dir);
    }

    /// What OpenSSH needs to log in to the instance as ssh-ec2 does: the login key's file, and
    /// a known_hosts file (written here) that holds the pinned host key under `host_alias`.
    pub fn openssh_files(
        &self,
        instance_id: &str,
        login: &LoginKey,
        host_alias: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let keys = self.load(instance_id, login)?;
        let dir = self.instance_dir(instance_id);
        let identity = match login {
            LoginKey::PerRun => dir.join(LOGIN_FILE),
            LoginKey::KeyPair { path, .. } => path.clone(),
        };
        let known_hosts = dir.join(KNOWN_HOSTS_FILE);
        let line = format!("{host_alias} {}\n", keys.host.to_openssh()?);
        fs::write(&known_hosts, line)
            .with_context(|| format!("cannot write {}", known_hosts.display()))?;
        Ok((identity, known_hosts))
    }

    /// Remembers the size of the root volume the instance was launched with; a price without
    /// it only lacks the volume, so a failure to write is no error.
    pub fn note_volume(&self, instance_id: &str, gib: u32) {
        let _ = fs::write(
            self.instance_dir(instance_id).join(VOLUME_FILE),
            gib.to_string(),
        );
    }

    /// The size of the root volume the instance was launched with, if it was noted.
    pub fn volume(&self, instance_id: &str) -> Option<u32> {
        let text = fs::read_to_string(self.instance_dir(instance_id).join(VOLUME_FILE)).ok()?;
        text.trim().parse().ok()
    }

    /// The OpenSSH config entry installed for the instance, if there is one.
    pub fn ssh_config_entry(&self, instance_id: &str) -> Option<PathBuf> {
        let marker = self.instance_dir(instance_id).join(SSH_CONFIG_ENTRY_FILE);
        let entry = fs::read_to_string(marker).ok()?;
        Some(PathBuf::from(entry.trim_end_matches('\n'))).filter(|e| e.exists())
    }

    /// Remembers that `entry` (an OpenSSH config file) belongs to the instance: it goes when
    /// the instance is forgotten.
    pub fn note_ssh_config_entry(&self, instance_id: &str, entry: &Path) -> Result<()> {
        let marker = self.instance_dir(instance_id).join(SSH_CONFIG_ENTRY_FILE);
        fs::write(&marker, format!("{}\n", entry.display()))
            .with_context(|| format!("cannot write {}", marker.display()))
    }
}

fn random_ed25519() -> Result<PrivateKey> {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate an ed25519 key")
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Loads the private key of an EC2 key pair (`-i FILE`).
pub fn load_identity(path: &Path) -> Result<PrivateKey> {
    if !path.is_file() {
        bail!(
            "identity file {} does not exist: pass -i with the key pair's private key",
            path.display()
        );
    }
    russh::keys::load_secret_key(path, None).with_context(|| {
        format!(
            "cannot use {} as a private key (an encrypted key? decrypt a copy with `ssh-keygen -p -f FILE`)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_adoption_and_reload() {
        let dir = std::env::temp_dir().join(format!("ssh-ec2-keys-{}", std::process::id()));
        let store = KeyStore::new(&dir);
        let new = store.generate(&LoginKey::PerRun, "0abc").unwrap();
        store.record_launch("0abc", "{}").unwrap();
        assert_eq!(store.launch_records(), ["{}"]);
        assert!(new.host_private_openssh.contains("OPENSSH PRIVATE KEY"));
        assert!(
            new.authorized_key
                .as_deref()
                .unwrap()
                .starts_with("ssh-ed25519 ")
        );
        let made = store.adopt(new, "i-0123").unwrap();
        assert!(
            store.launch_records().is_empty(),
            "adopted: no longer pending"
        );
        assert!(!dir.join("instances/i-0123").join(LAUNCH_FILE).exists());
        let loaded = store.load("i-0123", &LoginKey::PerRun).unwrap();
        assert_eq!(loaded.host, made.host);
        assert_eq!(loaded.login.public_key(), made.login.public_key());
        let mode = fs::metadata(dir.join("instances/i-0123").join(LOGIN_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        store.forget("i-0123");
        let err = format!(
            "{:#}",
            store.load("i-0123", &LoginKey::PerRun).err().unwrap()
        );
        assert!(err.contains("terminate-instances"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
