//! What ssh-ec2 keeps on this machine, under the XDG state directory (`~/.local/state/ssh-ec2`):
//!
//! - `instances/<id>/`: one directory per instance launched from here, forgotten when it is
//!   terminated: its keys (`keys`), its manifest (what its last sync left on both sides, see
//!   `sync::Manifest`), the OpenSSH files `--ssh-config` writes (`entries`), the size of its
//!   root volume (to price it), the CIDR its security group lets in (`ingress`), whether
//!   results may be there only (`unpulled`), the stamp of the last complete pull
//!   (`pulled_mark`, see `remote::pulled`) and the connection kept between runs (`held.sock`,
//!   see `ssh::held`). Before the
//!   instance exists they wait in
//!   `instances/pending-<launch id>/`, beside the launch's record (`launches`); adopting the
//!   instance renames that directory in one step.
//! - `locks/`: one lock file per project directory (`lock`); `machine-id` (`machine`).
//! - `known.json`: what AWS said that changes slowly or never (`known`).
//! - `release.log`: why the helper that deletes terminated instances' groups gave up, if it
//!   did (`fleet::release`).

pub mod entries;
pub mod host_keys;
pub mod keys;
pub mod known;
mod launches;
pub mod lock;
pub mod machine;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::IpNet;

/// Where this machine's state lives.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// The state directory itself.
    pub root: PathBuf,
    /// Where rsync's relay sockets go (the runtime directory when there is one).
    pub sockets: PathBuf,
}

/// The instances' directories.
pub struct Store {
    root: PathBuf,
}

