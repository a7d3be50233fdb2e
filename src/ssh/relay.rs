//! rsync's transport. rsync runs `ssh-ec2 --rsync-transport SOCKET [-l USER] HOST COMMAND…`
//! as its "remote shell"; that process does not open a connection of its own but hands the
//! command to the running ssh-ec2 through a private Unix socket, and the run's one SSH session
//! executes it. Same pinned host key, same login, no second handshake.
//!
//! On the socket, the transport sends the command (u32 big-endian length, then the bytes),
//! then its stdin as a raw stream; the relay answers with frames: a kind byte, a u32 length and
//! the payload: stdout, stderr, or the exit status (u32).
//!
//! Every byte rsync moves crosses this relay, so it moves them in large pieces: each system
//! call, SSH packet and wake-up costs CPU that the two ends of a transfer share on a small
//! machine. Upward, the relay reads up to `UPLOAD_CHUNK` at a time and hands the buffer to
//! russh, which cuts it into the server's packet size; downward, it packs the SSH messages
//! already waiting into one write, stdout ones merged into one frame, and the transport reads
//! them through a large buffer and writes stdout straight to rsync's socket.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::Session;
use crate::status::ExitStatus;

/// The hidden first argument that turns ssh-ec2 into rsync's transport.
pub const TRANSPORT_FLAG: &str = "--rsync-transport";

pub(super) const STDOUT: u8 = 1;
pub(super) const STDERR: u8 = 2;
pub(super) const EXIT: u8 = 3;
/// rsync's command lines are short; anything bigger is not rsync talking.
const MAX_COMMAND: u32 = 64 * 1024;
/// What the relay reads from rsync at most at a time, i.e. two SSH packets of OpenSSH's 32 KiB.
const UPLOAD_CHUNK: usize = 64 * 1024;
/// What the relay gathers at most into one write to the transport.
const DOWNLOAD_BATCH: usize = 256 * 1024;
/// The transport's buffers, both ways.
pub(super) const TRANSPORT_BUFFER: usize = 256 * 1024;

