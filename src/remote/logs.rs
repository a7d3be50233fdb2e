//! Where a job's or a foreground run's whole output is kept on the instance: `ssh-ec2-logs/` at
//! the top of the synced directory, so that it comes home with the results (and from every
//! node of a cluster, each under a name of its own), even when the command fails or nobody was
//! attached. A job's record (see `job`) says where its log is, who writes it, and how much of it
//! the user has seen.
//!
//! The directory is the instance's: a push never sends it up (a log it appends to would be
//! replaced by an older copy), a pull always brings it home whatever `.rsyncignore` says (`*.log`
//! there is common), and a log the instance rewrote replaces the local copy instead of being kept
//! beside it as a conflict (a new instance's `job.log` is not a change to the last one's).

use std::path::Path;

use super::job::Job;

/// The directory of the logs, at the top of the remote directory (and so of the local one).
pub const LOG_DIR: &str = "ssh-ec2-logs";

/// How the names of logs end: a pull brings `LOG_DIR/*.log` home whatever the rules say.
pub const LOG_SUFFIX: &str = ".log";

/// Whether `path` (relative to the synced directory) is a log, or in the directory of logs.
pub fn is_log(path: &Path) -> bool {
    path.starts_with(LOG_DIR) && path != Path::new(LOG_DIR)
}

/// Whether `path` is one of the logs a pull always brings home (`LOG_DIR/*.log`).
pub fn always_home(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let name = path.file_name().unwrap_or_default().as_bytes();
    path.parent() == Some(Path::new(LOG_DIR)) && name.ends_with(LOG_SUFFIX.as_bytes())
}

/// What a log is the output of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// This directory's job, in tmux or screen: one at a time.
    Job,
    /// A foreground run's command: several may run at once (see `runs`).
    Run,
}

/// A log's name in `LOG_DIR`: `job.log` or `run.log`, and on a cluster each node's own,
/// `job-node-K.log` (the head's too: `job-node-0.log`), so that the nodes' logs never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogName {
    writer: Writer,
    /// The node's rank, on a cluster only.
    node: Option<usize>,
}

impl LogName {
    /// The job's log on node `rank` of `nodes`.
    pub fn job(rank: usize, nodes: usize) -> LogName {
        LogName::of(Writer::Job, rank, nodes)
    }

    /// A foreground run's log on node `rank` of `nodes`.
    pub fn run(rank: usize, nodes: usize) -> LogName {
        LogName::of(Writer::Run, rank, nodes)
    }

    fn of(writer: Writer, rank: usize, nodes: usize) -> LogName {
        LogName {
            writer,
            node: (nodes > 1).then_some(rank),
        }
    }

    /// The file's path in the synced directory, with `tag` after what wrote it (a shell word
    /// that tells apart the logs of runs at the same time; empty for none).
    pub fn path(&self, tag: &str) -> String {
        let writer = match self.writer {
            Writer::Job => "job",
            Writer::Run => "run",
        };
        let node = self
            .node
            .map_or(String::new(), |rank| format!("-node-{rank}"));
        format!("{LOG_DIR}/{writer}{tag}{node}.log")
    }
}

/// The record file that names the job's log (an absolute path, once the job started).
const LOG: &str = "log";
/// The record file with the pid of what writes the log: once it is gone, the log is complete.
const LOGGER: &str = "logger";
/// The record file with how many bytes of the log the user has seen.
const SEEN: &str = "seen";
/// The record's link to the log, for screen.
const SCREEN_LOG: &str = "screen.log";

impl Job {
    /// Prints the job's log from byte `from` (0: the start) to its end; with `follow`, goes on
    /// printing what is written until its writer is done (the job ended and its pane closed).
    /// Exits 2, printing nothing, when the job has no log.
    pub fn log_command(&self, from: u64, follow: bool) -> String {
        let r = self.record();
        let start = from + 1;
        let tail = match follow {
            true => format!(
                "p=$(cat {r}/{LOGGER} 2>/dev/null || cat {r}/pid 2>/dev/null); \
                 if [ -n \"$p\" ]; then exec tail -c +{start} --pid=\"$p\" -f \"$l\"; fi; "
            ),
            false => String::new(),
        };
        format!(
            "l=$(cat {r}/{LOG} 2>/dev/null); [ -f \"$l\" ] || exit 2; {tail}exec tail -c +{start} \"$l\""
        )
    }

    /// Prints how many bytes of the log the user has seen (0 when not said).
    pub fn seen_command(&self) -> String {
        format!("cat {r}/{SEEN} 2>/dev/null || echo 0", r = self.record())
    }

    /// Records that the user has seen `bytes` of the log; `None`: all of it by now (after
    /// attaching).
    pub fn mark_seen_command(&self, bytes: Option<u64>) -> String {
        let r = self.record();
        match bytes {
            Some(bytes) => format!("echo {bytes} > {r}/{SEEN}"),
            None => format!(
                "l=$(cat {r}/{LOG} 2>/dev/null) && [ -f \"$l\" ] && wc -c < \"$l\" > {r}/{SEEN}; true"
            ),
        }
    }

