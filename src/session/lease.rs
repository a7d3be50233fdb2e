//! This run's lease on the shared instance (see `remote::lease`), touched while the run lives,
//! so that the last run out (and only it) applies the end of life.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::remote::job::Job;
use crate::remote::lease::{self, Lease};
use crate::ssh::Session;

pub struct Presence {
    lease: Lease,
    renewing: tokio::task::JoinHandle<()>,
}

impl Presence {
    pub async fn take(session: &Arc<Session>, job: &Job) -> Result<Presence> {
        let lease = Lease::new(job.name());
        session.run_captured(&lease.take_command()).await?;
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
        Ok(Presence { lease, renewing })
    }

    /// Drops the lease; how many other runs still hold a live one.
    pub async fn release(self, session: &Session) -> Result<u32> {
        self.renewing.abort();
        let answer = session.run_captured(&self.lease.release_command()).await?;
        let others: u32 = answer
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .context("cannot count the other runs' leases on the instance")?;
        Ok(others)
    }
}
