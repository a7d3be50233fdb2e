//! The user's variables (`-e`, `--env-file`, `env`) sent with what starts a command on a node:
//! on a channel's stdin, never on a command line (see `remote::env`).

use anyhow::Result;

use crate::remote::RemoteDir;
use crate::remote::env::Environment;
use crate::remote::job::{Job, Multiplexer};
use crate::remote::logs::LogName;
use crate::remote::runs::RunRecord;
use crate::ssh::Session;

/// Sends the user's variables, if any, into the run's record on the node of `session`, where
/// its command line finds them: on a channel of their own, since the command's stdin is the
/// user's.
pub async fn write_env(session: &Session, record: &RunRecord, env: &Environment) -> Result<()> {
    if env.is_empty() {
        return Ok(());
    }
    let write = record.write_env_command();
    session
        .run_fed("the command's environment", &write, env.script().as_bytes())
        .await
        .map(drop)
}

/// How this directory's job starts, on the head and on every other node.
pub struct JobStart<'a> {
    pub job: &'a Job,
    pub multiplexer: Multiplexer,
    pub dir: &'a RemoteDir,
    pub size: (u16, u16),
    pub env: &'a Environment,
}

impl JobStart<'_> {
    /// Starts `command` as the job on the node of `session`, its output into `log`, the user's
    /// variables on the channel's stdin (never on its command line).
    pub async fn on(&self, session: &Session, command: &str, log: &LogName) -> Result<()> {
        let JobStart {
            job,
            multiplexer,
            dir,
            size,
            env,
        } = self;
        let start = job.start_command(*multiplexer, dir, command, *size, !env.is_empty(), log);
        match env.is_empty() {
            true => session.run_captured(&start).await?,
            false => (session.run_fed("the job's start", &start, env.script().as_bytes())).await?,
        };
        Ok(())
    }
}
