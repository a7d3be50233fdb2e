//! The one SSH connection of a run (russh): it checks the instance's pinned host key, then
//! carries the command, and rsync through the relay. It is dialled, or found kept from an
//! earlier run (`held`).

mod channels;
mod config;
mod exec;
pub mod forward;
pub mod held;
pub mod relay;
pub mod transport;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::poll::Poll;
use crate::printer::Phase;
use crate::settings::values::HostPort;
use crate::state::keys::InstanceKeys;

pub use exec::{RemoteExit, run_command};

/// Where and as whom to log in, and the only host key to accept there.
#[derive(Clone)]
pub struct Target {
    pub address: HostPort,
    pub user: String,
    pub keys: InstanceKeys,
    /// Reached through this session (a cluster's head) rather than dialled: its workers take
    /// SSH from inside the cluster only.
    pub via: Option<Arc<Session>>,
    /// Where a connection kept from an earlier run may be found (see `held`); tried before
    /// dialling. `None` where it cannot serve: a cluster, `-R` forwards.
    pub held: Option<PathBuf>,
}

pub struct Session {
    handle: Arc<Handle<PinnedHostKey>>,
    ahead: Mutex<channels::Ahead>,
    remote_targets: forward::RemoteTargets,
    /// The host key the instance presented (one of those accepted).
    host_key: PublicKey,
    /// Through a connection kept from an earlier run (see `held`), not one of our own.
    held: bool,
}

/// Accepts only the pinned host key (and the one being installed in its place, if any), and
/// keeps the one the server shows: which one it was, or for the error message.
/// Connections the server forwards back (`-R`) go to their local targets.
struct PinnedHostKey {
    accepted: Vec<PublicKey>,
    presented: Arc<Mutex<Option<PublicKey>>>,
    remote_targets: forward::RemoteTargets,
}

fn is_one_of(key: &PublicKey, accepted: &[PublicKey]) -> bool {
    accepted.iter().any(|k| k.key_data() == key.key_data())
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let accepted = is_one_of(&presented, &self.accepted);
        *self.presented.lock().expect("not poisoned") = Some(presented);
        Ok(accepted)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let target = self
            .remote_targets
            .lock()
            .expect("not poisoned")
            .get(&connected_port)
            .cloned();
        // Not asked for: dropping the reply refuses it.
        if let Some(target) = target {
            reply.accept().await;
            tokio::spawn(forward::carry_remote(channel, target));
        }
        Ok(())
    }
}

/// Why one connection attempt failed.
enum AttemptError {
    /// Refused for good: a different host key means the wrong machine or an interception.
    HostKeyMismatch { presented: PublicKey },
    /// Worth retrying while the instance boots.
    NotYet(String),
}

impl Session {
    /// Dials `target` until its sshd lets us in, backing off between attempts, until `deadline`.
    pub async fn connect(target: &Target, deadline: Instant, phase: &Phase) -> Result<Session> {
        if let Some(socket) = &target.held
            && let Some(session) = held::reach(target, socket).await
        {
            return Ok(session);
        }
        let mut poll = Poll::every(Duration::from_secs(2)).until(deadline);
        loop {
            match Self::attempt(target).await {
                Ok(session) => return Ok(session),
                Err(AttemptError::HostKeyMismatch { presented }) => {
                    bail!(
                        "{} presented host key {}, but the key pinned for this instance is {}: \
                         refusing to connect, nothing was sent. If you use \
                         --connect/SSH_EC2_CONNECT, check that it leads to this instance; \
                         otherwise the connection may be intercepted",
                        target.address,
                        presented.fingerprint(HashAlg::Sha256),
                        target.keys.host.fingerprint(HashAlg::Sha256),
                    )
                }
                Err(AttemptError::NotYet(why)) => {
                    phase.update(format!("waiting for SSH at {}: {why}", target.address));
                    if !poll.wait().await? {
                        bail!(
                            "the instance's SSH at {} did not let us in before the boot timeout \
                             (last: {why}); raise --boot-timeout, or check the instance's \
                             console output in the EC2 console",
                            target.address
                        );
                    }
                    tracing::debug!("SSH not ready at {}: {why}", target.address);
                }
            }
        }
    }

