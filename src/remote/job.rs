//! A job: the command run inside tmux or screen on the instance, so that it outlives the
//! connection. Its record, `~/.ssh-ec2/jobs/<name>/`, holds the command, directory, multiplexer
//! and start time, and, written by a wrapper around the command (so it is kept even when nobody
//! is attached), its pid while it runs, then its exit status and end time.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::logs::LogName;
use super::{RemoteDir, shell_quote};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multiplexer {
    Tmux,
    Screen,
}

impl Multiplexer {
    pub fn name(self) -> &'static str {
        match self {
            Multiplexer::Tmux => "tmux",
            Multiplexer::Screen => "screen",
        }
    }

    /// The keys that leave a job running.
    pub fn detach_keys(self) -> &'static str {
        match self {
            Multiplexer::Tmux => "Ctrl-B d",
            Multiplexer::Screen => "Ctrl-A d",
        }
    }
}

impl FromStr for Multiplexer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tmux" => Ok(Multiplexer::Tmux),
            "screen" => Ok(Multiplexer::Screen),
            _ => Err(format!("`{s}` is not a multiplexer: write tmux or screen")),
        }
    }
}

impl fmt::Display for Multiplexer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a job stands, from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// No record: no job was started from this directory (or it was finished).
    None,
    Running(Multiplexer),
    /// The wrapper recorded how the command ended (the shell's status: 128+N for signal N).
    Ended(Multiplexer, i32),
    /// The multiplexer's session is gone without an exit status (killed, or the machine
    /// rebooted).
    Lost(Multiplexer),
    /// AWS gave notice that it takes the (spot) instance back: the record is marked
    /// `interrupted` (see `spot_watch`), and the job has no exit status yet.
    Interrupted(Multiplexer),
}

/// This directory's job on the instance: one at a time.
pub struct Job {
    name: String,
}

