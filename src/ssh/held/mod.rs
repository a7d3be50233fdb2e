//! The connection that stays, as OpenSSH's ControlPersist: after a run that leaves its instance
//! running, a holder (ssh-ec2 itself, detached) keeps a pinned connection to it, and the next
//! run here goes through that one: no TCP or SSH handshake with the instance, a local one only.
//!
//! A russh session cannot pass from one process to another, so the holder speaks SSH on the
//! local side too: it listens on a socket in the instance's private state directory (0700, the
//! socket 0600), presents a host key of its own (its public half written beside the socket),
//! lets in only the instance's login key, and opens each channel a run asks for on its own
//! connection, passing everything both ways (`proxy`). Beside the socket, its card says which
//! instance key the holder saw, where, and as whom: a run uses the held connection only when it
//! leads where the run would dial.
//!
//! The holder ends itself once no run has used it for `--keep-connection`, when its connection
//! to the instance drops (the instance stopped or was terminated), or when its socket goes or is
//! replaced: ending an instance removes it first (`release`). It never re-arms the instance's
//! dead-man switch, which does not count a connection that runs nothing as activity.

mod holder;
mod lanes;
mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};

use super::{Session, Target, is_one_of};
use crate::state::keys::InstanceKeys;

pub use holder::{HOLDER_FLAG, hand_over, holder_main};

/// What the holder writes beside its socket once it holds the connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Card {
    /// Where the holder's connection goes (`HOST:PORT`) and as whom.
    address: String,
    user: String,
    /// The host key the instance presented to the holder (OpenSSH format).
    instance_key: String,
    /// The holder's own host key on the local side.
    holder_key: String,
    /// The holder's process.
    pid: u32,
    /// What the run that started the holder knew of the instance, for the next one (see
    /// `fleet::kept`).
    #[serde(default)]
    known: serde_json::Value,
}

/// How long a run waits for the holder, and for the instance through it, before it dials the
/// instance itself.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(3);

/// The session `answers` just proved, kept for the run's connection a moment later (`reach`):
/// proving it again would cost a round trip to the instance.
static PROVEN: Mutex<Option<(PathBuf, Instant, Session)>> = Mutex::new(None);

/// The session proven through `socket` within `LOCAL_TIMEOUT`, if any.
fn take_proven(socket: &Path) -> Option<Session> {
    let (at, when, session) = PROVEN.lock().ok()?.take()?;
    (at == socket && when.elapsed() < LOCAL_TIMEOUT).then_some(session)
}

fn card_path(socket: &Path) -> PathBuf {
    socket.with_extension("json")
}

