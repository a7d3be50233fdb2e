//! A run's lifecycle on this directory's instance, shared by the modes that reach it (a run,
//! `--detach`, `--attach`, `--finish`, `--down`): reaching the instance and reconnecting
//! (`reach`), replacing the host key its user-data carried (`host_key`), the lease that tells
//! other runs it is in use (`lease`), the command run directly (`run`) or as a job (`job`),
//! the commands of earlier runs whose clients are gone (`earlier`), a cluster's other nodes
//! (`cluster`), the final pull (`pull`), the user's variables sent with each command (`env`),
//! and the end of the run: the end of life and the exit status (`end`), the summary line
//! (`summary`).

mod address;
mod cluster;
mod earlier;
mod end;
mod env;
mod host_key;
mod job;
mod lease;
mod logs;
mod output;
mod prepare;
mod progress;
mod pull;
mod reach;
mod run;
mod summary;
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::cloud::{Account, Cloud};
use crate::fleet::{self, Machine, MachineSpec};
use crate::interrupt::Interrupt;
use crate::printer::Printer;
use crate::remote::RemoteDir;
use crate::remote::env::Environment;
use crate::settings::values::{Address, HostPort, Multiplex};
use crate::ssh::forward::{Forward, LocalForward};
use crate::state::lock::DirLock;
use crate::state::{Dirs, Store};

pub use address::ssh_address;
pub use earlier::{end_earlier, still_running, still_running_note, wait_for_earlier};
pub use end::end_of_run;
pub use job::{
    Followed, attach_node, come_back_hint, conclude_job, end_job, follow_job, job_state,
};
pub use logs::{cut_short, home_log, job_ended, lost, print_log, show_unseen};
pub use progress::Progress;
pub use pull::pull_home;
pub use reach::{reach, reach_and_join};
pub use run::run;
pub use summary::Span;

/// What a mode on this directory's instance was asked to do, resolved (see `plan`).
#[derive(Debug)]
pub struct Plan {
    pub account: Account,
    pub dirs: Dirs,
    pub local_dir: PathBuf,
    pub remote_dir: RemoteDir,
    /// The instance: which one, how to launch it, how it ends.
    pub machine: MachineSpec,
    pub reach: Reach,
    pub terminal: Terminal,
    pub forwards: Forwards,
    /// `None` with --no-rsync, and for the modes that do not sync.
    pub sync: Option<crate::sync::Options>,
    /// The remote command; `None` opens a login shell.
    pub command: Option<String>,
    /// The user's variables for it (and for the shell), on every node.
    pub env: Environment,
    /// tmux/screen as asked (`None`: not asked; the mode decides).
    pub multiplex: Option<Multiplex>,
}

/// Where the instance's sshd is dialled.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Which of the instance's addresses.
    pub address: Address,
    /// Dialled instead of the instance's address (a tunnel).
    pub connect: Option<HostPort>,
}

/// How the instance's sshd is reached.
#[derive(Debug)]
pub struct Reach {
    pub dial: Dial,
    /// For the instance to run with its SSH letting us in.
    pub boot_timeout: Duration,
    /// How long to try to reconnect to a running job after the connection dropped.
    pub reconnect_timeout: Duration,
    /// How long the connection to an instance left running is kept (`None`: not kept).
    pub keep_connection: Option<Duration>,
}

/// What the local terminal allows.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    /// Request a PTY and put the local terminal in raw mode.
    pub pty: bool,
    /// Pass local stdin on; not from a terminal we are in the background of (it would stop us).
    pub forward_stdin: bool,
}

/// `-L` (their local ports already bound) and `-R`.
#[derive(Debug, Default)]
pub struct Forwards {
    pub local: Vec<LocalForward>,
    pub remote: Vec<Forward>,
}

/// What every mode on the instance opens before it knows the instance: signal handling, AWS,
/// the instances' state on this machine.
pub struct Ground {
    pub interrupt: Interrupt,
    pub cloud: Cloud,
    pub store: Store,
}

impl Ground {
    pub async fn open(account: &Account, dirs: &Dirs) -> Result<Ground> {
        Ok(Ground {
            interrupt: Interrupt::install()?,
            cloud: Cloud::connect(account).await,
            store: Store::new(&dirs.root),
        })
    }

    /// Takes the directory's lock, waiting for another run's (Ctrl-C ends the wait).
    pub async fn lock(&self, plan: &Plan, printer: &Printer) -> Result<DirLock> {
        DirLock::wait(
            &plan.dirs.root,
            &plan.local_dir,
            printer,
            Some(&self.interrupt),
        )
        .await
    }

    /// This directory's instance, reused or launched.
    pub async fn acquire(&self, plan: &Plan, printer: &Printer) -> Result<Machine> {
        fleet::acquire(
            &self.cloud,
            &plan.machine,
            &self.store,
            printer,
            &self.interrupt,
        )
        .await
    }

    /// This directory's instance, never launched; a stopped one is started if `start`.
    pub async fn find(&self, plan: &Plan, printer: &Printer, start: bool) -> Result<Machine> {
        let spec = &plan.machine;
        fleet::find(
            &self.cloud,
            spec,
            &self.store,
            printer,
            &self.interrupt,
            start,
        )
        .await
    }

    /// This directory's instance to end, if it has one (started if stopped, to pull from it).
    pub async fn find_to_end(&self, plan: &Plan, printer: &Printer) -> Result<Option<Machine>> {
        let spec = &plan.machine;
        fleet::find_to_end(&self.cloud, spec, &self.store, printer, &self.interrupt).await
    }

    pub fn scene<'a>(
        &'a self,
        plan: &'a Plan,
        machine: &'a Machine,
        printer: &'a Printer,
    ) -> Scene<'a> {
        Scene {
            cloud: &self.cloud,
            plan,
            store: &self.store,
            machine,
            interrupt: &self.interrupt,
            printer,
        }
    }
}

/// What a mode works with once this directory's instance is known.
pub struct Scene<'a> {
    pub cloud: &'a Cloud,
    pub plan: &'a Plan,
    pub store: &'a Store,
    pub machine: &'a Machine,
    pub interrupt: &'a Interrupt,
    pub printer: &'a Printer,
}