    /// Waits until the writer of the log is done, for at most 10 s: the job's last output may
    /// still be on its way from the pane when its exit status is recorded.
    pub fn settle_log_command(&self) -> String {
        format!(
            "p=$(cat {r}/{LOGGER} 2>/dev/null) && [ -n \"$p\" ] && \
             timeout 10 tail --pid=\"$p\" -f /dev/null 2>/dev/null; true",
            r = self.record()
        )
    }

    /// Sets the log up for a job about to start in `dir` (a shell word): emptied, named in the
    /// record `r` (a shell variable of the start command); goes on with `&&`. Never fails: a job
    /// without a log still runs.
    pub(super) fn log_setup(dir: &str, name: &LogName) -> String {
        let log = format!("{dir}/{}", name.path(""));
        format!(
            "{{ {{ mkdir -p {dir}/{LOG_DIR} && : > {log} && echo {log} > \"$r/{LOG}\"; }} \
             2>/dev/null || :; }} && "
        )
    }

    /// What the wrapper inside tmux does first, so that the pane's whole output goes to the log:
    /// tmux pipes it to a `cat` (its logger) from now on.
    pub(super) fn tmux_logging(&self) -> String {
        let r = self.record();
        let pipe = format!("echo $$ > {r}/{LOGGER}; exec cat >> \"$(cat {r}/{LOG})\"");
        format!(
            "[ -f {r}/{LOG} ] && tmux pipe-pane -t \"$TMUX_PANE\" {}; ",
            super::shell_quote(&pipe)
        )
    }

    /// What the wrapper inside screen does first: screen itself writes the log (`-L`), so its
    /// server is the logger.
    pub(super) fn screen_logging(&self) -> String {
        format!("echo $PPID > {}/{LOGGER}; ", self.record())
    }

    /// Makes screen's settings (`-c "$r/screenrc"`, `r` the record's variable) write the
    /// window's output to the log with `-L`, flushed every second (screen's own default is
    /// 10 s), the user's ~/.screenrc still read. screen is told a name in the record, a link to
    /// the log: its settings would read `$` and quotes in the directory's name (and
    /// `-Logfile` needs screen 4.6). Goes on with `&&`.
    pub(super) fn screen_settings() -> String {
        format!(
            "{{ [ -f \"$HOME/.screenrc\" ] && echo \"source \\\"$HOME/.screenrc\\\"\"; \
             echo 'logfile flush 1'; echo \"logfile $r/{SCREEN_LOG}\"; }} > \"$r/screenrc\" && \
             ln -sf \"$(cat \"$r/{LOG}\" 2>/dev/null || echo /dev/null)\" \"$r/{SCREEN_LOG}\" && "
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_and_each_kind_of_output_has_a_log_of_its_own() {
        assert_eq!(LogName::job(0, 1).path(""), "ssh-ec2-logs/job.log");
        assert_eq!(LogName::run(0, 1).path("$t"), "ssh-ec2-logs/run$t.log");
        assert_eq!(LogName::job(0, 3).path(""), "ssh-ec2-logs/job-node-0.log");
        assert_eq!(
            LogName::run(2, 3).path("-ab"),
            "ssh-ec2-logs/run-ab-node-2.log"
        );
        assert!(is_log(Path::new("ssh-ec2-logs/job.log")));
        assert!(!is_log(Path::new("ssh-ec2-logs")));
        assert!(!is_log(Path::new("src/ssh-ec2-logs/job.log")));
        assert!(!is_log(Path::new("ssh-ec2-logs.txt")));
    }

    /// The job's log commands, run by a real shell against a record in a temporary home.
    #[test]
    fn a_log_is_printed_from_where_the_user_left_it() {
        let home = tempfile::tempdir().unwrap();
        let job = Job::for_dir(Path::new("/w/p"));
        let sh = |command: &str| {
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .env("HOME", home.path())
                .output()
                .unwrap();
            (
                output.status.code(),
                String::from_utf8(output.stdout).unwrap(),
            )
        };
        let record = home.path().join(".ssh-ec2/jobs").join(job.name());
        std::fs::create_dir_all(&record).unwrap();
        assert_eq!(sh(&job.log_command(0, false)).0, Some(2), "no log yet");
        let log = home.path().join("job.log");
        std::fs::write(&log, "first\nsecond\n").unwrap();
        std::fs::write(record.join(LOG), format!("{}\n", log.display())).unwrap();
        assert_eq!(sh(&job.seen_command()).1, "0\n");
        assert_eq!(sh(&job.log_command(6, false)), (Some(0), "second\n".into()));
        // No writer left: following ends at the end of the log.
        std::fs::write(record.join(LOGGER), "999999999\n").unwrap();
        assert_eq!(sh(&job.log_command(0, true)).1, "first\nsecond\n");
        sh(&job.mark_seen_command(Some(6)));
        assert_eq!(sh(&job.seen_command()).1, "6\n");
        sh(&job.mark_seen_command(None));
        assert_eq!(sh(&job.seen_command()).1, "13\n");
        assert_eq!(sh(&job.settle_log_command()).0, Some(0));
    }
}
