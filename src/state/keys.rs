//! The SSH keys of each instance: `login_ed25519` (0600, only for per-instance keys), or
//! `key_pair` (the name of the EC2 key pair it was launched with), and `host_ed25519.pub`, the
//! only host key ssh-ec2 accepts from it (with the one that replaces it, while it is being
//! installed: see `host_keys`).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};

use super::{Store, create_private};

/// How ssh-ec2 logs in to instances it launches.
#[derive(Debug)]
pub enum LoginKey {
    /// A fresh ed25519 key per instance, handed over in user-data: nothing left in EC2.
    PerRun,
    /// An existing EC2 key pair and the file of its private key (`-i`, AWS_KEY_NAME), read
    /// when it is first needed.
    KeyPair {
        name: String,
        path: PathBuf,
        key: OnceLock<Arc<PrivateKey>>,
    },
}

impl LoginKey {
    pub fn key_pair(name: String, path: PathBuf) -> LoginKey {
        LoginKey::KeyPair {
            name,
            path,
            key: OnceLock::new(),
        }
    }

    /// The EC2 key pair to launch with, if one is used.
    pub fn key_pair_name(&self) -> Option<&str> {
        match self {
            LoginKey::KeyPair { name, .. } => Some(name),
            LoginKey::PerRun => None,
        }
    }

    /// The key pair's private key, read on first use; `None` for per-instance keys.
    pub fn key_pair_key(&self) -> Result<Option<Arc<PrivateKey>>> {
        let LoginKey::KeyPair { name, path, key } = self else {
            return Ok(None);
        };
        if let Some(key) = key.get() {
            return Ok(Some(key.clone()));
        }
        let loaded = Arc::new(load_identity(path).with_context(|| {
            format!("key pair `{name}` needs its private key (-i FILE or AWS_PEM)")
        })?);
        Ok(Some(key.get_or_init(|| loaded).clone()))
    }
}

/// What ssh-ec2 needs to reach one instance.
#[derive(Clone)]
pub struct InstanceKeys {
    pub login: Arc<PrivateKey>,
    /// The pinned host key.
    pub host: PublicKey,
    /// The host keys being installed in its place (one per try): accepted too, until the
    /// instance is seen presenting one (then it is pinned), so that no moment of the swap, nor
    /// a try cut short, locks us out.
    pub next_hosts: Vec<PublicKey>,
}

impl InstanceKeys {
    /// The host keys a connection accepts.
    pub fn accepted_hosts(&self) -> impl Iterator<Item = &PublicKey> {
        std::iter::once(&self.host).chain(&self.next_hosts)
    }
}

/// Keys made for an instance about to be launched; moved under its id once it exists.
pub struct NewKeys {
    launch: String,
    pub keys: InstanceKeys,
    /// The login public key to install through user-data, for per-instance keys.
    pub authorized_key: Option<String>,
    pub host_private_openssh: String,
    pub host_public_openssh: String,
}

pub(super) const LOGIN_FILE: &str = "login_ed25519";
pub(super) const HOST_FILE: &str = "host_ed25519.pub";
/// The host keys being installed in the pinned one's place, one per line.
pub(super) const NEXT_HOST_FILE: &str = "host_ed25519.next.pub";
/// The EC2 key pair an instance was launched with, instead of a per-instance key.
const KEY_PAIR_FILE: &str = "key_pair";

impl Store {
    /// Generates the host key (and a per-instance login key) into the private directory of
    /// `launch`.
    pub fn generate(&self, login: &LoginKey, launch: &str) -> Result<NewKeys> {
        let dir = self.pending_dir(launch);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the key directory {}", dir.display()))?;
        let host = new_host_key()?;
        let host_public_openssh = host.public_key().to_openssh()?;
        create_private(&dir.join(HOST_FILE), &host_public_openssh)?;
        let (login, authorized_key) = match login.key_pair_key()? {
            Some(key) => {
                let name = login.key_pair_name().unwrap_or_default();
                create_private(&dir.join(KEY_PAIR_FILE), name)?;
                (key, None)
            }
            None => {
                let mut key = random_ed25519()?;
                key.set_comment("ssh-ec2");
                create_private(&dir.join(LOGIN_FILE), &key.to_openssh(LineEnding::LF)?)?;
                let public = key.public_key().to_openssh()?;
                (Arc::new(key), Some(public))
            }
        };
        Ok(NewKeys {
            launch: launch.to_string(),
            keys: InstanceKeys {
                login,
                host: host.public_key().clone(),
                next_hosts: Vec::new(),
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

    /// Drops keys whose instance was never launched.
    pub fn discard(&self, new: NewKeys) {
        self.discard_launch(&new.launch);
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
        let next_hosts = fs::read_to_string(dir.join(NEXT_HOST_FILE))
            .unwrap_or_default()
            .lines()
            .filter_map(|next| PublicKey::from_openssh(next.trim()).ok())
            .collect();
        let launched_with = fs::read_to_string(dir.join(KEY_PAIR_FILE)).ok();
        let login = match (login.key_pair_name(), launched_with) {
            (Some(name), Some(pair)) if name == pair => {
                login.key_pair_key()?.context("a key pair has a key")?
            }
            (None, None) => {
                let text = fs::read_to_string(dir.join(LOGIN_FILE)).with_context(missing)?;
                Arc::new(PrivateKey::from_openssh(text).with_context(missing)?)
            }
            // A key the instance does not know would be refused until the boot timeout.
            (_, Some(pair)) => bail!(
                "instance {instance_id} was launched with the EC2 key pair `{pair}`: pass its \
                 private key again (-i FILE --key-name {pair})"
            ),
            (Some(name), None) => bail!(
                "instance {instance_id} was launched with a key of its own, not the key pair \
                 `{name}`: drop -i/--key-name (AWS_PEM/AWS_KEY_NAME) to reuse it"
            ),
        };
        Ok(InstanceKeys {
            login,
            host,
            next_hosts,
        })
    }

    /// Whether this machine holds the keys of `instance_id`.
    pub fn holds(&self, instance_id: &str) -> bool {
        self.instance_dir(instance_id).join(HOST_FILE).is_file()
    }
}

/// A new host key for an instance.
pub fn new_host_key() -> Result<PrivateKey> {
    let mut host = random_ed25519()?;
    host.set_comment("ssh-ec2-host");
    Ok(host)
}

fn random_ed25519() -> Result<PrivateKey> {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate an ed25519 key")
}

/// Loads the private key of an EC2 key pair (`-i FILE`).
fn load_identity(path: &Path) -> Result<PrivateKey> {
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
        let store = Store::new(&dir);
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
        assert_eq!(store.launched_record("i-0123").as_deref(), Some("{}"));
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

    #[test]
    fn a_key_pair_s_file_is_read_when_first_needed() {
        let login = LoginKey::key_pair("team".into(), PathBuf::from("/nonexistent/key.pem"));
        assert_eq!(login.key_pair_name(), Some("team"));
        let err = format!("{:#}", login.key_pair_key().unwrap_err());
        assert!(err.contains("/nonexistent/key.pem does not exist"), "{err}");
        assert!(LoginKey::PerRun.key_pair_key().unwrap().is_none());
    }
}
