//! The holder's local side: an SSH server for later runs of this directory, which opens each
//! channel they ask for on the held connection and passes what either end sends. Each
//! direction has a task of its own: one waiting for room to send must never keep the other from
//! being read (russh stalls a whole connection while one channel's messages are not taken).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use russh::keys::PublicKey;
use russh::server::{self, Auth, Msg, PublicKeyOffer, VerifiedPublicKey};
use russh::{Channel, ChannelMsg, ChannelWriteHalf, client};

use super::lanes::Lanes;

/// Whether runs use the held connection: how many are connected, since when none is.
#[derive(Clone)]
pub(super) struct Activity(Arc<Mutex<(usize, Instant)>>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Mutex::new((0, Instant::now()))))
    }
}

impl Activity {
    /// No run has been connected for `keep`.
    pub fn idle_for(&self, keep: Duration) -> bool {
        let (connected, since) = *self.0.lock().expect("not poisoned");
        connected == 0 && since.elapsed() >= keep
    }

    /// No run is connected now.
    pub fn idle(&self) -> bool {
        self.idle_for(Duration::ZERO)
    }

    fn begin(&self) -> InUse {
        self.0.lock().expect("not poisoned").0 += 1;
        InUse(self.clone())
    }
}

/// One run connected; the idle time starts again when the last one leaves.
struct InUse(Activity);

impl Drop for InUse {
    fn drop(&mut self) {
        let mut state = (self.0).0.lock().expect("not poisoned");
        *state = (state.0 - 1, Instant::now());
    }
}

/// The server side of one run's connection to the holder.
pub(super) struct Proxy {
    pub upstream: Arc<Lanes>,
    /// Who may come in: the instance's user, with its login key.
    pub user: String,
    pub login: PublicKey,
    pub activity: Activity,
}

/// A `Proxy` serving one run, counted as activity while it lives.
pub(super) struct RunProxy {
    upstream: Arc<Lanes>,
    user: String,
    login: PublicKey,
    _in_use: InUse,
}

impl Proxy {
    pub fn for_one_run(&self) -> RunProxy {
        RunProxy {
            upstream: self.upstream.clone(),
            user: self.user.clone(),
            login: self.login.clone(),
            _in_use: self.activity.begin(),
        }
    }
}

impl RunProxy {
    fn may_log_in(&self, user: &str, key: &PublicKey) -> Auth {
        match user == self.user && key.key_data() == self.login.key_data() {
            true => Auth::Accept,
            false => Auth::reject(),
        }
    }
}

impl server::Handler for RunProxy {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.may_log_in(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.may_log_in(user, key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let (upstream, handle) = (self.upstream.clone(), session.handle());
        // Not awaited here: the run may open several channels at once, each a round trip away.
        tokio::spawn(async move {
            match upstream.session_channel().await {
                Ok((to_instance, _room)) => {
                    reply.accept().await;
                    pass_session(channel, to_instance, handle).await;
                }
                // Dropping the reply refuses the channel.
                Err(e) => tracing::debug!("held connection: {e:#}"),
            }
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Self::Error> {
        let upstream = self.upstream.clone();
        let (host, originator) = (host.to_string(), originator.to_string());
        tokio::spawn(async move {
            let opened = (upstream.first().handle)
                .channel_open_direct_tcpip(host, port, originator, originator_port)
                .await;
            match opened {
                Ok(to_instance) => {
                    reply.accept().await;
                    let (mut run, mut instance) =
                        (channel.into_stream(), to_instance.into_stream());
                    let _ = tokio::io::copy_bidirectional(&mut run, &mut instance).await;
                }
                Err(e) => tracing::debug!("held connection: {e}"),
            }
        });
        Ok(())
    }
}

/// Passes a session channel's messages both ways until either end closes it.
async fn pass_session(run: Channel<Msg>, instance: Channel<client::Msg>, handle: server::Handle) {
    let id = run.id();
    let (mut from_run, to_run) = run.split();
    let (mut from_instance, to_instance) = instance.split();
    let up = tokio::spawn(async move {
        while let Some(message) = from_run.wait().await {
            if pass_up(message, &to_instance).await.is_err() {
                break;
            }
        }
        let _ = to_instance.close().await;
    });
    while let Some(message) = from_instance.wait().await {
        if pass_down(message, &to_run, &handle, id).await.is_err() {
            break;
        }
    }
    let _ = to_run.close().await;
    up.abort();
}

/// What the run asks of its channel, asked of the instance's.
async fn pass_up(message: ChannelMsg, to: &ChannelWriteHalf<client::Msg>) -> Result<()> {
    match message {
        ChannelMsg::Data { data } => to.data_bytes(data).await?,
        ChannelMsg::Eof => to.eof().await?,
        ChannelMsg::Close => to.close().await?,
        ChannelMsg::RequestPty {
            want_reply,
            term,
            col_width,
            row_height,
            pix_width,
            pix_height,
            terminal_modes,
        } => {
            to.request_pty(
                want_reply,
                &term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                &terminal_modes,
            )
            .await?
        }
        ChannelMsg::Exec {
            want_reply,
            command,
        } => to.exec(want_reply, command).await?,
        ChannelMsg::RequestShell { want_reply } => to.request_shell(want_reply).await?,
        ChannelMsg::SetEnv {
            want_reply,
            variable_name,
            variable_value,
        } => {
            to.set_env(want_reply, variable_name, variable_value)
                .await?
        }
        ChannelMsg::WindowChange {
            col_width,
            row_height,
            pix_width,
            pix_height,
        } => {
            to.window_change(col_width, row_height, pix_width, pix_height)
                .await?
        }
        ChannelMsg::Signal { signal } => to.signal(signal).await?,
        _ => {}
    }
    Ok(())
}

/// What the instance answers on its channel, answered on the run's.
async fn pass_down(
    message: ChannelMsg,
    to: &ChannelWriteHalf<Msg>,
    handle: &server::Handle,
    id: russh::ChannelId,
) -> Result<()> {
    let gone = |()| anyhow!("the run's connection to the holder is gone");
    match message {
        ChannelMsg::Data { data } => to.data_bytes(data).await?,
        ChannelMsg::ExtendedData { data, ext } => to.extended_data_bytes(ext, data).await?,
        ChannelMsg::Eof => to.eof().await?,
        ChannelMsg::ExitStatus { exit_status } => to.exit_status(exit_status).await?,
        ChannelMsg::ExitSignal {
            signal_name,
            core_dumped,
            error_message,
            lang_tag,
        } => (handle.exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag))
            .await
            .map_err(gone)?,
        ChannelMsg::Success => handle.channel_success(id).await.map_err(gone)?,
        ChannelMsg::Failure => handle.channel_failure(id).await.map_err(gone)?,
        ChannelMsg::Close => to.close().await?,
        _ => {}
    }
    Ok(())
}
