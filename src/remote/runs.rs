//! A foreground run's record on the instance, `~/.ssh-ec2/runs/<directory's job name>/<token>/`,
//! named like the run's lease (see `lease`): the id of the command's process group (`pid`), the
//! boot it runs in (`boot`), when it started by the instance's clock (`started`), and the FIFO
//! its stdout goes through. Through it a fresh session ends the command after a hang-up or a
//! lost connection. Once the run's lease no longer counts (its client was killed, or the laptop
//! vanished), the record tells the next runs that a command of an earlier run still runs there,
//! or ended with results that may not be home yet; a run removes it once they are.

use super::lease::Lease;
use super::logs::{LOG_DIR, LogName};
use super::{RemoteDir, shell_quote};

/// The signals that end a command, which its output's relays ignore.
const ENDING: &str = "TERM INT HUP QUIT";

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
    /// With a `log` (no PTY), stdout and stderr go through FIFOs that a `tee` each copies to the
    /// session and to the log (see `logs`; `run-<token>.log` when another run's command of this
    /// directory is running, so that neither replaces the other's). Killing the stdout `tee` is
    /// how ssh's "end of output" reaches the command, which gets SIGPIPE at its next write,
    /// exactly as when OpenSSH's client loses its stdout. On a PTY the command writes to the
    /// terminal itself: no log.
    ///
    /// With `env`, the user's variables, written first by `write_env_command`, are exported to
    /// the login shell (see `remote::env`).
    pub fn command_line(
        &self,
        dir: &RemoteDir,
        command: Option<&str>,
        log: Option<&LogName>,
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
        if let Some(log) = log {
            line.push_str(&self.logging(log));
        }
        line.push_str("exec \"${SHELL:-/bin/sh}\" -l");
        if let Some(command) = command {
            line.push_str(&format!(" -c {}", shell_quote(command)));
        }
        if log.is_some() {
            line.push_str(" > \"$r/out\" 2> \"$r/err\"");
        }
        line
    }

    /// Writes the user's variables, sent on stdin, where `command_line` finds them.
    pub fn write_env_command(&self) -> String {
        super::env::write_command(&self.dir())
    }

    /// The relays of `command_line` through the log, which is emptied first (a log that cannot
    /// be written is no reason not to run the command). They are in the command's process
    /// group, but ignore the signals that end it (`signal_command`, Ctrl-C passed on), so that
    /// what it says as it ends still reaches the session and the log; they end once it has
    /// closed its output.
    fn logging(&self, log: &LogName) -> String {
        format!(
            "{running}; t=; for o in {scope}/*; do [ \"$o\" = \"$r\" ] || ! running \"$o\" || \
             t=-{token}; done; l={log}; {{ mkdir -p {LOG_DIR} && : > \"$l\"; }} 2>/dev/null; \
             trap '' {ENDING} && mkfifo \"$r/out\" \"$r/err\" && \
             {{ tee -a \"$l\" < \"$r/out\" & echo $! > \"$r/cat\"; }} && \
             {{ tee -a \"$l\" < \"$r/err\" >&2 & }} && trap - {ENDING} && ",
            running = running_functions(),
            scope = scope_dir(&self.scope),
            token = self.token,
            log = log.path("$t"),
        )
    }

    /// Tells the command its stdout is gone (see `command_line`): its relay ignores SIGTERM.
    pub fn cut_output_command(&self) -> String {
        format!("kill -KILL \"$(cat {}/cat)\" 2>/dev/null; true", self.dir())
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
            record.command_line(&dir, Some("make train"), None, true),
            format!(
                "{prefix}. \"$r\"/env && rm -f \"$r\"/env && \
                 exec \"${{SHELL:-/bin/sh}}\" -l -c 'make train'"
            )
        );
        assert_eq!(
            record.command_line(&dir, Some("make train"), None, false),
            format!("{prefix}exec \"${{SHELL:-/bin/sh}}\" -l -c 'make train'")
        );
        let logged = record.command_line(&dir, None, Some(&LogName::run(0, 1)), false);
        assert!(logged.starts_with(prefix), "{logged}");
        assert!(
            logged.ends_with("exec \"${SHELL:-/bin/sh}\" -l > \"$r/out\" 2> \"$r/err\""),
            "{logged}"
        );
    }

    /// A command line with its log, run by a real shell: both streams reach the session and
    /// the log; another run's command, still running, keeps its own log.
    #[test]
    fn the_output_goes_to_the_session_and_to_a_log_of_the_run_s_own() {
        let home = tempfile::tempdir().unwrap();
        let project = home.path().join("p");
        std::fs::create_dir(&project).unwrap();
        let dir = RemoteDir::parse("~/p").unwrap();
        let run = |token: &str, command: &str| {
            let record = RunRecord {
                scope: "s".into(),
                token: token.into(),
            };
            let line = record.command_line(&dir, Some(command), Some(&LogName::run(0, 1)), false);
            std::process::Command::new("sh")
                .arg("-c")
                .arg(line)
                .env("HOME", home.path())
                .env("SHELL", "/bin/sh")
                .output()
                .unwrap()
        };
        let output = run("a", "echo out; echo err >&2; exit 3");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
        let log = std::fs::read_to_string(project.join("ssh-ec2-logs/run.log")).unwrap();
        assert!(log.contains("out\n") && log.contains("err\n"), "{log}");

        // Run `a`'s record says its command still runs (this test's own process group).
        let a = home.path().join(".ssh-ec2/runs/s/a");
        let boot = std::fs::read(a.join("boot")).unwrap();
        assert!(!boot.is_empty());
        let group = nix::unistd::getpgrp().to_string();
        std::fs::write(a.join("pid"), group).unwrap();
        run("b", "echo second");
        let logs = project.join("ssh-ec2-logs");
        assert_eq!(
            std::fs::read_to_string(logs.join("run-b.log")).unwrap(),
            "second\n"
        );
        assert_eq!(std::fs::read_to_string(logs.join("run.log")).unwrap(), log);
    }

    /// SIGTERM to the command's whole group, as `signal_command` sends it: what the command
    /// says as it ends still reaches the session and the log.
    #[test]
    fn a_command_ended_by_its_group_s_sigterm_is_still_heard() {
        use std::io::{BufRead, BufReader, Read};
        use std::os::unix::process::CommandExt;
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("p")).unwrap();
        let record = RunRecord {
            scope: "s".into(),
            token: "t".into(),
        };
        let command = "trap 'echo bye; echo bye-err >&2; exit 143' TERM; echo ready; \
                       while :; do sleep 0.1; done";
        let dir = RemoteDir::parse("~/p").unwrap();
        let line = record.command_line(&dir, Some(command), Some(&LogName::run(0, 1)), false);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .env("HOME", home.path())
            .env("SHELL", "/bin/sh")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert_eq!(ready, "ready\n");
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM).unwrap();
        let (mut rest, mut errors) = (String::new(), String::new());
        stdout.read_to_string(&mut rest).unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut errors)
            .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(143));
        // The shell may say first that SIGTERM ended its `sleep`.
        assert_eq!(rest, "bye\n");
        assert!(errors.ends_with("bye-err\n"), "{errors}");
        let log = std::fs::read_to_string(home.path().join("p/ssh-ec2-logs/run.log")).unwrap();
        assert!(log.contains("bye\n") && log.contains("bye-err\n"), "{log}");
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
