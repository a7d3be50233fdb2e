//! The session's channels: commands run and read back, the channels kept opened ahead for the
//! next one, and a look at the host key the instance's sshd presents from inside.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;
use russh::client;
use russh::keys::PublicKey;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ATTEMPT_TIMEOUT, PinnedHostKey, Session, config, forward};
use crate::settings::values::HostPort;

/// A session channel to the instance.
pub(super) type Channel = russh::Channel<client::Msg>;

/// Session channels opened ahead of the commands that will use them: opening one is a round
/// trip to the instance, which each step of a run would otherwise wait for in turn.
pub(super) struct Ahead {
    wanted: usize,
    opening: VecDeque<tokio::task::JoinHandle<Result<Channel, russh::Error>>>,
}

impl Default for Ahead {
    /// Two: a run's end asks two things at once (its lease's release, the job's state).
    fn default() -> Self {
        Ahead {
            wanted: 2,
            opening: VecDeque::new(),
        }
    }
}

/// A channel's sending half, closed when dropped unless its command ended well.
struct CloseUnlessDone(Option<russh::ChannelWriteHalf<client::Msg>>);

impl CloseUnlessDone {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseUnlessDone {
    fn drop(&mut self) {
        if let Some(write) = self.0.take() {
            tokio::spawn(async move {
                let _ = write.close().await;
            });
        }
    }
}

/// What a fed command's input is read in at most at a time: a few of the packets it goes in.
const FED_CHUNK: usize = 64 * 1024;

/// The most a short command's answer may hold: the instance is not trusted with the laptop's
/// memory.
const CAPTURED_UP_TO: usize = 16 << 20;

impl Session {
    /// Runs a short non-interactive command and returns its stdout, or fails with its stderr.
    pub async fn run_captured(&self, command: &str) -> Result<String> {
        let stdout = self.run_captured_bytes(command).await?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// As `run_captured`, its output as it is (names that are not UTF-8).
    pub async fn run_captured_bytes(&self, command: &str) -> Result<Vec<u8>> {
        let (read, _) = self.open_exec(command).await?.split();
        captured(read, command).await
    }

    /// As `run_captured`, with `input` on the command's stdin (what must not show on its
    /// command line, which every process on the instance can read); `what` names the command
    /// in errors.
    pub async fn run_fed(&self, what: &str, command: &str, input: &[u8]) -> Result<String> {
        let stdout = self.run_fed_from(what, command, input).await?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// As `run_fed`, its output as it is (files' bytes), with all `input` reads on the
    /// command's stdin, each handed to russh as it is. Failed or dropped before its end (a
    /// cancelled transfer), the channel is closed: russh does not close a dropped one, and the
    /// command would wait for the rest of its input.
    pub async fn run_fed_from(
        &self,
        what: &str,
        command: &str,
        mut input: impl AsyncRead + Unpin,
    ) -> Result<Vec<u8>> {
        let (read, write) = self.open_exec(command).await?.split();
        let closing = CloseUnlessDone(Some(write));
        let lost = "the connection to the instance was lost while sending input";
        let send = async {
            let write = closing.0.as_ref().expect("until done");
            loop {
                let mut chunk = Vec::with_capacity(FED_CHUNK);
                let read = (input.read_buf(&mut chunk).await)
                    .with_context(|| format!("cannot read the input of `{what}`"))?;
                if read == 0 {
                    return write.eof().await.context(lost);
                }
                write.data_bytes(chunk).await.context(lost)?;
            }
        };
        // Read as it is sent: a command that fails says so before taking all its input.
        let answer = captured(read, what);
        tokio::pin!(answer);
        let answered = tokio::select! {
            biased;
            sent = send => {
                sent?;
                answer.await?
            }
            answer = &mut answer => {
                answer?;
                bail!("`{what}` ended on the instance before it took all its input")
            }
        };
        closing.done();
        Ok(answered)
    }

    pub async fn open_exec(&self, command: &str) -> Result<Channel> {
        let channel = self.open_channel().await?;
        channel
            .exec(true, command)
            .await
            .context("cannot run a command: the connection to the instance was lost")?;
        Ok(channel)
    }

    /// A session channel: one opened ahead if there is one; then as many are opened ahead as
    /// the session keeps.
    pub(super) async fn open_channel(&self) -> Result<Channel> {
        let ahead = self.ahead.lock().expect("not poisoned").opening.pop_front();
        let opened = match ahead {
            Some(ahead) => match ahead.await {
                Ok(Ok(channel)) => Ok(channel),
                _ => self.handle.channel_open_session().await,
            },
            None => self.handle.channel_open_session().await,
        };
        let channel = opened
            .context("cannot open an SSH channel: the connection to the instance was lost")?;
        self.open_ahead();
        Ok(channel)
    }

    /// Keeps `wanted` channels opened ahead (two, unless told): each counts as a session of
    /// the connection for sshd (`MaxSessions`).
    pub(super) fn keep_ahead(&self, wanted: usize) {
        let dropped = {
            let mut ahead = self.ahead.lock().expect("not poisoned");
            ahead.wanted = wanted;
            let extra = ahead.opening.len().saturating_sub(wanted);
            ahead.opening.drain(..extra).collect::<Vec<_>>()
        };
        dropped.iter().for_each(|opening| opening.abort());
        self.open_ahead();
    }

    fn open_ahead(&self) {
        let mut ahead = self.ahead.lock().expect("not poisoned");
        while ahead.opening.len() < ahead.wanted && !self.handle.is_closed() {
            let handle = self.handle.clone();
            let opening = tokio::spawn(async move { handle.channel_open_session().await });
            ahead.opening.push_back(opening);
        }
    }

    /// The host key the instance's own sshd on `port` presents to a connection from inside the
    /// instance, made through this session; no login: the handshake stops at the key. `None`:
    /// nothing listens there now (sshd between the two lives of its reload); an error: the
    /// instance does not let this session connect there (forwarding off).
    pub async fn presented_inside(&self, port: u16) -> Result<Option<PublicKey>> {
        let inside = HostPort {
            host: "127.0.0.1".into(),
            port,
        };
        let stream = match self.tunnel(&inside).await {
            Ok(stream) => stream,
            Err(russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::ConnectFailed)) => {
                return Ok(None);
            }
            Err(e) => bail!("cannot reach the instance's sshd from inside it: {e}"),
        };
        let presented = Arc::new(Mutex::new(None));
        let refuse_every_key = PinnedHostKey {
            accepted: Vec::new(),
            presented: presented.clone(),
            remote_targets: forward::RemoteTargets::default(),
        };
        let config = Arc::new(config::client_config());
        let handshake = client::connect_stream(config, stream, refuse_every_key);
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, handshake).await;
        Ok(presented.lock().expect("not poisoned").take())
    }

