//! The OpenSSH side of an instance, for `--ssh-config`: a config block that reaches it as
//! ssh-ec2 does (its login key, its pinned host key required), the `known_hosts` file kept
//! beside its keys, and the entry `--install` writes under `~/.ssh/ssh-ec2/` (which
//! `~/.ssh/config` includes), remembered in `ssh_config_entry` so that it goes with the keys.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::keys::{LOGIN_FILE, LoginKey};
use super::{Store, overwrite_private};
use crate::settings::values::HostPort;

/// The pinned host key in OpenSSH's known_hosts form, for `--ssh-config`.
const KNOWN_HOSTS_FILE: &str = "known_hosts";
/// Where `--ssh-config --install` wrote the instance's entry, removed when it is forgotten.
const SSH_CONFIG_ENTRY_FILE: &str = "ssh_config_entry";
/// Where installed entries go, under `~/.ssh`: one file per instance.
const ENTRIES_DIR: &str = "ssh-ec2";

/// One instance of a directory, as OpenSSH is to reach it.
pub struct Entry<'a> {
    pub local_dir: &'a Path,
    pub login: &'a LoginKey,
    pub id: &'a str,
    pub user: &'a str,
    pub address: &'a HostPort,
}

/// What `install_ssh_config_entry` wrote.
pub struct Installed {
    pub alias: String,
    pub entry: PathBuf,
    /// The user's OpenSSH config, which includes it.
    pub config: PathBuf,
}

impl Store {
    /// The config block for `entry`.
    pub fn ssh_config_block(&self, entry: &Entry) -> Result<String> {
        // The host key is pinned under the instance's id: its address changes, it does not.
        let (identity, known_hosts) = self.openssh_files(entry.id, entry.login)?;
        Ok(format!(
            "# ssh-ec2: instance {id} of {dir}\n\
             Host {alias}\n    \
                 HostName {host}\n    \
                 Port {port}\n    \
                 User {user}\n    \
                 IdentityFile {identity}\n    \
                 IdentitiesOnly yes\n    \
                 UserKnownHostsFile {known_hosts}\n    \
                 HostKeyAlias {id}\n    \
                 StrictHostKeyChecking yes\n",
            id = entry.id,
            dir = entry.local_dir.display(),
            alias = alias_for(entry.local_dir),
            host = entry.address.host,
            port = entry.address.port,
            user = entry.user,
            identity = config_path(&identity),
            known_hosts = config_path(&known_hosts),
        ))
    }

    /// Writes the entry where `~/.ssh/config` (under `home`) includes it.
    pub fn install_ssh_config_entry(&self, entry: &Entry, home: &Path) -> Result<Installed> {
        let block = self.ssh_config_block(entry)?;
        let entries = home.join(".ssh").join(ENTRIES_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&entries)
            .with_context(|| format!("cannot create {}", entries.display()))?;
        let file = entries.join(format!("{}.conf", entry.id));
        let marker = self.instance_dir(entry.id).join(SSH_CONFIG_ENTRY_FILE);
        fs::write(&marker, format!("{}\n", file.display()))
            .with_context(|| format!("cannot write {}", marker.display()))?;
        overwrite_private(&file, &block)?;
        Ok(Installed {
            alias: alias_for(entry.local_dir),
            entry: file,
            config: include_entries(home, &entries)?,
        })
    }

    /// Points the entry installed for the instance, if any, at its address: a stopped instance
    /// that starts again has a new one.
    pub fn refresh_ssh_config_entry(&self, entry: &Entry) -> Result<()> {
        let Some(installed) = self.ssh_config_entry(entry.id) else {
            return Ok(());
        };
        let block = self.ssh_config_block(entry)?;
        if fs::read_to_string(&installed).ok().as_deref() != Some(block.as_str()) {
            overwrite_private(&installed, &block)?;
        }
        Ok(())
    }

    /// The OpenSSH config entry installed for the instance, if there is one.
    pub fn ssh_config_entry(&self, instance_id: &str) -> Option<PathBuf> {
        let marker = self.instance_dir(instance_id).join(SSH_CONFIG_ENTRY_FILE);
        let entry = fs::read_to_string(marker).ok()?;
        Some(PathBuf::from(entry.trim_end_matches('\n'))).filter(|e| e.exists())
    }

    /// What OpenSSH needs to log in to the instance as ssh-ec2 does: the login key's file, and
    /// a known_hosts file (written here) that holds the pinned host key under its id.
    fn openssh_files(&self, instance_id: &str, login: &LoginKey) -> Result<(PathBuf, PathBuf)> {
        let keys = self.load(instance_id, login)?;
        let dir = self.instance_dir(instance_id);
        let identity = match login {
            LoginKey::PerRun => dir.join(LOGIN_FILE),
            LoginKey::KeyPair { path, .. } => path.clone(),
        };
        let known_hosts = dir.join(KNOWN_HOSTS_FILE);
        let line = format!("{instance_id} {}\n", keys.host.to_openssh()?);
        fs::write(&known_hosts, line)
            .with_context(|| format!("cannot write {}", known_hosts.display()))?;
        Ok((identity, known_hosts))
    }
}

/// `ssh-ec2-<directory name>`, with only the characters a Host pattern takes literally.
fn alias_for(local_dir: &Path) -> String {
    let name = local_dir
        .file_name()
        .map_or("root".into(), |n| n.to_string_lossy());
    let name: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    format!("ssh-ec2-{name}")
}

/// A path as an OpenSSH config argument: quoted, `%` escaped (these options expand tokens).
fn config_path(path: &Path) -> String {
    format!("\"{}\"", path.display().to_string().replace('%', "%%"))
}

/// Adds `Include <entries>/*.conf` to `~/.ssh/config` once, at the top: OpenSSH applies an
/// Include that follows a Host line to that host only.
fn include_entries(home: &Path, entries: &Path) -> Result<PathBuf> {
    let config = home.join(".ssh").join("config");
    // Absolute: OpenSSH expands `~` from the password database, which may not be $HOME.
    let include = format!("Include {}", config_path(&entries.join("*.conf")));
    let current = match fs::read_to_string(&config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config.display())),
    };
    if current.lines().any(|line| line.trim() == include) {
        return Ok(config);
    }
    let updated = format!("# Added by ssh-ec2 --ssh-config --install\n{include}\n\n{current}");
    let aside = config.with_extension("ssh-ec2-new");
    let _ = fs::remove_file(&aside);
    overwrite_private(&aside, &updated)?;
    if let Ok(meta) = fs::metadata(&config) {
        // Kept as the user had it.
        fs::set_permissions(&aside, meta.permissions())
            .with_context(|| format!("cannot set the mode of {}", aside.display()))?;
    }
    fs::rename(&aside, &config).with_context(|| format!("cannot update {}", config.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_paths_are_spelled_for_openssh() {
        assert_eq!(alias_for(Path::new("/w/my proj*")), "ssh-ec2-my-proj-");
        assert_eq!(config_path(Path::new("/a b/100%")), "\"/a b/100%%\"");
    }
}
