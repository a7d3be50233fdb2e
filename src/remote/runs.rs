//! A foreground run's record on the instance, `~/.ssh-ec2/runs/<directory's job name>/<token>/`,
//! named like the run's lease (see `lease`): the id of the command's process group (`pid`), the
//! boot it runs in (`boot`), when it started by the instance's clock (`started`), and the FIFO
//! its stdout goes through. Through it a fresh session ends the command after a hang-up or a
//! lost connection. Once the run's lease no longer counts (its client was killed, or the laptop
//! vanished), the record tells the next runs that a command of an earlier run still runs there,
//! or ended with results that may not be home yet; a run removes it once they are.

use super::lease::Lease;
use super::{RemoteDir, shell_quote};

/// Shell functions: `running RECORD` succeeds while anything of the record's command runs: its
/// process group has a live member, in this boot (after a restart its pid may be another's).
pub(super) fn running_functions() -> String {
    format!(
        "{}; running() {{ \
         [ \"$(cat \"$1/boot\" 2>/dev/null)\" = \"$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)\" ] \
         && alive \"$(cat \"$1/pid\" 2>/dev/null)\"; }}",
        super::ALIVE
    )
}

#[derive(Clone)]
pub struct RunRecord {
    /// The directory's job name, so that records of directories never mix.
    scope: String,
    token: String,
}

impl RunRecord {
    /// The record of the command of the run that holds `lease`.
    pub fn of(lease: &Lease) -> RunRecord {
        RunRecord {
            scope: lease.scope().to_string(),
            token: lease.token().to_string(),
        }
    }

    fn dir(&self) -> String {
        format!("{}/{}", scope_dir(&self.scope), self.token)
    }

    /// The command line sent to sshd: in the remote directory, the user's login shell runs the
    /// command (so its profile, e.g. conda, is loaded), or starts interactively when there is
    /// none. sshd makes it a session leader, so its pid names its process group.
    ///
    /// With `relay_stdout` (no PTY), stdout goes through a FIFO that a `cat` copies to the
    /// session: killing that `cat` is how ssh's "end of output" reaches the command, which gets
    /// SIGPIPE at its next write, exactly as when OpenSSH's client loses its stdout.
    ///
    /// With `env`, the user's variables, written first by `write_env_command`, are exported to
    /// the login shell (see `remote::env`).
    pub fn command_line(
        &self,
        dir: &RemoteDir,
        command: Option<&str>,
        relay_stdout: bool,
        env: bool,
    ) -> String {
        let mut line = format!(
            "r={} && mkdir -p \"$r\" && echo $$ > \"$r/pid\" && \
             {{ cat /proc/sys/kernel/random/boot_id; true; }} > \"$r/boot\" 2>/dev/null && \
             date -u +%Y-%m-%dT%H:%M:%SZ > \"$r/started\" && cd {} && ",
            self.dir(),
            dir.for_shell()
        );
        if env {
            line.push_str(&format!("{} && ", super::env::load_command("\"$r\"")));
        }
        if relay_stdout {
            line.push_str("mkfifo \"$r/out\" && { cat \"$r/out\" & echo $! > \"$r/cat\"; } && ");
        }
        line.push_str("exec \"${SHELL:-/bin/sh}\" -l");
        if let Some(command) = command {
            line.push_str(&format!(" -c {}", shell_quote(command)));
        }
        if relay_stdout {
            line.push_str(" > \"$r/out\"");
        }
        line
    }

    /// Writes the user's variables, sent on stdin, where `command_line` finds them.
    pub fn write_env_command(&self) -> String {
        super::env::write_command(&self.dir())
    }

    /// Tells the command its stdout is gone (see `command_line`).
    pub fn cut_output_command(&self) -> String {
        format!("kill \"$(cat {}/cat)\" 2>/dev/null; true", self.dir())
    }

    /// Signals the command's whole process group (`0`: none, a probe); prints whether anything of
    /// it was left: `alive` or `gone`.
    pub fn signal_command(&self, signal: &str) -> String {
        super::signal_group(&self.dir(), signal)
    }

    /// Prints `interrupted` once the spot watch has marked this run (see `spot_watch`).
    pub fn interrupted_command(&self) -> String {
        format!(
            "test -f {}/interrupted && echo interrupted || echo running",
            self.dir()
        )
    }

