//! How far a run got, recorded as it goes: what decides the end of life that is safe.

use std::sync::Arc;

use super::lease::Presence;
use crate::cloud::Instance;
use crate::remote::pulled::Checked;
use crate::remote::runs::Earlier;
use crate::ssh::{RemoteExit, Session, Target};
use crate::sync::Report;

/// How far a run got, which decides what end of life is safe.
#[derive(Default)]
pub struct Progress {
    pub command_started: bool,
    pub exit: Option<RemoteExit>,
    /// The command is over and its results are home (pulled back, or --no-rsync).
    pub results_home: bool,
    /// A job in tmux/screen, or an earlier run's command, goes on: the instance stays as it
    /// is, whatever the policy.
    pub goes_on: bool,
    /// What the syncs found to say at the end: conflicts, what stays on the instance.
    pub sync: Report,
    /// This run's lease on the instance, once it reached it.
    pub presence: Option<Presence>,
    /// What the commands of earlier runs of this directory, whose clients are gone, left on the
    /// instance, as last seen.
    pub earlier: Vec<Earlier>,
    /// The last session to the instance, to drop the lease and see who else is there.
    pub session: Option<Arc<Session>>,
    /// Where that session goes, for the connection kept after the run, and the instance as
    /// last seen running.
    pub target: Option<Target>,
    pub running: Option<Instance>,
    /// What the instance changed in the remote directory since the last pull that brought
    /// everything home, when known (asked as the run joined it): all the pull before the push
    /// needs to look at.
    pub changed_there: Option<Checked>,
    /// The push into the directory this run made stamped it (see `remote::pulled`): what the
    /// instance says changed since covers all it holds.
    pub push_stamped: bool,
}
