//! rsync's transport. rsync runs `ssh-ec2 --rsync-transport SOCKET [-l USER] HOST COMMAND…`
//! as its "remote shell"; that process does not open a connection of its own but hands the
//! command to the running ssh-ec2 through a private Unix socket, and the run's one SSH session
//! executes it. Same pinned host key, same login, no second handshake.
//!
//! On the socket, the transport sends the command (u32 big-endian length, then the bytes),
//! then its stdin as a raw stream; the relay answers with frames: a kind byte, a u32 length and
//! the payload: stdout, stderr, or the exit status (u32).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::Session;

/// The hidden first argument that turns ssh-ec2 into rsync's transport.
pub const TRANSPORT_FLAG: &str = "--rsync-transport";

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const EXIT: u8 = 3;
/// rsync's command lines are short; anything bigger is not rsync talking.
const MAX_COMMAND: u32 = 64 * 1024;

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
    let (from_rsync, mut to_rsync) = stream.into_split();

    let upload = async move {
        to_remote.data(from_rsync).await?;
        to_remote.eof().await?;
        Ok::<_, anyhow::Error>(())
    };
    let download = async move {
        while let Some(message) = from_remote.wait().await {
            let (kind, payload) = match message {
                ChannelMsg::Data { data } => (STDOUT, data.to_vec()),
                ChannelMsg::ExtendedData { data, .. } => (STDERR, data.to_vec()),
                ChannelMsg::ExitStatus { exit_status } => {
                    (EXIT, exit_status.to_be_bytes().to_vec())
                }
                ChannelMsg::ExitSignal { .. } => (EXIT, 255u32.to_be_bytes().to_vec()),
                // The exec request was refused: nothing runs, and the channel stays open.
                ChannelMsg::Failure => {
                    write_frame(
                        &mut to_rsync,
                        STDERR,
                        b"ssh-ec2: the instance refused to run rsync\n",
                    )
                    .await?;
                    write_frame(&mut to_rsync, EXIT, &255u32.to_be_bytes()).await?;
                    break;
                }
                _ => continue,
            };
            write_frame(&mut to_rsync, kind, &payload).await?;
        }
        to_rsync.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    };
    // The upload ends first (rsync closes its side); the download decides when we are done.
    let upload = tokio::spawn(upload);
    let result = download.await;
    upload.abort();
    result
}

async fn write_frame(
    to: &mut (impl AsyncWriteExt + Unpin),
    kind: u8,
    payload: &[u8],
) -> Result<()> {
    to.write_u8(kind).await?;
    to.write_u32(payload.len() as u32).await?;
    to.write_all(payload).await?;
    Ok(())
}

/// Entry point of transport mode; returns the remote command's exit status for rsync.
/// Blocking std I/O on purpose: it is a plain pipe between rsync and the socket.
pub fn transport_main(args: &[OsString]) -> i32 {
    match transport(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ssh-ec2 rsync transport: {e:#}");
            255
        }
    }
}

fn transport(args: &[OsString]) -> Result<i32> {
    let (socket, command) = parse_transport_args(args)?;
    // rsync hands us a socketpair in O_NONBLOCK mode; blocking reads and writes need it cleared.
    for fd in [std::io::stdin().as_fd(), std::io::stdout().as_fd()] {
        clear_nonblocking(fd)?;
    }
    let mut stream = StdUnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot reach the running ssh-ec2 at {} (it must be started by ssh-ec2 itself)",
            socket.display()
        )
    })?;
    stream.write_all(&(command.len() as u32).to_be_bytes())?;
    stream.write_all(command.as_bytes())?;

    let mut upload = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut upload);
        let _ = upload.shutdown(std::net::Shutdown::Write);
    });

    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let mut status = None;
    // Output may follow the exit status: read until the relay closes the stream.
    loop {
        let mut header = [0u8; 5];
        if let Err(e) = stream.read_exact(&mut header) {
            return status.with_context(|| {
                format!(
                    "the connection to the instance closed before the remote rsync finished: {e}"
                )
            });
        }
        let length = u32::from_be_bytes(header[1..].try_into().expect("4 bytes")) as usize;
        let mut payload = vec![0; length];
        stream.read_exact(&mut payload)?;
        match header[0] {
            STDOUT => {
                stdout.write_all(&payload)?;
                stdout.flush()?;
            }
            STDERR => stderr.write_all(&payload)?,
            EXIT => {
                let code =
                    u32::from_be_bytes(payload.as_slice().try_into().context("bad exit frame")?);
                status = Some(code.min(255) as i32);
            }
            other => bail!("unexpected frame kind {other} from ssh-ec2"),
        }
    }
}

fn clear_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// `SOCKET [-l USER] HOST WORD…`: the words are already quoted by rsync for the remote shell.
fn parse_transport_args(args: &[OsString]) -> Result<(PathBuf, String)> {
    let usage = "usage: ssh-ec2 --rsync-transport SOCKET [-l USER] HOST COMMAND… (rsync calls this; \
                 you do not need to)";
    let mut args = args.iter().map(|a| a.to_string_lossy().into_owned());
    let socket = PathBuf::from(args.next().context(usage)?);
    let mut rest: Vec<String> = args.collect();
    if rest.first().map(String::as_str) == Some("-l") {
        rest.drain(..2.min(rest.len()));
    }
    if rest.len() < 2 {
        bail!(usage);
    }
    Ok((socket, rest[1..].join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn transport_args_drop_user_and_host() {
        let (socket, command) = parse_transport_args(&os(&[
            "/s", "-l", "u", "ec2", "rsync", "--server", "-e.Lsf", ".", "a\\ b/",
        ]))
        .unwrap();
        assert_eq!(socket, PathBuf::from("/s"));
        assert_eq!(command, "rsync --server -e.Lsf . a\\ b/");
        let (_, command) = parse_transport_args(&os(&["/s", "ec2", "rsync", "--server"])).unwrap();
        assert_eq!(command, "rsync --server");
        assert!(parse_transport_args(&os(&["/s", "ec2"])).is_err());
    }

    #[test]
    fn rsync_quoting() {
        assert_eq!(rsync_quote("/usr/bin/x").unwrap(), "/usr/bin/x");
        assert_eq!(rsync_quote("/my dir/x").unwrap(), "'/my dir/x'");
        assert_eq!(rsync_quote("/it's/x").unwrap(), "\"/it's/x\"");
        assert!(rsync_quote("/'\"").is_err());
    }
}
