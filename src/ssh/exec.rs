//! Runs the user's command over the session, like `ssh [-t] host command`: live stdout and
//! stderr, local stdin forwarded, a PTY and raw mode when we sit on a terminal.

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;
use std::sync::{Arc, OnceLock};

use tokio::io::AsyncWriteExt;

use super::Session;
use crate::interrupt::{Interrupt, Signal};
use crate::printer::Printer;

/// How the remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteExit {
    Status(u32),
    Signal(String),
}

/// Puts the local terminal in raw mode for as long as it lives, whatever path ends the run.
struct RawMode;

impl RawMode {
    fn enable() -> Result<RawMode> {
        crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The local stdin, read by one thread for the whole process and handed to one session at a
/// time. A read cannot be taken back: a session that ended (a dropped connection) would
/// otherwise leave one waiting, which would swallow what is typed while ssh-ec2 reconnects.
struct LocalInput {
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    /// Read, but not sent by the session that ended: the next one sends it first.
    unsent: Option<Vec<u8>>,
}

impl LocalInput {
    /// The input, once no other session holds it; the first call starts reading stdin.
    async fn take() -> tokio::sync::MutexGuard<'static, LocalInput> {
        static INPUT: OnceLock<tokio::sync::Mutex<LocalInput>> = OnceLock::new();
        let input = INPUT.get_or_init(|| {
            let (sender, chunks) = tokio::sync::mpsc::channel(16);
            std::thread::spawn(move || {
                let mut stdin = std::io::stdin();
                let mut buffer = vec![0; 32 * 1024];
                loop {
                    let read = match std::io::Read::read(&mut stdin, &mut buffer) {
                        Ok(0) => break,
                        Ok(read) => read,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    if sender.blocking_send(buffer[..read].to_vec()).is_err() {
                        break;
                    }
                }
            });
            tokio::sync::Mutex::new(LocalInput {
                chunks,
                unsent: None,
            })
        });
        input.lock().await
    }

    /// The next chunk of input; `None` at its end.
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self.unsent.take() {
            Some(chunk) => Some(chunk),
            None => self.chunks.recv().await,
        }
    }

    fn keep(&mut self, chunk: Vec<u8>) {
        self.unsent = Some(chunk);
    }
}

/// The shell's status for a command killed by SIGPIPE (128 + 13).
const SIGPIPE_STATUS: u32 = 141;

/// Runs `command_line` and streams it until it exits. A first signal (Ctrl-C, SIGTERM) is
/// passed on to the command; a second one, or SIGHUP, hangs up on it.
///
/// A local stdout that closes (`ssh-ec2 make train | head`) does not end the run: `cut_output`
/// is run on the instance to tell the command its output is gone, and the run goes on to the
/// command's end. Output for a closed stderr is dropped.
pub async fn run_command(
    session: &Arc<Session>,
    command_line: &str,
    cut_output: Option<&str>,
    pty: bool,
    forward_stdin: bool,
    interrupt: &Interrupt,
    printer: &Printer,
) -> Result<RemoteExit> {
    let (channel, _raw_mode) = start(session, command_line, pty).await?;
    let (mut from_remote, to_remote) = channel.split();
    let to_remote = Arc::new(to_remote);

    // `~.` typed on a terminal: hang up, as ssh does.
    let (escaped, mut escape_hang_up) = tokio::sync::oneshot::channel::<()>();
    let stdin_task = tokio::spawn(pass_stdin(to_remote.clone(), forward_stdin, pty, escaped));
    let resize_task = pty.then(|| tokio::spawn(pass_window_changes(to_remote.clone())));

    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut interrupts = interrupt.clone();
    let mut exit = None;
    let mut hung_up = false;
    let (mut stdout_open, mut stderr_open) = (true, true);
    let mut stdin_done = false;
    loop {
        tokio::select! {
            message = from_remote.wait() => match message {
                Some(ChannelMsg::Data { data }) if stdout_open => {
                    if write_now(&mut stdout, &data).await.is_err() {
                        stdout_open = false;
                        tracing::debug!("local stdout closed: telling the remote command");
                        if let Some(cut_output) = cut_output {
                            // Not awaited here: this channel must keep being read meanwhile, or
                            // russh, its buffer full, would stall the whole connection.
                            tokio::spawn(tell_output_gone(session.clone(), cut_output.to_string(), printer.clone()));
                        }
                    }
                }
                Some(ChannelMsg::ExtendedData { data, .. }) if stderr_open => {
                    stderr_open = write_now(&mut stderr, &data).await.is_ok();
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    exit = Some(RemoteExit::Status(exit_status));
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    exit = Some(RemoteExit::Signal(format!("{signal_name:?}")));
                }
                // The reply to the PTY or exec request: nothing will run.
                Some(ChannelMsg::Failure) => {
                    let _ = to_remote.close().await;
                    bail!("the instance refused to run the command (or to give it a terminal)");
                }
                // Output can still arrive after the exit status: read until the channel closes.
                Some(_) => {}
                None => break,
            },
            escape = &mut escape_hang_up, if !stdin_done => {
                // Also when stdin ended without one: a oneshot is polled once.
                stdin_done = true;
                if escape.is_ok() {
                    printer.warn("~.: hanging up on the remote command");
                    hung_up = true;
                    let _ = to_remote.close().await;
                    break;
                }
            }
            (count, signal) = interrupts.next() => {
                if count == 1 && signal != Signal::HangUp {
                    printer.warn(&format!(
                        "{signal}: passed on to the remote command; again to hang up on it"
                    ));
                    let _ = to_remote.signal(signal.for_remote()).await;
                } else {
                    printer.warn(&format!("{signal}: hanging up on the remote command"));
                    hung_up = true;
                    let _ = to_remote.close().await;
                    // sshd keeps the channel while the command lives: the caller ends it.
                    break;
                }
            }
        }
    }
    stdin_task.abort();
    if let Some(task) = resize_task {
        task.abort();
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    // Killed by the SIGPIPE we caused: what a local pipeline would report, not ssh's 255.
    if !stdout_open && exit == Some(RemoteExit::Signal("PIPE".into())) {
        exit = Some(RemoteExit::Status(SIGPIPE_STATUS));
    }
    exit.with_context(|| match hung_up {
        true => "hung up on the remote command before it finished",
        false => "the connection to the instance was lost before the command finished",
    })
}

/// Starts `command_line` on a new channel; with `pty`, in a terminal of the local one's size,
/// the local one put in raw mode for as long as the result lives.
async fn start(
    session: &Session,
    command_line: &str,
    pty: bool,
) -> Result<(russh::Channel<russh::client::Msg>, Option<RawMode>)> {
    let channel = session.open_channel().await?;
    let raw_mode = if pty {
        let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
        channel
            .request_pty(true, &term, cols.into(), rows.into(), 0, 0, &[])
            .await?;
        Some(RawMode::enable()?)
    } else {
        None
    };
    channel.exec(true, command_line).await?;
    Ok((channel, raw_mode))
}

/// Passes local stdin on to the command, as it comes, then its end; on a terminal, `~.` hangs
/// up (said through `escaped`), as ssh does.
async fn pass_stdin(
    to_remote: Arc<russh::ChannelWriteHalf<russh::client::Msg>>,
    forward_stdin: bool,
    pty: bool,
    escaped: tokio::sync::oneshot::Sender<()>,
) {
    if !forward_stdin {
        let _ = to_remote.eof().await;
        return;
    }
    let mut input = LocalInput::take().await;
    let mut escapes = Escapes::default();
    while let Some(chunk) = input.next().await {
        // Escapes exist on a terminal only, as in ssh.
        let (forward, hang_up) = match pty {
            true => escapes.filter(&chunk),
            false => (chunk, false),
        };
        if !forward.is_empty() && to_remote.data(&forward[..]).await.is_err() {
            // The connection is gone: what was read goes to the next session.
            input.keep(forward);
            return;
        }
        if hang_up {
            let _ = escaped.send(());
            return;
        }
    }
    let _ = to_remote.eof().await;
}

/// Tells the remote PTY each new size of the local terminal.
async fn pass_window_changes(to_remote: Arc<russh::ChannelWriteHalf<russh::client::Msg>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut resized) = signal(SignalKind::window_change()) else {
        return;
    };
    while resized.recv().await.is_some() {
        if let Ok((cols, rows)) = crossterm::terminal::size() {
            let _ = to_remote
                .window_change(cols.into(), rows.into(), 0, 0)
                .await;
        }
    }
}

/// Runs `cut_output` on the instance: the command's output has nowhere to go any more.
async fn tell_output_gone(session: Arc<Session>, cut_output: String, printer: Printer) {
    if let Err(e) = session.run_captured(&cut_output).await {
        printer.warn(&format!(
            "could not tell the command its output is gone: {e:#}"
        ));
    }
}

async fn write_now(to: &mut (impl AsyncWriteExt + Unpin), data: &[u8]) -> std::io::Result<()> {
    to.write_all(data).await?;
    to.flush().await
}

/// ssh's escapes on a terminal: `~` right after a newline (or first) starts one; `~.` hangs up,
/// `~~` sends one `~`; `~` before anything else is sent as typed.
struct Escapes {
    at_line_start: bool,
    tilde_pending: bool,
}

impl Default for Escapes {
    fn default() -> Self {
        Escapes {
            at_line_start: true,
            tilde_pending: false,
        }
    }
}

impl Escapes {
    /// What to send of `input`, and whether `~.` asked to hang up (what follows it is dropped).
    fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if self.tilde_pending {
                self.tilde_pending = false;
                match byte {
                    b'.' => return (out, true),
                    b'~' => {
                        out.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if self.at_line_start && byte == b'~' {
                self.tilde_pending = true;
                continue;
            }
            out.push(byte);
            self.at_line_start = matches!(byte, b'\r' | b'\n');
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_act_only_after_a_newline() {
        let mut escapes = Escapes::default();
        assert_eq!(escapes.filter(b"a~.b"), (b"a~.b".to_vec(), false));
        assert_eq!(escapes.filter(b"\r~~x"), (b"\r~x".to_vec(), false));
        assert_eq!(escapes.filter(b"\r~"), (b"\r".to_vec(), false), "held back");
        assert_eq!(
            escapes.filter(b"y"),
            (b"~y".to_vec(), false),
            "then sent as typed"
        );
        assert_eq!(escapes.filter(b"\n~.rest"), (b"\n".to_vec(), true));
        assert_eq!(
            Escapes::default().filter(b"~."),
            (Vec::new(), true),
            "first thing typed"
        );
    }
}
