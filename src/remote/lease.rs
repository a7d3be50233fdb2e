//! Presence on a shared instance: each run that may end the instance holds a lease, a file in
//! `~/.ssh-ec2/leases/<directory's job name>/` that it touches while it lives. The file names
//! the sshd process of the holder's connection: a killed client's connection closes, and its
//! lease with it. A lease not touched for two minutes (a laptop that vanished without closing
//! its connection) no longer counts either, so a dead holder never pins the instance.

/// How often a live holder touches its lease; well under the expiry below.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Minutes after which an untouched lease no longer counts (find's `-mmin`).
pub(super) const EXPIRES_AFTER_MINUTES: u32 = 2;

pub struct Lease {
    /// The directory the instance belongs to (a job name), so leases never mix.
    scope: String,
    token: String,
}

impl Lease {
    pub fn new(scope: &str) -> Lease {
        Lease {
            scope: scope.to_string(),
            token: super::new_token(),
        }
    }

    fn dir(&self) -> String {
        format!("{}/{}", super::state_dir("leases"), self.scope)
    }

    fn path(&self) -> String {
        format!("{}/{}", self.dir(), self.token)
    }

    /// `$PPID`, the sshd process serving this connection, with its start time: a pid alone
    /// may be another process's after a restart.
    pub fn take_command(&self) -> String {
        format!(
            "mkdir -p {} && echo \"$PPID $({STARTED} $PPID)\" > {}",
            self.dir(),
            self.path()
        )
    }

    pub fn renew_command(&self) -> String {
        format!("touch {}", self.path())
    }

    /// Drops this lease, then prints how many live leases others hold (dead ones are removed
    /// on the way).
    pub fn release_command(&self) -> String {
        format!(
            "rm -f {path}; n=0; for f in {dir}/*; do [ -f \"$f\" ] || continue; \
             read pid started < \"$f\"; \
             if [ -n \"$started\" ] && [ -n \"$(find \"$f\" -mmin -{EXPIRES_AFTER_MINUTES})\" ] && \
             [ \"$({STARTED} \"$pid\")\" = \"$started\" ]; \
             then n=$((n+1)); else rm -f \"$f\"; fi; done; echo $n",
            path = self.path(),
            dir = self.dir()
        )
    }
}

/// A shell function call's prefix printing when process $1 started (field 22 of its stat,
/// counted after the command name, which may hold spaces); nothing if it is gone, or a zombie
/// that nobody reaped.
pub(crate) const STARTED: &str =
    "f() { sed 's/.*) //' /proc/$1/stat 2>/dev/null | awk '$1 != \"Z\" { print $20 }'; }; f";
