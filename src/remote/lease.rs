//! Presence on a shared instance: each run that may end the instance holds a lease, a file in
//! `~/.ssh-ec2/leases/<directory's job name>/` that it touches while it lives. The file names
//! the sshd process of the holder's connection: a killed client's connection closes, and its
//! lease with it. A lease not touched for two minutes (a laptop that vanished without closing
//! its connection) no longer counts either, so a dead holder never pins the instance. (What the
//! holder's command may still be doing is its record's to say: see `runs`.)

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

    pub(super) fn scope(&self) -> &str {
        &self.scope
    }

    pub(super) fn token(&self) -> &str {
        &self.token
    }

    pub(super) fn scope_dir(scope: &str) -> String {
        format!("{}/{scope}", super::state_dir("leases"))
    }

    fn path(&self) -> String {
        format!("{}/{}", Lease::scope_dir(&self.scope), self.token)
    }

    /// `$PPID`, the sshd process serving this connection, with its start time: a pid alone
    /// may be another process's after a restart.
    pub fn take_command(&self) -> String {
        format!(
            "{}; mkdir -p {} && echo \"$PPID $(start_time $PPID)\" > {}",
            functions(),
            Lease::scope_dir(&self.scope),
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
            "{}; rm -f {path}; n=0; for f in {dir}/*; do [ -f \"$f\" ] || continue; \
             if counts \"$f\"; then n=$((n+1)); else rm -f \"$f\"; fi; done; echo $n",
            functions(),
            path = self.path(),
            dir = Lease::scope_dir(&self.scope)
        )
    }
}

/// Prints when process $1 started (field 22 of its stat, counted after the command name, which
/// may hold spaces); nothing if it is gone, or a zombie that nobody reaped.
const START_TIME: &str =
    "sed 's/.*) //' /proc/$1/stat 2>/dev/null | awk '$1 != \"Z\" { print $20 }'";

/// A shell function call's prefix printing when process $1 started (see `START_TIME`).
pub(crate) fn started() -> String {
    format!("f() {{ {START_TIME}; }}; f")
}

/// Shell functions: `start_time PID` (see `START_TIME`); `counts LEASE` succeeds while that
/// lease counts: the sshd process it names still serves the connection that took it, and it
/// was renewed within the expiry.
pub(super) fn functions() -> String {
    format!(
        "start_time() {{ {START_TIME}; }}; \
         counts() {{ [ -f \"$1\" ] && read -r pid started < \"$1\" && [ -n \"$started\" ] && \
         [ -n \"$(find \"$1\" -mmin -{EXPIRES_AFTER_MINUTES})\" ] && \
         [ \"$(start_time \"$pid\")\" = \"$started\" ]; }}"
    )
}
