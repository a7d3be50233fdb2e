//! Port forwards over the run's one SSH connection, with ssh's `-L` and `-R` syntax: no port
//! but 22 is ever opened to the instance.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;
use russh::client::Msg;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use super::Session;
use crate::printer::Printer;

/// `[bind_address:]port:host:hostport`, as ssh writes it (IPv6 addresses in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub bind: Option<String>,
    pub port: u16,
    pub host: String,
    pub host_port: u16,
}

impl FromStr for Forward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = || {
            format!(
                "`{s}` is not a forward: write [BIND_ADDRESS:]PORT:HOST:HOSTPORT, e.g. 8888:localhost:8888"
            )
        };
        let words = split_colons(s).ok_or_else(hint)?;
        let (bind, rest) = match words.len() {
            3 => (None, &words[..]),
            4 => (Some(words[0].clone()), &words[1..]),
            _ => return Err(hint()),
        };
        let port = |text: &str| match text.parse::<u32>() {
            Ok(port) => u16::try_from(port)
                .map_err(|_| format!("`{s}`: port {port} is out of range (ports go up to 65535)")),
            Err(_) => Err(hint()),
        };
        let forward = Forward {
            bind: bind.filter(|b| !b.is_empty()),
            port: port(&rest[0])?,
            host: rest[1].clone(),
            host_port: port(&rest[2])?,
        };
        if forward.host.is_empty() || forward.host_port == 0 {
            return Err(hint());
        }
        Ok(forward)
    }
}

/// Splits on colons outside `[…]`, dropping the brackets.
fn split_colons(s: &str) -> Option<Vec<String>> {
    let mut words = vec![String::new()];
    let mut in_brackets = false;
    for c in s.chars() {
        match (c, in_brackets) {
            ('[', false) => in_brackets = true,
            (']', true) => in_brackets = false,
            (':', false) => words.push(String::new()),
            (c, _) => words.last_mut()?.push(c),
        }
    }
    (!in_brackets).then_some(words)
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket = |h: &str| match h.contains(':') {
            true => format!("[{h}]"),
            false => h.to_string(),
        };
        if let Some(bind) = &self.bind {
            write!(f, "{}:", bracket(bind))?;
        }
        write!(
            f,
            "{}:{}:{}",
            self.port,
            bracket(&self.host),
            self.host_port
        )
    }
}

/// A `-L` whose local port is already bound: taken ports are refused before anything else.
#[derive(Debug)]
pub struct LocalForward {
    pub spec: Forward,
    listener: std::net::TcpListener,
}

impl LocalForward {
    /// Binds the local end (127.0.0.1 unless a bind address is given), as ssh would.
    pub fn bind(spec: Forward) -> Result<LocalForward> {
        let address = spec.bind.clone().unwrap_or_else(|| "127.0.0.1".into());
        let listener =
            std::net::TcpListener::bind((address.as_str(), spec.port)).with_context(|| {
                format!(
                    "-L {spec}: cannot listen on {address} port {}: is it taken? pick another \
                     local port",
                    spec.port
                )
            })?;
        listener.set_nonblocking(true)?;
        Ok(LocalForward { spec, listener })
    }
}

/// Where the connections of each `-R` remote port go: read by the SSH handler.
pub type RemoteTargets = Arc<Mutex<HashMap<u32, RemoteTarget>>>;

#[derive(Clone)]
pub struct RemoteTarget {
    spec: Forward,
    printer: Printer,
}

/// The forwards of a session; they stop when this is dropped.
pub struct Forwarding {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Session {
    /// Opens the `-L` listeners and asks the instance's sshd for the `-R` ones.
    pub async fn forward(
        self: &Arc<Self>,
        local: &[LocalForward],
        remote: &[Forward],
        printer: &Printer,
    ) -> Result<Forwarding> {
        let mut tasks = Vec::new();
        for forward in local {
            let listener = tokio::net::TcpListener::from_std(forward.listener.try_clone()?)?;
            let (session, spec) = (self.clone(), forward.spec.clone());
            let printer = printer.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    let (session, spec) = (session.clone(), spec.clone());
                    let printer = printer.clone();
                    tokio::spawn(async move {
                        let carried = match open_local(&session, &spec, peer).await {
                            Ok(channel) => carry(channel, stream).await,
                            Err(e) => Err(e),
                        };
                        report(carried, &format!("-L {spec}"), &printer);
                    });
                }
            }));
        }
        for forward in remote {
            let bind = forward.bind.clone().unwrap_or_else(|| "localhost".into());
            let port = self
                .handle
                .tcpip_forward(bind.clone(), forward.port.into())
                .await
                .with_context(|| {
                    format!(
                        "-R {forward}: the instance refused to listen on {bind} port {}: is it \
                         taken there?",
                        forward.port
                    )
                })?;
            // Port 0 asks sshd to pick one.
            let port = if forward.port == 0 {
                port
            } else {
                forward.port.into()
            };
            self.remote_targets.lock().expect("not poisoned").insert(
                port,
                RemoteTarget {
                    spec: forward.clone(),
                    printer: printer.clone(),
                },
            );
        }
        Ok(Forwarding { tasks })
    }
}

