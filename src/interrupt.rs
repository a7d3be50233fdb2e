//! Ctrl-C, `kill` and a closed terminal (SIGINT, SIGTERM, SIGHUP; SIGQUIT like SIGTERM). Once installed, they no
//! longer kill ssh-ec2 outright: each phase decides what they mean (cancel before the command,
//! pass them on during it, finish bringing results home and the end of life after it), so an
//! instance is never leaked by a signal.

use std::fmt;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    HangUp,
    Quit,
}

impl Signal {
    /// The shell's convention: 128 + the signal number.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::HangUp => 129,
            Signal::Interrupt => 130,
            Signal::Quit => 131,
            Signal::Terminate => 143,
        }
    }

    /// The signal to pass on to the remote command, as SSH names it.
    pub fn for_remote(self) -> russh::Sig {
        match self {
            Signal::Interrupt => russh::Sig::INT,
            Signal::Terminate => russh::Sig::TERM,
            Signal::HangUp => russh::Sig::HUP,
            // Like SIGTERM, as the remote command sees it: many ignore SIGQUIT.
            Signal::Quit => russh::Sig::TERM,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "Ctrl-C",
            Signal::Terminate => "SIGTERM",
            Signal::HangUp => "SIGHUP",
            Signal::Quit => "SIGQUIT",
        })
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Received {
    count: u32,
    first: Option<Signal>,
    last: Option<Signal>,
}

/// The signals received so far.
#[derive(Clone)]
pub struct Interrupt {
    received: watch::Receiver<Received>,
    /// Signals before this view was made, which `until_count` does not count.
    baseline: u32,
}

/// The error of a run cut short by a signal; `main` turns it into 128 + the signal number.
#[derive(Debug)]
pub struct Interrupted(pub Signal);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted ({})", self.0)
    }
}

impl std::error::Error for Interrupted {}

impl Interrupt {
    pub fn install() -> anyhow::Result<Interrupt> {
        let (sender, received) = watch::channel(Received::default());
        for (kind, which) in [
            (SignalKind::interrupt(), Signal::Interrupt),
            (SignalKind::terminate(), Signal::Terminate),
            (SignalKind::hangup(), Signal::HangUp),
            (SignalKind::quit(), Signal::Quit),
        ] {
            let mut stream = signal(kind)?;
            let sender = sender.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    sender.send_modify(|r| {
                        r.count += 1;
                        r.first.get_or_insert(which);
                        r.last = Some(which);
                    });
                }
            });
        }
        Ok(Interrupt {
            received,
            baseline: 0,
        })
    }

    /// Waits until `count` signals came, counted from when this view was made (`only_new`);
    /// returns the last one.
    pub async fn until_count(&self, count: u32) -> Signal {
        let mut received = self.received.clone();
        let wanted = self.baseline + count;
        match received.wait_for(|r| r.count >= wanted).await {
            Ok(r) => r.last.unwrap_or(Signal::Interrupt),
            Err(_) => std::future::pending().await,
        }
    }

    /// The first signal received, if any.
    pub fn first(&self) -> Option<Signal> {
        self.received.borrow().first
    }

    /// A copy that only sees the signals still to come.
    pub fn only_new(&self) -> Interrupt {
        let mut received = self.received.clone();
        received.mark_unchanged();
        let baseline = received.borrow().count;
        Interrupt { received, baseline }
    }

    /// Waits for the next signal; returns how many there have been (since this view was made),
    /// and which it was.
    pub async fn next(&mut self) -> (u32, Signal) {
        if self.received.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let received = *self.received.borrow_and_update();
        (
            received.count - self.baseline,
            received.last.unwrap_or(Signal::Interrupt),
        )
    }

    /// Fails with [`Interrupted`] if a signal came already.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.first() {
            Some(signal) => Err(Interrupted(signal).into()),
            None => Ok(()),
        }
    }

    /// Sleeps, unless a signal comes first (or came already).
    pub async fn sleep(&self, delay: std::time::Duration) -> anyhow::Result<()> {
        self.cancel(async {
            tokio::time::sleep(delay).await;
            Ok(())
        })
        .await
    }

    /// Runs `work` unless a signal comes first (or came already).
    pub async fn cancel<T>(
        &self,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        self.check()?;
        let mut this = self.clone();
        tokio::select! {
            result = work => result,
            (_, signal) = this.next() => Err(Interrupted(signal).into()),
        }
    }
}
