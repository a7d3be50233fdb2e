//! Ctrl-C. Once installed, SIGINT no longer kills ssh-ec2: each phase decides what it means
//! (cancel before the command, pass it on during the command, finish cleaning up after it).

use std::fmt;

use tokio::sync::watch;

/// Counts the Ctrl-Cs received so far.
#[derive(Clone)]
pub struct Interrupt {
    count: watch::Receiver<u32>,
}

/// The error of a run cut short by Ctrl-C; `main` turns it into exit status 130.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted (Ctrl-C)")
    }
}

impl std::error::Error for Interrupted {}

impl Interrupt {
    pub fn install() -> Interrupt {
        let (sender, count) = watch::channel(0);
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                sender.send_modify(|n| *n += 1);
            }
        });
        Interrupt { count }
    }

    pub fn happened(&self) -> bool {
        *self.count.borrow() > 0
    }

    /// A copy that only sees the Ctrl-Cs still to come.
    pub fn only_new(&self) -> Interrupt {
        let mut count = self.count.clone();
        count.mark_unchanged();
        Interrupt { count }
    }

    /// Waits for the next Ctrl-C and returns how many there have been.
    pub async fn next(&mut self) -> u32 {
        if self.count.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        *self.count.borrow_and_update()
    }

    /// Runs `work` unless Ctrl-C comes first (or came already).
    pub async fn cancel<T>(
        &self,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        if self.happened() {
            return Err(Interrupted.into());
        }
        let mut this = self.clone();
        tokio::select! {
            result = work => result,
            _ = this.next() => Err(Interrupted.into()),
        }
    }
}