/// Serves rsync transports over the session while it lives.
pub struct Relay {
    dir: PathBuf,
    socket: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens in a fresh 0700 directory under `parent`, so only this user can connect.
    pub fn start(session: Arc<Session>, parent: &Path) -> Result<Relay> {
        let dir = parent.join(format!(
            "relay-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let socket = dir.join("rsync.sock");
        let listener = UnixListener::bind(&socket).with_context(|| {
            format!(
                "cannot listen on {} (a path too long for a socket? set XDG_RUNTIME_DIR or \
                 XDG_STATE_HOME to a shorter directory)",
                socket.display()
            )
        })?;
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let session = session.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(&session, stream).await {
                        tracing::debug!("rsync relay: {e:#}");
                    }
                });
            }
        });
        Ok(Relay {
            dir,
            socket,
            server,
        })
    }

    /// The value of rsync's `-e`: this very executable in transport mode.
    pub fn rsync_shell(&self) -> Result<String> {
        // /proc/PID/exe still works if the binary is replaced (reinstalled) during the run.
        let proc_exe = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
        let exe = match proc_exe.exists() {
            true => proc_exe,
            false => std::env::current_exe().context("cannot find the ssh-ec2 executable")?,
        };
        Ok(format!(
            "{} {TRANSPORT_FLAG} {}",
            rsync_quote(&exe.to_string_lossy())?,
            rsync_quote(&self.socket.to_string_lossy())?
        ))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// rsync splits `-e` on spaces and honours quotes, but not backslashes.
fn rsync_quote(word: &str) -> Result<String> {
    Ok(
        match (word.contains(' '), word.contains('\''), word.contains('"')) {
            (false, false, false) => word.to_string(),
            (_, false, _) => format!("'{word}'"),
            (_, true, false) => format!("\"{word}\""),
            (_, true, true) => {
                bail!("cannot pass the path `{word}` to rsync: it holds both kinds of quotes")
            }
        },
    )
}

async fn serve(session: &Session, mut stream: UnixStream) -> Result<()> {
    let length = stream.read_u32().await?;
    if length > MAX_COMMAND {
        bail!("refusing a {length}-byte command");
    }
    let mut command = vec![0; length as usize];
    stream.read_exact(&mut command).await?;
    let command = String::from_utf8(command).context("command is not UTF-8")?;
    tracing::debug!("rsync relay runs: {command}");
    let channel = session.open_exec(&command).await?;
    let (mut from_remote, to_remote) = channel.split();
    let (mut from_rsync, mut to_rsync) = stream.into_split();

    let upload = async move {
        loop {
            // A fresh buffer each time: russh keeps it until it is encrypted, without a copy.
            let mut chunk = Vec::with_capacity(UPLOAD_CHUNK);
            if from_rsync.read_buf(&mut chunk).await? == 0 {
                break;
            }
            to_remote.data_bytes(chunk).await?;
        }
        to_remote.eof().await?;
        Ok::<_, anyhow::Error>(())
    };
    let download = async move {
        let mut frames = Frames::default();
        let mut next = from_remote.wait().await;
        while let Some(message) = next {
            let refused = frames.push(message);
            if refused {
                break;
            }
            // Gather what is already waiting; write when nothing is, or enough is.
            next = match frames.len() < DOWNLOAD_BATCH {
                true => tokio::select! {
                    biased;
                    message = from_remote.wait() => message,
                    () = std::future::ready(()) => {
                        frames.write_to(&mut to_rsync).await?;
                        from_remote.wait().await
                    }
                },
                false => {
                    frames.write_to(&mut to_rsync).await?;
                    from_remote.wait().await
                }
            };
        }
        frames.write_to(&mut to_rsync).await?;
        to_rsync.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    };
    // The upload ends first (rsync closes its side); the download decides when we are done.
    let upload = tokio::spawn(upload);
    let result = download.await;
    upload.abort();
    result
}

/// Frames for the transport, gathered for one write. Consecutive stdout payloads share a frame.
#[derive(Default)]
struct Frames {
    buffer: Vec<u8>,
    /// Where the last frame starts, when it is a stdout frame that can still grow.
    open_stdout: Option<usize>,
}

impl Frames {
    /// Adds what rsync must see of `message`; true when the exec request was refused, the end.
    fn push(&mut self, message: ChannelMsg) -> bool {
        match message {
            ChannelMsg::Data { data } => self.add(STDOUT, &data),
            ChannelMsg::ExtendedData { data, .. } => self.add(STDERR, &data),
            ChannelMsg::ExitStatus { exit_status } => self.add(EXIT, &exit_status.to_be_bytes()),
            ChannelMsg::ExitSignal { .. } => self.add(EXIT, &failed()),
            // The exec request was refused: nothing runs, and the channel stays open.
            ChannelMsg::Failure => {
                self.add(STDERR, b"ssh-ec2: the instance refused to run rsync\n");
                self.add(EXIT, &failed());
                return true;
            }
            _ => {}
        }
        false
    }

    fn add(&mut self, kind: u8, payload: &[u8]) {
        match self.open_stdout {
            Some(start) if kind == STDOUT => {
                let length = self.buffer.len() - start - 5 + payload.len();
                self.buffer[start + 1..start + 5].copy_from_slice(&(length as u32).to_be_bytes());
            }
            _ => {
                self.open_stdout = (kind == STDOUT).then_some(self.buffer.len());
                self.buffer.push(kind);
                self.buffer
                    .extend_from_slice(&(payload.len() as u32).to_be_bytes());
            }
        }
        self.buffer.extend_from_slice(payload);
    }

    fn len(&self) -> usize {
        self.buffer.len()
    }

    async fn write_to(&mut self, to: &mut (impl AsyncWriteExt + Unpin)) -> Result<()> {
        to.write_all(&self.buffer).await?;
        self.buffer.clear();
        self.open_stdout = None;
        Ok(())
    }
}

/// The exit frame of a command that failed, or that a signal killed, as ssh reports both.
fn failed() -> [u8; 4] {
    u32::from(ExitStatus::Failed.code()).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::transport::copy_exactly;
    use std::io::BufReader;

    #[test]
    fn frames_merge_consecutive_stdout() {
        let mut frames = Frames::default();
        let data = |bytes: &[u8]| ChannelMsg::Data {
            data: bytes.to_vec().into(),
        };
        assert!(!frames.push(data(b"ab")));
        assert!(!frames.push(data(b"cde")));
        assert!(!frames.push(ChannelMsg::ExtendedData {
            data: b"!".to_vec().into(),
            ext: 1,
        }));
        assert!(!frames.push(data(b"f")));
        assert!(!frames.push(ChannelMsg::ExitStatus { exit_status: 7 }));
        assert!(!frames.push(ChannelMsg::Eof));
        let expected: Vec<u8> = [
            &[STDOUT, 0, 0, 0, 5][..],
            b"abcde",
            &[STDERR, 0, 0, 0, 1],
            b"!",
            &[STDOUT, 0, 0, 0, 1],
            b"f",
            &[EXIT, 0, 0, 0, 4, 0, 0, 0, 7],
        ]
        .concat();
        assert_eq!(frames.buffer, expected);

        // What the transport reads back: each payload in order, nothing of the next frame.
        let mut reader = BufReader::with_capacity(3, &expected[5..]);
        let mut out = Vec::new();
        copy_exactly(&mut reader, &mut out, 5).unwrap();
        assert_eq!(out, b"abcde");
        assert!(copy_exactly(&mut reader, &mut out, 100).is_err());

        let mut refused = Frames::default();
        assert!(refused.push(ChannelMsg::Failure));
        assert_eq!(refused.buffer.last(), Some(&255));
    }

    #[test]
    fn rsync_quoting() {
        assert_eq!(rsync_quote("/usr/bin/x").unwrap(), "/usr/bin/x");
        assert_eq!(rsync_quote("/my dir/x").unwrap(), "'/my dir/x'");
        assert_eq!(rsync_quote("/it's/x").unwrap(), "\"/it's/x\"");
        assert!(rsync_quote("/'\"").is_err());
    }
}
