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

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
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
/// What the relay reads from rsync at most at a time, i.e. two SSH packets of OpenSSH's 32 KiB.
const UPLOAD_CHUNK: usize = 64 * 1024;
/// What the relay gathers at most into one write to the transport.
const DOWNLOAD_BATCH: usize = 256 * 1024;
/// The transport's buffers, both ways.
const TRANSPORT_BUFFER: usize = 256 * 1024;

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
            ChannelMsg::ExitSignal { .. } => self.add(EXIT, &255u32.to_be_bytes()),
            // The exec request was refused: nothing runs, and the channel stays open.
            ChannelMsg::Failure => {
                self.add(STDERR, b"ssh-ec2: the instance refused to run rsync\n");
                self.add(EXIT, &255u32.to_be_bytes());
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

    // Unbuffered handles on rsync's socket (std's stdout would buffer by lines).
    let mut stdin = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut upload = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut buffer = vec![0; TRANSPORT_BUFFER];
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if upload.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = upload.shutdown(std::net::Shutdown::Write);
    });

    let mut frames = BufReader::with_capacity(TRANSPORT_BUFFER, stream);
    let mut stderr = std::io::stderr();
    let mut status = None;
    // Output may follow the exit status: read until the relay closes the stream.
    loop {
        let mut header = [0u8; 5];
        if let Err(e) = frames.read_exact(&mut header) {
            return status.with_context(|| {
                format!(
                    "the connection to the instance closed before the remote rsync finished: {e}"
                )
            });
        }
        let length = u32::from_be_bytes(header[1..].try_into().expect("4 bytes")) as usize;
        match header[0] {
            STDOUT => copy_exactly(&mut frames, &mut stdout, length)?,
            STDERR => copy_exactly(&mut frames, &mut stderr, length)?,
            EXIT => {
                let mut code = [0u8; 4];
                if length != code.len() {
                    bail!("bad exit frame from ssh-ec2");
                }
                frames.read_exact(&mut code)?;
                status = Some(u32::from_be_bytes(code).min(255) as i32);
            }
            other => bail!("unexpected frame kind {other} from ssh-ec2"),
        }
    }
}

/// Copies the next `length` bytes of `from` to `to`, straight out of `from`'s buffer.
fn copy_exactly(from: &mut impl BufRead, to: &mut impl Write, mut length: usize) -> Result<()> {
    while length > 0 {
        let available = from.fill_buf()?;
        if available.is_empty() {
            bail!("the connection to ssh-ec2 closed in the middle of a frame");
        }
        let n = available.len().min(length);
        to.write_all(&available[..n])?;
        from.consume(n);
        length -= n;
    }
    Ok(())
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
