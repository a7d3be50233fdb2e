//! The holder process: `ssh-ec2 --hold-connection`, started detached at the end of a run that
//! leaves its instance running. It is handed what to reach on its stdin (the login key is a
//! secret: never on a command line), connects, listens, and ends as `held` says.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

use super::lanes::Lanes;
use super::proxy::{Activity, Proxy};
use super::{Card, write_card};
use crate::poll::Poll;
use crate::printer::{Printer, Verbosity};
use crate::ssh::{Target, config};
use crate::state::keys::InstanceKeys;
use crate::status::ExitStatus;

/// The hidden first argument that makes ssh-ec2 a holder (see `main`).
pub const HOLDER_FLAG: &str = "--hold-connection";

/// What the run hands the holder.
#[derive(Serialize, Deserialize)]
struct Handed {
    address: String,
    user: String,
    /// The login key, OpenSSH format.
    login: String,
    /// The host keys to accept, the pinned one first.
    hosts: Vec<String>,
    socket: PathBuf,
    keep_seconds: u64,
    /// For the card (see `Card::known`).
    known: serde_json::Value,
}

/// Starts a holder of a connection to `target`, listening at `socket`, for `keep` after its
/// last use, `known` on its card. It outlives this process.
pub fn hand_over(
    target: &Target,
    socket: &Path,
    keep: Duration,
    known: serde_json::Value,
) -> Result<()> {
    let handed = Handed {
        address: target.address.to_string(),
        user: target.user.clone(),
        login: target.keys.login.to_openssh(LineEnding::LF)?.to_string(),
        hosts: (target.keys.accepted_hosts())
            .map(|key| key.to_openssh())
            .collect::<Result<_, _>>()?,
        socket: socket.to_path_buf(),
        keep_seconds: keep.as_secs(),
        known,
    };
    let exe = std::env::current_exe().context("cannot find ssh-ec2's own program")?;
    let mut child = std::process::Command::new(exe)
        .arg(HOLDER_FLAG)
        // Not the project's directory: the holder must not keep it busy. Nor the run's
        // environment: it needs nothing of it, AWS credentials least of all.
        .current_dir("/")
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start the process that keeps the connection")?;
    let mut stdin = child.stdin.take().context("no stdin for the holder")?;
    stdin.write_all(&serde_json::to_vec(&handed)?)?;
    Ok(())
}

/// The holder's entry point. It leaves the terminal's session first, so that closing the
/// terminal or Ctrl-C in it does not end it; `-vv` logs go nowhere (it has no terminal).
pub fn holder_main(_args: &[std::ffi::OsString]) -> ExitStatus {
    let _ = nix::unistd::setsid();
    let mut input = Vec::new();
    let held = std::io::stdin()
        .read_to_end(&mut input)
        .context("cannot read what to hold")
        .and_then(|_| serde_json::from_slice::<Handed>(&input).context("unreadable"))
        .and_then(|handed| {
            let runtime = tokio::runtime::Runtime::new().context("no async runtime")?;
            runtime.block_on(hold(handed))
        });
    match held {
        Ok(()) => ExitStatus::Success,
        Err(_) => ExitStatus::Failed,
    }
}

async fn hold(handed: Handed) -> Result<()> {
    let target = target_of(&handed)?;
    let login = target.keys.login.public_key().clone();
    let upstream = Arc::new(Lanes::dial(target, Printer::new(Verbosity::Quiet)).await?);
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
    let card = Card {
        address: handed.address.clone(),
        user: handed.user.clone(),
        instance_key: upstream.first().host_key().to_openssh()?,
        holder_key: key.public_key().to_openssh()?,
        pid: std::process::id(),
        known: handed.known.clone(),
    };
    let (listener, ours) = listen(&handed.socket, &card)?;
    let activity = Activity::default();
    let server_config = Arc::new(config::holder_config(key));
    let proxy = Proxy {
        upstream: upstream.clone(),
        user: handed.user.clone(),
        login,
        activity: activity.clone(),
    };
    let serving = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (proxy, config) = (proxy.for_one_run(), server_config.clone());
            tokio::spawn(async move {
                if let Err(e) = russh::server::run_stream(config, stream, proxy).await {
                    tracing::debug!("a run could not use the held connection: {e}");
                }
            });
        }
    });
    let keep = Duration::from_secs(handed.keep_seconds);
    let mut poll = Poll::every(Duration::from_secs(1));
    loop {
        let ours_still = still_ours(&handed.socket, ours);
        // Its socket gone (an end of life) or taken by a newer holder: no new run comes, and
        // those connected finish first (a stop or terminate waits for nobody: the connection
        // then drops).
        if !ours_still {
            serving.abort();
        }
        let done = match ours_still {
            true => activity.idle_for(keep),
            false => activity.idle(),
        };
        if done || upstream.first().is_closed() {
            break;
        }
        poll.wait().await?;
    }
    serving.abort();
    if still_ours(&handed.socket, ours) {
        super::release(&handed.socket);
    }
    upstream.close().await;
    Ok(())
}

fn target_of(handed: &Handed) -> Result<Target> {
    let hosts: Vec<PublicKey> = (handed.hosts.iter())
        .map(|key| PublicKey::from_openssh(key))
        .collect::<Result<_, _>>()?;
    let Some((host, next_hosts)) = hosts.split_first() else {
        bail!("no host key to accept");
    };
    Ok(Target {
        address: handed.address.parse().map_err(anyhow::Error::msg)?,
        user: handed.user.clone(),
        keys: InstanceKeys {
            login: Arc::new(PrivateKey::from_openssh(&handed.login)?),
            host: host.clone(),
            next_hosts: next_hosts.to_vec(),
        },
        via: None,
        held: None,
    })
}

/// Listens at `socket` (0600, put in place in one step, replacing an earlier holder's, which
/// then leaves) with `card` beside it; the socket's inode, to tell it is still ours.
fn listen(socket: &Path, card: &Card) -> Result<(tokio::net::UnixListener, u64)> {
    let fresh = socket.with_extension(format!("{}.new", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let listener = tokio::net::UnixListener::bind(&fresh)
        .with_context(|| format!("cannot listen on {}", fresh.display()))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600))?;
    write_card(socket, card)?;
    std::fs::rename(&fresh, socket)?;
    Ok((listener, std::fs::metadata(socket)?.ino()))
}

fn still_ours(socket: &Path, ours: u64) -> bool {
    std::fs::metadata(socket).is_ok_and(|found| found.ino() == ours)
}
