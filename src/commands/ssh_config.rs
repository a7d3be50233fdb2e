//! `ssh-ec2 --ssh-config [--install]`: an OpenSSH config block for this directory's instance,
//! so that ssh, scp, sftp and VS Code Remote-SSH reach it with its pinned host key required
//! (`StrictHostKeyChecking yes`), as ssh-ec2 does. `--install` writes it to its own file under
//! `~/.ssh/ssh-ec2/`, which `~/.ssh/config` includes; every run that reaches the instance
//! updates its address there, and the file goes when the instance is terminated.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cloud::{Cloud, State};
use crate::config::HostPort;
use crate::keys::KeyStore;
use crate::plan::Plan;
use crate::printer::Printer;

/// Where installed entries go, under `~/.ssh`: one file per instance.
const ENTRIES_DIR: &str = "ssh-ec2";

pub async fn ssh_config(plan: &Plan, home: &Path, install: bool, printer: &Printer) -> Result<i32> {
    let cloud = Cloud::connect(plan.region.as_deref(), plan.aws_profile.as_deref()).await;
    let store = KeyStore::new(&plan.state_dir);
    let instance = cloud.find_owned(&plan.ownership).await?.with_context(|| {
        format!(
            "this directory has no instance in {}: `ssh-ec2 --leave true` launches one and leaves \
             it running",
            cloud.region
        )
    })?;
    let id = &instance.id;
    if !matches!(instance.state, State::Pending | State::Running) {
        bail!(
            "{id} is {}: `ssh-ec2 --leave true` starts it (with a new address), then ask again",
            instance.state.as_str()
        );
    }
    let address = super::ssh_address(plan, &instance)?;
    let user = crate::fleet::login_user(plan, &instance);
    let block = entry(plan, &store, id, &user, &address)?;
    let alias = alias_for(&plan.local_dir);
    if !install {
        std::io::stdout()
            .lock()
            .write_all(block.as_bytes())
            .context("cannot write to standard output")?;
        return Ok(0);
    }
    let entries = home.join(".ssh").join(ENTRIES_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&entries)
        .with_context(|| format!("cannot create {}", entries.display()))?;
    let entry = entries.join(format!("{id}.conf"));
    store.note_ssh_config_entry(id, &entry)?;
    write_private(&entry, &block)?;
    let config = include_entries(home, &entries)?;
    printer.info(&format!(
        "`ssh {alias}` (and scp, sftp, VS Code Remote-SSH) now reach {id}: its entry is {}, \
         included by {}, and goes when {id} is terminated",
        entry.display(),
        config.display()
    ));
    Ok(0)
}

/// Points the entry installed for instance `id`, if any, at `address`: a stopped instance
/// that starts again has a new one.
pub fn refresh_installed(
    plan: &Plan,
    store: &KeyStore,
    id: &str,
    user: &str,
    address: &HostPort,
) -> Result<()> {
    let Some(installed) = store.ssh_config_entry(id) else {
        return Ok(());
    };
    let block = entry(plan, store, id, user, address)?;
    if fs::read_to_string(&installed).ok().as_deref() != Some(block.as_str()) {
        write_private(&installed, &block)?;
    }
    Ok(())
}

/// The config block for instance `id` of this directory, reached at `address` as `user`.
fn entry(
    plan: &Plan,
    store: &KeyStore,
    id: &str,
    user: &str,
    address: &HostPort,
) -> Result<String> {
    // The host key is pinned under the instance's id: its address changes, it does not.
    let (identity, known_hosts) = store.openssh_files(id, &plan.login, id)?;
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
        dir = plan.local_dir.display(),
        alias = alias_for(&plan.local_dir),
        host = address.host,
        port = address.port,
        identity = config_path(&identity),
        known_hosts = config_path(&known_hosts),
    ))
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
    write_private(&aside, &updated)?;
    if let Ok(meta) = fs::metadata(&config) {
        // Kept as the user had it.
        fs::set_permissions(&aside, meta.permissions())
            .with_context(|| format!("cannot set the mode of {}", aside.display()))?;
    }
    fs::rename(&aside, &config).with_context(|| format!("cannot update {}", config.display()))?;
    Ok(config)
}

/// Writes `text` to `path`, readable by the user only (OpenSSH refuses configs others can write).
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
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
