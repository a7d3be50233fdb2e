//! The transport process: what rsync runs as its "remote shell" (`ssh-ec2 --rsync-transport
//! SOCKET [-l USER] HOST COMMAND…`). It hands the command to the running ssh-ec2 through the
//! relay's socket (see `relay` for the frames), then pipes rsync's stdin up and the frames'
//! stdout, stderr and exit status back down. Blocking std I/O on purpose: it is a plain pipe.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::relay::{EXIT, STDERR, STDOUT, TRANSPORT_BUFFER};
use crate::printer::{Printer, Verbosity};
use crate::status::ExitStatus;

/// Entry point of transport mode; ends with the remote command's exit status for rsync.
/// Blocking std I/O on purpose: it is a plain pipe between rsync and the socket.
pub fn transport_main(args: &[OsString]) -> ExitStatus {
    match transport(args) {
        Ok(code) => ExitStatus::remote(code),
        Err(e) => {
            Printer::new(Verbosity::Quiet).error(&e.context("the rsync transport failed"));
            ExitStatus::Failed
        }
    }
}

fn transport(args: &[OsString]) -> Result<u32> {
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
                status = Some(u32::from_be_bytes(code));
            }
            other => bail!("unexpected frame kind {other} from ssh-ec2"),
        }
    }
}

/// Copies the next `length` bytes of `from` to `to`, straight out of `from`'s buffer.
pub(super) fn copy_exactly(
    from: &mut impl BufRead,
    to: &mut impl Write,
    mut length: usize,
) -> Result<()> {
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
}
