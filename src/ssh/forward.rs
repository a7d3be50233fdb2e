//! Port forwards over the run's one SSH connection, with ssh's `-L` and `-R` syntax: no port
//! but 22 is ever opened to the instance.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::TcpStream;

use super::Session;

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
        let port = |text: &str| text.parse::<u16>().map_err(|_| hint());
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
pub type RemoteTargets = Arc<Mutex<HashMap<u32, (String, u16)>>>;

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
    ) -> Result<Forwarding> {
        let mut tasks = Vec::new();
        for forward in local {
            let listener = tokio::net::TcpListener::from_std(forward.listener.try_clone()?)?;
            let (session, spec) = (self.clone(), forward.spec.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    let (session, spec) = (session.clone(), spec.clone());
                    tokio::spawn(async move {
                        if let Err(e) = carry_local(&session, &spec, stream, peer).await {
                            tracing::debug!("-L {spec}: {e:#}");
                        }
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
            self.remote_targets
                .lock()
                .expect("not poisoned")
                .insert(port, (forward.host.clone(), forward.host_port));
        }
        Ok(Forwarding { tasks })
    }
}

async fn carry_local(
    session: &Session,
    spec: &Forward,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Result<()> {
    let channel = session
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
        })?;
    tokio::io::copy_bidirectional(&mut stream, &mut channel.into_stream()).await?;
    Ok(())
}

/// A connection the instance's sshd forwards back for `-R`: to its local target.
pub async fn carry_remote(
    channel: russh::Channel<russh::client::Msg>,
    target: (String, u16),
) -> Result<()> {
    let mut stream = TcpStream::connect((target.0.as_str(), target.1))
        .await
        .with_context(|| format!("cannot connect to {}:{}", target.0, target.1))?;
    tokio::io::copy_bidirectional(&mut stream, &mut channel.into_stream()).await?;
    Ok(())
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
    }
}