    async fn attempt(target: &Target) -> Result<Session, AttemptError> {
        let accepted: Vec<PublicKey> = target.keys.accepted_hosts().cloned().collect();
        let opened = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            match &target.via {
                Some(head) => Ok(Stream::Tunnel(head.tunnel(&target.address).await?)),
                None => Ok(Stream::Tcp(dial(&target.address).await?)),
            }
        });
        match opened.await {
            Ok(Ok(Stream::Tunnel(stream))) => Self::handshake(target, stream, &accepted).await,
            Ok(Ok(Stream::Tcp(stream))) => Self::handshake(target, stream, &accepted).await,
            Ok(Err(e)) => Err(AttemptError::NotYet(describe(&e))),
            Err(_) => Err(AttemptError::NotYet(format!(
                "no answer within {}s",
                ATTEMPT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Logs in as `target.user` over `stream`, to a server presenting one of `accepted`.
    async fn handshake<S>(
        target: &Target,
        stream: S,
        accepted: &[PublicKey],
    ) -> Result<Session, AttemptError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let presented = Arc::new(Mutex::new(None));
        let remote_targets = forward::RemoteTargets::default();
        let handler = PinnedHostKey {
            accepted: accepted.to_vec(),
            presented: presented.clone(),
            remote_targets: remote_targets.clone(),
        };
        let login = async {
            let config = Arc::new(config::client_config());
            let mut handle = client::connect_stream(config, stream, handler).await?;
            // RSA key pairs must sign with SHA-2: OpenSSH 8.8+ refuses SHA-1 `ssh-rsa`.
            let rsa_hash = match target.keys.login.algorithm().is_rsa() {
                true => handle.best_supported_rsa_hash().await?.flatten(),
                false => None,
            };
            let key = PrivateKeyWithHashAlg::new(target.keys.login.clone(), rsa_hash);
            let auth = handle.authenticate_publickey(&target.user, key).await?;
            Ok::<_, russh::Error>((handle, auth.success()))
        };
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, login).await;
        let presented = presented.lock().expect("not poisoned").take();
        if let Some(key) = &presented
            && !is_one_of(key, accepted)
        {
            return Err(AttemptError::HostKeyMismatch {
                presented: key.clone(),
            });
        }
        match (outcome, presented) {
            (Ok(Ok((handle, true))), Some(host_key)) => Ok(Session {
                handle: Arc::new(handle),
                ahead: Mutex::default(),
                remote_targets,
                host_key,
                held: false,
            }),
            (Ok(Ok((_, false))), _) => Err(AttemptError::NotYet(format!(
                "the login key for user {} was refused (still booting, or wrong --user?)",
                target.user
            ))),
            // russh checks the host key before it authenticates: not reached.
            (Ok(Ok((_, true))), None) => Err(AttemptError::NotYet("no host key seen".into())),
            (Ok(Err(e)), _) => Err(AttemptError::NotYet(describe(&e))),
            (Err(_), _) => Err(AttemptError::NotYet(format!(
                "no answer within {}s",
                ATTEMPT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Whether this session goes through a connection kept from an earlier run.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// The host key the instance presented: the pinned one, or the one being installed.
    pub fn host_key(&self) -> &PublicKey {
        &self.host_key
    }

    /// A stream to `address` as seen from the instance (a direct-tcpip channel).
    async fn tunnel(
        &self,
        address: &HostPort,
    ) -> Result<russh::ChannelStream<client::Msg>, russh::Error> {
        let channel = self
            .handle
            .channel_open_direct_tcpip(address.host.clone(), address.port.into(), "127.0.0.1", 0)
            .await?;
        Ok(channel.into_stream())
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    pub async fn close(&self) {
        self.drop_ahead();
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// What one connection attempt talks over.
enum Stream {
    Tcp(tokio::io::BufReader<tokio::net::TcpStream>),
    Tunnel(russh::ChannelStream<client::Msg>),
}

/// How long one connection attempt may take: to open its stream, then to log in.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP connection to `address`, read through a buffer: russh reads each packet with two reads
/// (its length, then the rest), and one read of the buffer brings in several packets.
async fn dial(
    address: &HostPort,
) -> Result<tokio::io::BufReader<tokio::net::TcpStream>, russh::Error> {
    let socket = tokio::net::TcpStream::connect((address.host.as_str(), address.port)).await?;
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    Ok(tokio::io::BufReader::with_capacity(
        config::READ_BUFFER,
        socket,
    ))
}

fn describe(error: &russh::Error) -> String {
    match error {
        russh::Error::IO(io) => io.to_string(),
        other => other.to_string(),
    }
}