fn read_card(socket: &Path) -> Option<Card> {
    let bytes = std::fs::read(card_path(socket)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What the run that started the holder at `socket` knew of its instance, if one is there.
pub fn known(socket: &Path) -> Option<serde_json::Value> {
    read_card(socket).map(|card| card.known)
}

/// Puts `card` beside `socket` (0600) in one step: a reader sees the old card or the new one.
fn write_card(socket: &Path, card: &Card) -> anyhow::Result<()> {
    let fresh = card_path(socket).with_extension(format!("{}.json", std::process::id()));
    crate::state::overwrite_private(&fresh, &serde_json::to_string(card)?)?;
    std::fs::rename(&fresh, card_path(socket))?;
    Ok(())
}

/// Replaces what the card at `socket` says the last run knew (a later run learnt more).
pub fn note_known(socket: &Path, known: serde_json::Value) -> anyhow::Result<()> {
    let card = read_card(socket).context("the kept connection is gone")?;
    write_card(socket, &Card { known, ..card })
}

/// Whether the connection held at `socket` leads to the instance whose host keys `keys` pins,
/// and the instance answers through it now (one round trip); the session that proved it serves
/// the run's connection.
pub async fn answers(socket: &Path, keys: &InstanceKeys) -> bool {
    let Some(card) = read_card(socket) else {
        return false;
    };
    let Ok(address) = card.address.parse::<crate::settings::values::HostPort>() else {
        return false;
    };
    let target = Target {
        address,
        user: card.user,
        keys: keys.clone(),
        via: None,
        held: None,
    };
    match reach(&target, socket).await {
        Some(session) => {
            let proven = (socket.to_path_buf(), Instant::now(), session);
            if let Ok(mut slot) = PROVEN.lock() {
                *slot = Some(proven);
            }
            true
        }
        None => false,
    }
}

/// The session through the connection held at `socket`, when there is one that leads where
/// `target` does; `None` sends the caller to dial.
pub(super) async fn reach(target: &Target, socket: &Path) -> Option<Session> {
    let card = read_card(socket)?;
    let Some((instance_key, holder_key)) = leads_where(&card, target) else {
        tracing::debug!("the held connection at {} goes elsewhere", socket.display());
        return None;
    };
    if let Some(session) = take_proven(socket) {
        return Some(session);
    }
    let stream = tokio::time::timeout(LOCAL_TIMEOUT, tokio::net::UnixStream::connect(socket));
    let stream = match stream.await {
        Ok(Ok(stream)) => stream,
        _ => {
            tracing::debug!("no holder answers at {}", socket.display());
            return None;
        }
    };
    let holder = [holder_key];
    let session = tokio::time::timeout(LOCAL_TIMEOUT, Session::handshake(target, stream, &holder));
    let Ok(Ok(session)) = session.await else {
        tracing::debug!("the holder at {} did not let us in", socket.display());
        return None;
    };
    // Its connection may have died without a word (a laptop that slept): a command run through
    // it proves the instance answers (one round trip; a channel alone may be one the holder
    // opened ahead, long ago), else the run dials.
    let mut session = session;
    session.held = true;
    // A channel through the holder is a local round trip: the holder opens ahead.
    session.keep_ahead(0);
    match tokio::time::timeout(LOCAL_TIMEOUT, session.run_captured("true")).await {
        Ok(Ok(_)) => {
            session.host_key = instance_key;
            Some(session)
        }
        _ => {
            tracing::debug!(
                "the connection held at {} does not answer",
                socket.display()
            );
            session.close().await;
            None
        }
    }
}

/// The instance's key and the holder's, when the held connection goes to `target`'s address,
/// as its user, to a host key `target` accepts.
fn leads_where(card: &Card, target: &Target) -> Option<(PublicKey, PublicKey)> {
    let instance_key = PublicKey::from_openssh(&card.instance_key).ok()?;
    let holder_key = PublicKey::from_openssh(&card.holder_key).ok()?;
    let accepted: Vec<PublicKey> = target.keys.accepted_hosts().cloned().collect();
    let same_place = card.address == target.address.to_string() && card.user == target.user;
    (same_place && is_one_of(&instance_key, &accepted)).then_some((instance_key, holder_key))
}

/// Ends the connection held at `socket`, if any: its holder sees the socket gone and leaves.
pub fn release(socket: &Path) {
    let _ = std::fs::remove_file(card_path(socket));
    let _ = std::fs::remove_file(socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};
    use std::sync::Arc;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn openssh(key: &PrivateKey) -> String {
        key.public_key().to_openssh().unwrap()
    }

    #[test]
    fn a_held_connection_serves_only_where_the_run_would_dial() {
        let (instance, next, holder) = (key(), key(), key());
        let target = Target {
            address: "172.31.0.5:22".parse().unwrap(),
            user: "ubuntu".into(),
            keys: InstanceKeys {
                login: Arc::new(key()),
                host: instance.public_key().clone(),
                next_hosts: vec![next.public_key().clone()],
            },
            via: None,
            held: None,
        };
        let card = Card {
            address: "172.31.0.5:22".into(),
            user: "ubuntu".into(),
            instance_key: openssh(&instance),
            holder_key: openssh(&holder),
            pid: 1,
            known: serde_json::Value::Null,
        };
        let keys = leads_where(&card, &target).expect("the same place");
        assert_eq!(
            keys,
            (instance.public_key().clone(), holder.public_key().clone())
        );
        let replacing = Card {
            instance_key: openssh(&next),
            ..card.clone()
        };
        assert!(
            leads_where(&replacing, &target).is_some(),
            "a key being installed"
        );

        let elsewhere = [
            Card {
                address: "127.0.0.1:2222".into(),
                ..card.clone()
            },
            Card {
                user: "root".into(),
                ..card.clone()
            },
            Card {
                instance_key: openssh(&key()),
                ..card.clone()
            },
            Card {
                holder_key: "not a key".into(),
                ..card.clone()
            },
        ];
        for card in elsewhere {
            assert!(leads_where(&card, &target).is_none(), "{card:?}");
        }
    }
}