    pub fn cleanup_command(&self) -> String {
        format!("rm -rf {}", self.dir())
    }
}

fn scope_dir(scope: &str) -> String {
    format!("{}/{scope}", super::state_dir("runs"))
}

/// The command of an earlier run of this directory, whose run is gone (its lease no longer
/// counts), as its record tells it.
pub struct Earlier {
    pub record: RunRecord,
    /// When it started, by the instance's clock (ISO 8601, UTC); empty if unknown.
    pub since: String,
    /// Something of it still runs; else it ended, and its results may not be home.
    pub running: bool,
}

/// Prints one line per record of this directory whose run's lease no longer counts:
/// `running TOKEN STARTED` while something of its command runs, else `ended TOKEN STARTED`.
pub fn earlier_command(scope: &str) -> String {
    format!(
        "{lease}; {running}; l={leases}; for r in {runs}/*; do [ -f \"$r/pid\" ] || continue; \
         t=${{r##*/}}; counts \"$l/$t\" && continue; \
         if running \"$r\"; then s=running; else s=ended; fi; \
         echo \"$s $t $(cat \"$r/started\" 2>/dev/null)\"; done; true",
        lease = super::lease::functions(),
        running = running_functions(),
        leases = Lease::scope_dir(scope),
        runs = scope_dir(scope),
    )
}

/// The lines of `earlier_command` (others, such as a shell profile's, are not its own).
pub fn parse_earlier(scope: &str, answer: &str) -> Vec<Earlier> {
    answer
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let running = match words.next()? {
                "running" => true,
                "ended" => false,
                _ => return None,
            };
            let token = words.next()?;
            token
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| Earlier {
                    record: RunRecord {
                        scope: scope.to_string(),
                        token: token.to_string(),
                    },
                    since: words.next().unwrap_or_default().to_string(),
                    running,
                })
        })
        .collect()
}

/// What a message says of when an earlier command started.
pub fn since(earlier: &Earlier) -> &str {
    match earlier.since.as_str() {
        "" => "an unknown time",
        since => since,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_records_the_command_then_runs_it_in_the_login_shell() {
        let dir = RemoteDir::parse("~/p").unwrap();
        let record = RunRecord {
            scope: "ssh-ec2-p-01".into(),
            token: "t".into(),
        };
        let prefix = "r=\"$HOME\"/.ssh-ec2/runs/ssh-ec2-p-01/t && mkdir -p \"$r\" && \
                      echo $$ > \"$r/pid\" && \
                      { cat /proc/sys/kernel/random/boot_id; true; } > \"$r/boot\" 2>/dev/null && \
                      date -u +%Y-%m-%dT%H:%M:%SZ > \"$r/started\" && cd \"$HOME\"/p && ";
        assert_eq!(
            record.command_line(&dir, Some("make train"), false, false),
            format!("{prefix}exec \"${{SHELL:-/bin/sh}}\" -l -c 'make train'")
        );
        assert_eq!(
            record.command_line(&dir, Some("make train"), false, true),
            format!(
                "{prefix}. \"$r\"/env && rm -f \"$r\"/env && \
                 exec \"${{SHELL:-/bin/sh}}\" -l -c 'make train'"
            )
        );
        assert_eq!(
            record.command_line(&dir, None, true, false),
            format!(
                "{prefix}mkfifo \"$r/out\" && {{ cat \"$r/out\" & echo $! > \"$r/cat\"; }} && \
                 exec \"${{SHELL:-/bin/sh}}\" -l > \"$r/out\""
            )
        );
    }

    #[test]
    fn earlier_commands_are_read_back() {
        let answer = "profile noise\nrunning 0123abcd 2026-11-22T08:00:00Z\nended 4567ef \n\
                      running ../x 2026\n";
        let found = parse_earlier("s", answer);
        assert_eq!(found.len(), 2, "only well-formed lines");
        assert!(found[0].running);
        assert_eq!(found[0].record.token, "0123abcd");
        assert_eq!(since(&found[0]), "2026-11-22T08:00:00Z");
        assert!(!found[1].running);
        assert_eq!(since(&found[1]), "an unknown time");
        assert!(
            found[1]
                .record
                .cleanup_command()
                .ends_with("/runs/s/4567ef")
        );
    }
}
