//! The OpenSSH side of an instance, for `--ssh-config`: a config block that reaches it as
//! ssh-ec2 does (its login key, its pinned host key required), the `known_hosts` file kept
//! beside its keys, and the entry `--install` writes under `~/.ssh/ssh-ec2/` (which
//! `~/.ssh/config` includes), remembered in `ssh_config_entry` so that it goes with the keys.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use russh::keys::PublicKey;

use super::keys::{LOGIN_FILE, LoginKey};
use super::{Store, overwrite_private};
use crate::settings::values::{HostPort, one_word};

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
    /// The config block for `entry`. The user and host may come from the instance's tags or
    /// from AWS, so they are checked again here: each must stay one word on its line.
    pub fn ssh_config_block(&self, entry: &Entry) -> Result<String> {
        let (id, user, host) = (entry.id, entry.user, &entry.address.host);
        let refused = |e: String| anyhow::anyhow!("cannot write an OpenSSH entry for {id}: {e}");
        one_word(user, "the login user").map_err(refused)?;
        one_word(host, "the host to dial").map_err(refused)?;
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
            dir = comment_text(&entry.local_dir.display().to_string()),
            alias = alias_for(entry.local_dir),
            // HostName expands `%` tokens (an IPv6 zone has one).
            host = host.replace('%', "%%"),
            port = entry.address.port,
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
    /// a known_hosts file (written here) that holds the host keys ssh-ec2 accepts, under its id.
    fn openssh_files(&self, instance_id: &str, login: &LoginKey) -> Result<(PathBuf, PathBuf)> {
        let keys = self.load(instance_id, login)?;
        let identity = match login {
            LoginKey::PerRun => self.instance_dir(instance_id).join(LOGIN_FILE),
            LoginKey::KeyPair { path, .. } => path.clone(),
        };
        let known_hosts = self.write_known_hosts(instance_id, keys.accepted_hosts())?;
        Ok((identity, known_hosts))
    }

    /// Writes the known_hosts file OpenSSH checks the instance with: `hosts`, under its id.
    pub(super) fn write_known_hosts<'k>(
        &self,
        instance_id: &str,
        hosts: impl Iterator<Item = &'k PublicKey>,
    ) -> Result<PathBuf> {
        let known_hosts = self.known_hosts_path(instance_id);
        let mut lines = String::new();
        for key in hosts {
            lines.push_str(&format!("{instance_id} {}\n", key.to_openssh()?));
        }
        fs::write(&known_hosts, lines)
            .with_context(|| format!("cannot write {}", known_hosts.display()))?;
        Ok(known_hosts)
    }

    /// The known_hosts file `--ssh-config` writes for the instance.
    pub(super) fn known_hosts_path(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join(KNOWN_HOSTS_FILE)
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

/// Text for a `#` comment line: a newline in it would end the comment and start a directive,
/// so control characters (and the backslash that escapes them) are written escaped.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\\' => "\\\\".to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A path as an OpenSSH config argument: quoted, `%` escaped (these options expand tokens).
fn config_path(path: &Path) -> String {
    format!("\"{}\"", path.display().to_string().replace('%', "%%"))
}

/// Adds `Include <entries>/*.conf` to `~/.ssh/config` once, at the top: OpenSSH applies an
/// Include that follows a Host line to that host only.
fn include_entries(home: &Path, entries: &Path) -> Result<PathBuf> {
    let config = home.join(".ssh").join("config");
    // A config linked from elsewhere (a dotfiles repository) is updated where it is: replacing
    // the link with a file would cut it off from its repository.
    let file = link_target(&config)?;
    // Absolute: OpenSSH expands `~` from the password database, which may not be $HOME.
    let include = format!("Include {}", config_path(&entries.join("*.conf")));
    let current = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    if current.lines().any(|line| line.trim() == include) {
        return Ok(config);
    }
    let updated = format!("# Added by ssh-ec2 --ssh-config --install\n{include}\n\n{current}");
    let aside = file.with_extension("ssh-ec2-new");
    let _ = fs::remove_file(&aside);
    overwrite_private(&aside, &updated)?;
    if let Ok(meta) = fs::metadata(&file) {
        // Kept as the user had it.
        fs::set_permissions(&aside, meta.permissions())
            .with_context(|| format!("cannot set the mode of {}", aside.display()))?;
    }
    fs::rename(&aside, &file).with_context(|| format!("cannot update {}", file.display()))?;
    Ok(config)
}

/// The file that writing `path` means: where its symbolic links lead, else `path` itself.
fn link_target(path: &Path) -> Result<PathBuf> {
    // As the kernel allows (ELOOP beyond).
    const MAX_LINKS: usize = 40;
    let mut file = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::read_link(&file) {
            // A relative target is relative to the link's directory; an absolute one replaces.
            Ok(target) => file = file.parent().unwrap_or(Path::new("/")).join(target),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(file),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        }
    }
    anyhow::bail!(
        "{} leads through more than {MAX_LINKS} symbolic links: fix the link, then run \
         `ssh-ec2 --ssh-config --install` again",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_paths_are_spelled_for_openssh() {
        assert_eq!(alias_for(Path::new("/w/my proj*")), "ssh-ec2-my-proj-");
        assert_eq!(config_path(Path::new("/a b/100%")), "\"/a b/100%%\"");
        assert_eq!(
            comment_text("/w/x\nProxyCommand y\\n\u{1b}[2J"),
            "/w/x\\nProxyCommand y\\\\n\\u{1b}[2J"
        );
    }

    #[test]
    fn writing_a_linked_config_means_writing_where_the_links_lead() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles/ssh_config");
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        let relative = dir.path().join("relative");
        std::os::unix::fs::symlink("dotfiles/ssh_config", &relative).unwrap();
        let absolute = dir.path().join("absolute");
        std::os::unix::fs::symlink(&relative, &absolute).unwrap();
        for link in [&relative, &absolute] {
            assert_eq!(
                link_target(link).unwrap(),
                dir.path().join("dotfiles/ssh_config")
            );
        }
        let plain = dir.path().join("plain");
        assert_eq!(link_target(&plain).unwrap(), plain, "not there yet: itself");
        let looped = dir.path().join("loop");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        assert!(link_target(&looped).is_err());
    }
}