impl Job {
    /// Named after the local directory, readable in `tmux ls`, unique through a digest.
    pub fn for_dir(local_dir: &Path) -> Job {
        use sha2::{Digest, Sha256};
        let base: String = local_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        let digest = Sha256::digest(local_dir.as_os_str().as_encoded_bytes());
        let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Job {
            name: format!("ssh-ec2-{base}-{tag}"),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn record(&self) -> String {
        format!("{}/{}", super::state_dir("jobs"), self.name)
    }

    /// Prints `tmux` and/or `screen`, whichever the instance has.
    pub fn probe_multiplexers_command() -> &'static str {
        "for m in tmux screen; do command -v $m >/dev/null 2>&1 && echo $m; done; true"
    }

    /// Prints one line: `none`, `running MUX`, `ended MUX STATUS`, `interrupted MUX` or
    /// `lost MUX`.
    pub fn status_command(&self) -> String {
        let name = &self.name;
        format!(
            "r={record}; [ -f \"$r/multiplexer\" ] || {{ echo none; exit 0; }}; m=$(cat \"$r/multiplexer\"); \
             if [ -f \"$r/exit\" ]; then echo \"ended $m $(cat \"$r/exit\")\"; \
             elif [ -f \"$r/interrupted\" ]; then echo \"interrupted $m\"; \
             elif [ \"$m\" = tmux ] && tmux has-session -t ={name} 2>/dev/null; then echo \"running $m\"; \
             elif [ \"$m\" = screen ] && screen -ls 2>/dev/null | grep -q '[0-9]\\.{name}[[:space:]]'; then echo \"running $m\"; \
             else echo \"lost $m\"; fi",
            record = self.record()
        )
    }

    pub fn parse_status(answer: &str) -> Option<JobState> {
        let line = answer.lines().last()?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let multiplexer = || words.get(1)?.parse().ok();
        Some(match *words.first()? {
            "none" => JobState::None,
            "running" => JobState::Running(multiplexer()?),
            "ended" => JobState::Ended(multiplexer()?, words.get(2)?.parse().ok()?),
            "lost" => JobState::Lost(multiplexer()?),
            "interrupted" => JobState::Interrupted(multiplexer()?),
            _ => return None,
        })
    }

    /// Writes the record and starts `command` in `dir` inside the multiplexer, detached, at
    /// the given terminal size, its whole output written to its log (see `logs`). With `env`,
    /// the user's variables come on stdin, into the record, and the wrapper exports them to
    /// the command (see `remote::env`).
    pub fn start_command(
        &self,
        multiplexer: Multiplexer,
        dir: &RemoteDir,
        command: &str,
        (cols, rows): (u16, u16),
        env: bool,
        log: &LogName,
    ) -> String {
        let record = self.record();
        let stamp = "date -u +%Y-%m-%dT%H:%M:%SZ";
        let (write_env, load_env) = match env {
            true => (
                format!("{} && ", super::env::write_command("\"$r\"")),
                format!("{} && ", super::env::load_command(&record)),
            ),
            false => Default::default(),
        };
        let logging = match multiplexer {
            Multiplexer::Tmux => self.tmux_logging(),
            Multiplexer::Screen => self.screen_logging(),
        };
        // The wrapper outlives any connection: it keeps the status even when nobody attaches.
        // Its pid tells the instance's dead-man switch (see `watchdog`) that the job lives.
        // SIGTERM to the job's group (`--down --force`) is the command's to handle: the
        // wrapper waits for it (a trap, unlike an ignored signal, is not inherited), since its
        // end as the pane's session leader would hang up on the command at once.
        let wrapper = format!(
            "trap : TERM; echo $$ > {record}/pid; {logging}cd {dir} && {load_env}\"${{SHELL:-/bin/sh}}\" -l -c {command}; s=$?; \
             echo $s > {record}/exit.new && mv {record}/exit.new {record}/exit; {stamp} > {record}/ended",
            dir = dir.for_shell(),
            command = shell_quote(command),
        );
        let launch = match multiplexer {
            Multiplexer::Tmux => format!(
                "tmux new-session -d -s {} -x {cols} -y {rows} {}",
                self.name,
                shell_quote(&wrapper)
            ),
            Multiplexer::Screen => format!(
                "{}screen -c \"$r/screenrc\" -L -dmS {} sh -c {}",
                Job::screen_settings(),
                self.name,
                shell_quote(&wrapper)
            ),
        };
        format!(
            "r={record} && rm -rf \"$r\" && mkdir -p \"$r\" && {write_env}printf '%s\\n' {command} > \"$r/command\" && \
             printf '%s\\n' {dir} > \"$r/dir\" && {stamp} > \"$r/started\" && \
             echo {multiplexer} > \"$r/multiplexer\" && {log_setup}{launch}",
            command = shell_quote(command),
            dir = shell_quote(&dir.to_string()),
            log_setup = Job::log_setup(&dir.for_shell(), log),
        )
    }

    /// Attaches the terminal of the channel to the job.
    pub fn attach_command(&self, multiplexer: Multiplexer) -> String {
        match multiplexer {
            Multiplexer::Tmux => format!("exec tmux attach-session -t ={}", self.name),
            // -x: also when it is attached elsewhere, as tmux allows.
            Multiplexer::Screen => format!("exec screen -x {}", self.name),
        }
    }

    /// Detaches every view of the job, as its detach keys would.
    pub fn detach_command(&self, multiplexer: Multiplexer) -> String {
        match multiplexer {
            Multiplexer::Tmux => format!("tmux detach-client -s ={}", self.name),
            Multiplexer::Screen => format!("screen -d {}", self.name),
        }
    }

    /// Signals the job's whole process group, the wrapper's (see `signal_group`).
    pub fn signal_command(&self, signal: &str) -> String {
        super::signal_group(&self.record(), signal)
    }

    /// Forgets a finished job, so that the next one can start.
    pub fn forget_command(&self) -> String {
        format!("rm -rf {}", self.record())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_named_after_their_directory() {
        let job = Job::for_dir(Path::new("/home/me/my project"));
        assert!(
            job.name().starts_with("ssh-ec2-my_project-"),
            "{}",
            job.name()
        );
        assert_ne!(
            job.name(),
            Job::for_dir(Path::new("/elsewhere/my project")).name()
        );
    }

    #[test]
    fn statuses_are_read_back() {
        assert_eq!(Job::parse_status("none\n"), Some(JobState::None));
        assert_eq!(
            Job::parse_status("profile noise\nended tmux 3\n"),
            Some(JobState::Ended(Multiplexer::Tmux, 3))
        );
        assert_eq!(
            Job::parse_status("running screen"),
            Some(JobState::Running(Multiplexer::Screen))
        );
        assert_eq!(
            Job::parse_status("lost tmux"),
            Some(JobState::Lost(Multiplexer::Tmux))
        );
        assert_eq!(
            Job::parse_status("interrupted tmux"),
            Some(JobState::Interrupted(Multiplexer::Tmux))
        );
        assert_eq!(Job::parse_status("what"), None);
    }
}
