//! This run's lease on the shared instance (see `remote::lease`), touched while the run lives,
//! so that the last run out (and only it) applies the end of life. Taking and dropping it also
//! tells what the commands of earlier runs, whose clients are gone, left there (`remote::runs`).

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::remote::job::Job;
use crate::remote::lease::{self, Lease};
use crate::remote::runs::{self, Earlier, RunRecord};
use crate::ssh::Session;

pub struct Presence {
    lease: Lease,
    renewing: tokio::task::JoinHandle<()>,
    /// The run's command is over: its record goes with the lease (one command for both).
    command_over: bool,
}

impl Presence {
    /// Takes this run's lease; also says what earlier runs' commands left.
    pub async fn take(session: &Arc<Session>, job: &Job) -> Result<(Presence, Vec<Earlier>)> {
        let lease = Lease::new(job.name());
        let take = format!(
            "{} && {{ {}; }}",
            lease.take_command(),
            runs::earlier_command(job.name())
        );
        let answer = session.run_captured(&take).await?;
        let renew = lease.renew_command();
        let session = session.clone();
        let renewing = tokio::spawn(async move {
            // A period, not a wait: the lease is touched as long as the run lives.
            let mut every = tokio::time::interval(lease::RENEW_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = session.run_captured(&renew).await {
                    tracing::debug!("could not renew the lease: {e:#}");
                }
            }
        });
        let earlier = runs::parse_earlier(job.name(), &answer);
        let presence = Presence {
            lease,
            renewing,
            command_over: false,
        };
        Ok((presence, earlier))
    }

    /// The record of this run's command, named like its lease: once the lease no longer
    /// counts, the next runs know the command as an earlier run's.
    pub fn run_record(&self) -> RunRecord {
        RunRecord::of(&self.lease)
    }

    /// Nothing of the run's command runs any more: its record is dropped with the lease
    /// (before it, so that the lease's end does not make it an earlier run's).
    pub fn command_over(&mut self) {
        self.command_over = true;
    }

    /// Drops the lease; how many other runs still hold a live one, and what earlier runs'
    /// commands left.
    pub async fn release(self, session: &Session, job: &Job) -> Result<(u32, Vec<Earlier>)> {
        self.renewing.abort();
        let record = match self.command_over {
            true => format!("{}; ", self.run_record().cleanup_command()),
            false => String::new(),
        };
        let release = format!(
            "{record}{}; {}",
            self.lease.release_command(),
            runs::earlier_command(job.name())
        );
        let answer = session.run_captured(&release).await?;
        let others = answer
            .lines()
            .filter_map(|l| l.trim().parse::<u32>().ok())
            .next_back()
            .context("cannot count the other runs' leases on the instance")?;
        Ok((others, runs::parse_earlier(job.name(), &answer)))
    }
}