const PENDING: &str = "pending-";
/// What the last sync left on both sides.
const MANIFEST_FILE: &str = "manifest";
/// The GiB of the root volume it was launched with, to price it.
const VOLUME_FILE: &str = "volume_gib";
/// The CIDR its security group was last opened to, by this machine.
const INGRESS_FILE: &str = "ingress";
/// Present while the instance may hold results that are not home: from the start of a syncing
/// run's command until a run that had the instance to itself pulled everything home.
const UNPULLED_FILE: &str = "unpulled";
/// The stamp on the instance of the last pull that brought everything home, and from where.
const PULL_MARK_FILE: &str = "pulled_mark";
/// The socket of the connection kept between runs, and its card beside it (`held.json`).
const HELD_SOCKET: &str = "held.sock";

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("instances"),
        }
    }

    fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.root.join(instance_id)
    }

    fn pending_dir(&self, launch: &str) -> PathBuf {
        self.root.join(format!("{PENDING}{launch}"))
    }

    /// What the last sync left on both sides (see `sync::Manifest`); forgotten with the keys.
    pub fn manifest_path(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join(MANIFEST_FILE)
    }

    /// Where a connection to the instance is kept between runs (see `ssh::held`): in its
    /// private directory, gone with it.
    pub fn held_socket(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join(HELD_SOCKET)
    }

    /// The instances whose keys (or manifest) are kept here.
    pub fn instance_ids(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter(|name| !name.starts_with(PENDING))
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

    /// Where the helper that deletes terminated instances' groups says why it gave up (see
    /// `fleet::release`).
    pub fn release_log(&self) -> PathBuf {
        self.root.with_file_name("release.log")
    }

    /// What AWS said that changes slowly or never (see `known`).
    pub fn known(&self) -> known::Known {
        known::Known::in_dir(self.root.parent().unwrap_or(&self.root))
    }

    /// Forgets a terminated instance, and the OpenSSH entry installed for it.
    pub fn forget(&self, instance_id: &str) {
        if let Some(entry) = self.ssh_config_entry(instance_id) {
            let _ = fs::remove_file(entry);
        }
        let _ = fs::remove_dir_all(self.instance_dir(instance_id));
    }

    /// Remembers the size of the root volume the instance was launched with; a price without
    /// it only lacks the volume, so a failure to write is no error.
    pub fn note_volume(&self, instance_id: &str, gib: u32) {
        self.note(instance_id, VOLUME_FILE, gib);
    }

    /// The size of the root volume the instance was launched with, if it was noted.
    pub fn volume(&self, instance_id: &str) -> Option<u32> {
        self.noted(instance_id, VOLUME_FILE)
    }

    /// Remembers the CIDR the instance's security group was just opened to (and no other), so
    /// that the next run from the same address changes nothing. A failure to write only costs
    /// that run a look at the group.
    pub fn note_ingress(&self, instance_id: &str, cidr: IpNet) {
        self.note(instance_id, INGRESS_FILE, cidr);
    }

    /// The CIDR the instance's security group was last opened to from here, if noted.
    pub fn ingress(&self, instance_id: &str) -> Option<IpNet> {
        self.noted(instance_id, INGRESS_FILE)
    }

    /// Writes `value` in the instance's file `name`, a note worth no error if it fails.
    fn note(&self, instance_id: &str, name: &str, value: impl std::fmt::Display) {
        let _ = fs::write(self.instance_dir(instance_id).join(name), value.to_string());
    }

    /// What the instance's file `name` notes, if it is there and reads as a `T`.
    fn noted<T: std::str::FromStr>(&self, instance_id: &str, name: &str) -> Option<T> {
        let text = fs::read_to_string(self.instance_dir(instance_id).join(name)).ok()?;
        text.trim().parse().ok()
    }

    /// Remembers the stamp of a pull from `remote_dir` that brought everything home (see
    /// `remote::pulled`).
    pub fn note_pull_mark(&self, instance_id: &str, token: &str, remote_dir: &str) {
        self.note(
            instance_id,
            PULL_MARK_FILE,
            format!("{token}\n{remote_dir}\n"),
        );
    }

    /// The stamp of the last pull from `remote_dir` that brought everything home, if the last
    /// pull from the instance was that one.
    pub fn pull_mark(&self, instance_id: &str, remote_dir: &str) -> Option<String> {
        let text = fs::read_to_string(self.instance_dir(instance_id).join(PULL_MARK_FILE)).ok()?;
        let (token, from) = text.split_once('\n')?;
        (from.strip_suffix('\n') == Some(remote_dir)).then(|| token.to_string())
    }

    /// Forgets the last pull's stamp as another pull starts: until that one brings everything
    /// home, no stamp proves anything.
    pub fn forget_pull_mark(&self, instance_id: &str) {
        let _ = fs::remove_file(self.instance_dir(instance_id).join(PULL_MARK_FILE));
    }

    /// Notes, before a command starts there, that the instance may hold results not home.
    pub fn note_unpulled(&self, instance_id: &str) -> Result<()> {
        let file = self.instance_dir(instance_id).join(UNPULLED_FILE);
        fs::write(&file, b"").with_context(|| {
            format!(
                "cannot write {}: check the permissions of the state directory",
                file.display()
            )
        })
    }

    /// Notes that everything the instance changed is home.
    pub fn note_pulled(&self, instance_id: &str) {
        let _ = fs::remove_file(self.instance_dir(instance_id).join(UNPULLED_FILE));
    }

    /// Whether the last pull from the instance did not complete (or none followed a command).
    pub fn unpulled(&self, instance_id: &str) -> bool {
        self.instance_dir(instance_id).join(UNPULLED_FILE).exists()
    }
}

/// Whether the note `name` is due: the first time on this machine, never again (a marker file
/// in the state directory remembers it). A note on every run would soon be ignored.
pub fn first_time(state_dir: &Path, name: &str) -> bool {
    let marker = state_dir.join(name);
    if marker.exists() {
        return false;
    }
    let _ = fs::create_dir_all(state_dir).and_then(|()| fs::write(&marker, b""));
    true
}

/// Writes a new file only its owner can read; refuses to replace one.
fn create_private(path: &Path, text: &str) -> Result<()> {
    write_private(path, text, fs::OpenOptions::new().create_new(true))
}

/// Writes a file only its owner can read (OpenSSH refuses configs others can write), over
/// the one there may be.
pub(crate) fn overwrite_private(path: &Path, text: &str) -> Result<()> {
    write_private(
        path,
        text,
        fs::OpenOptions::new().create(true).truncate(true),
    )
}

fn write_private(path: &Path, text: &str, how: &mut fs::OpenOptions) -> Result<()> {
    use std::io::Write;
    how.write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces `path` with `text`, whole or not at all: a reader sees the old file or the new.
fn replace(path: &Path, text: &str) -> Result<()> {
    let aside = path.with_extension("new");
    fs::write(&aside, text)
        .and_then(|()| fs::rename(&aside, path))
        .with_context(|| format!("cannot write {}", path.display()))
}