    /// The channels opened ahead go: the session is closing.
    pub(super) fn drop_ahead(&self) {
        // Also called while unwinding: a poisoned lock is left alone.
        if let Ok(mut ahead) = self.ahead.lock() {
            ahead.wanted = 0;
            ahead.opening.drain(..).for_each(|opening| opening.abort());
        }
    }
}

impl Drop for Session {
    /// The channels opened ahead hold the connection: they go with the session.
    fn drop(&mut self) {
        self.drop_ahead();
    }
}

/// What a short command printed, once it ended well; else its failure, with its stderr.
/// `command` names it in errors.
async fn captured(mut channel: russh::ChannelReadHalf, command: &str) -> Result<Vec<u8>> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut status = None;
    while let Some(message) = channel.wait().await {
        match message {
            ChannelMsg::Data { .. } | ChannelMsg::ExtendedData { .. }
                if stdout.len() + stderr.len() > CAPTURED_UP_TO =>
            {
                bail!("`{command}` printed more than {CAPTURED_UP_TO} bytes on the instance")
            }
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Failure => bail!("the instance refused to run `{command}`"),
            _ => {}
        }
    }
    match status {
        Some(0) => Ok(stdout),
        Some(code) => bail!(
            "`{command}` failed on the instance (exit {code}): {}",
            String::from_utf8_lossy(&stderr).trim()
        ),
        None => bail!("the connection closed while running `{command}` on the instance"),
    }
}