async fn open_local(
    session: &Session,
    spec: &Forward,
    peer: std::net::SocketAddr,
) -> Result<russh::Channel<Msg>> {
    session
        .handle
        .channel_open_direct_tcpip(
            spec.host.clone(),
            spec.host_port.into(),
            peer.ip().to_string(),
            peer.port().into(),
        )
        .await
        .with_context(|| {
            format!(
                "the instance could not connect to {}:{}",
                spec.host, spec.host_port
            )
        })
}

/// A connection the instance's sshd forwards back for `-R`: to its local target.
pub async fn carry_remote(channel: russh::Channel<Msg>, target: RemoteTarget) {
    let spec = &target.spec;
    let carried = match TcpStream::connect((spec.host.as_str(), spec.host_port)).await {
        Ok(stream) => carry(channel, stream).await,
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot connect to {}:{}",
            spec.host, spec.host_port
        ))),
    };
    report(carried, &format!("-R {spec}"), &target.printer);
}

/// How much one forwarded connection may hold for a local end that does not read.
const BACKLOG_LIMIT: usize = 64 * 1024 * 1024;

/// Why a forwarded connection was cut to keep the session going.
#[derive(Debug)]
struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a local end stopped reading with {} MiB waiting for it: closed that connection so \
             the command and the other forwards go on",
            BACKLOG_LIMIT >> 20
        )
    }
}

/// Carries one forwarded connection both ways until both ends are done.
///
/// russh re-opens a channel's window as soon as data arrives, not when it is read, and its one
/// session loop waits while a channel's queue is full: a local end that stops reading would
/// stall the whole connection (the command's output, every other forward). So what the
/// instance sends is taken off the channel at once into a backlog of this connection, written
/// to the local socket by its own loop; a backlog past [`BACKLOG_LIMIT`] closes this
/// connection rather than the session.
async fn carry(channel: russh::Channel<Msg>, stream: TcpStream) -> Result<()> {
    let (mut from_instance, to_instance) = channel.split();
    let (mut from_local, to_local) = stream.into_split();
    let (backlog, mut queued) = tokio::sync::mpsc::unbounded_channel();
    let waiting = AtomicUsize::new(0);

    let drain = async {
        while let Some(message) = from_instance.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    if waiting.fetch_add(data.len(), Ordering::Relaxed) + data.len() > BACKLOG_LIMIT
                    {
                        bail!(Overflow);
                    }
                    // Gone only when the local end failed; the writer says why.
                    if backlog.send(data).is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        drop(backlog);
        Ok(())
    };
    let write = async {
        let mut to_local = BufWriter::new(to_local);
        while let Some(data) = queued.recv().await {
            to_local.write_all(&data).await?;
            waiting.fetch_sub(data.len(), Ordering::Relaxed);
            // Flush once the backlog is empty: several small packets, one write.
            if queued.is_empty() {
                to_local.flush().await?;
            }
        }
        to_local.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    };
    let send = async {
        tokio::io::copy(&mut from_local, &mut to_instance.make_writer()).await?;
        to_instance.eof().await?;
        Ok::<_, anyhow::Error>(())
    };
    let carried = tokio::try_join!(drain, write, send).map(drop);
    // The halves of a split channel do not close it when dropped.
    let _ = to_instance.close().await;
    carried
}

/// A forwarded connection's failure is its own: a warning for a cut one, a debug line otherwise.
fn report(carried: Result<()>, forward: &str, printer: &Printer) {
    match carried {
        Ok(()) => {}
        Err(e) if e.is::<Overflow>() => printer.warn(&format!("{forward}: {e}")),
        Err(e) => tracing::debug!("{forward}: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_read_like_ssh() {
        let f: Forward = "8888:localhost:8888".parse().unwrap();
        assert_eq!(
            (f.bind, f.port, f.host.as_str(), f.host_port),
            (None, 8888, "localhost", 8888)
        );
        let f: Forward = "0.0.0.0:80:[::1]:8080".parse().unwrap();
        assert_eq!(f.bind.as_deref(), Some("0.0.0.0"));
        assert_eq!(
            (f.host.as_str(), f.to_string()),
            ("::1", "0.0.0.0:80:[::1]:8080".into())
        );
        assert!("8888:localhost".parse::<Forward>().is_err());
        assert!("x:localhost:1".parse::<Forward>().is_err());
        assert!("1:localhost:0".parse::<Forward>().is_err());
        let refused = "70000:localhost:80".parse::<Forward>().unwrap_err();
        assert!(refused.contains("port 70000 is out of range"), "{refused}");
    }
}
