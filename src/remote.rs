//! How things are spelled on the remote side: the remote directory (for the shell and for rsync)
//! and the command line that runs the user's command there.

use std::fmt;
use std::path::Path;

use anyhow::{Result, bail};

/// The directory on the instance that mirrors the local one: `~/name` or an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDir {
    /// Relative to the remote user's home, or absolute; never empty, no trailing slash.
    path: String,
    in_home: bool,
}

impl RemoteDir {
    /// `~/x`, `x` (both in the home directory), `~` or `/abs/x`.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() || text.contains(['\n', '\0']) {
            bail!("remote directory `{text}` is not usable: write e.g. ~/project or /data/project");
        }
        let (path, in_home) = match text.strip_prefix("~") {
            Some("") => (".", true),
            Some(rest) if rest.starts_with('/') => (rest.trim_start_matches('/'), true),
            Some(_) => {
                bail!("remote directory `{text}`: ~user paths are not supported, write ~/dir")
            }
            None if text.starts_with('/') => (text, false),
            None => (text, true),
        };
        let path = path.trim_end_matches('/');
        let path = if path.is_empty() {
            if in_home { "." } else { "/" }
        } else {
            path
        };
        Ok(Self {
            path: path.to_string(),
            in_home,
        })
    }

    /// `~/<name of the local directory>`, the original tool's default.
    pub fn default_for(local_dir: &Path) -> Result<Self> {
        match local_dir.file_name().and_then(|n| n.to_str()) {
            Some(name) => Self::parse(&format!("~/{name}")),
            None => bail!(
                "cannot name a remote directory after {}: pass --remote-dir",
                local_dir.display()
            ),
        }
    }

    /// The directory as a shell word, `~` expanded by the remote shell.
    pub fn for_shell(&self) -> String {
        if self.in_home {
            format!("\"$HOME\"/{}", shell_quote(&self.path))
        } else {
            shell_quote(&self.path)
        }
    }

    /// The directory as rsync's remote path (rsync's server starts in the home directory).
    pub fn for_rsync(&self) -> String {
        format!("{}/", self.path.trim_end_matches('/'))
    }
}

impl fmt::Display for RemoteDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.in_home, self.path.as_str()) {
            (true, ".") => write!(f, "~"),
            (true, path) => write!(f, "~/{path}"),
            (false, path) => write!(f, "{path}"),
        }
    }
}

/// Single-quotes `word` for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Creates the remote directory if needed and prints its absolute path, so rsync and the
/// command agree on it whatever directory the remote shell starts in.
pub fn prepare_dir_command(dir: &RemoteDir) -> String {
    let dir = dir.for_shell();
    format!("mkdir -p {dir} && cd {dir} && pwd")
}

/// A foreground run's bookkeeping on the instance, `~/.ssh-ec2/runs/<token>/`: the id of the
/// command's process group (so a fresh session can end it after a hang-up or a lost
/// connection), and the FIFO its stdout goes through (so it can be told its output is gone).
pub struct RunRecord {
    token: String,
}

impl RunRecord {
    pub fn new() -> RunRecord {
        RunRecord {
            token: format!("{:016x}", rand::random::<u64>()),
        }
    }

    fn dir(&self) -> String {
        format!("\"$HOME\"/.ssh-ec2/runs/{}", self.token)
    }

    /// The command line sent to sshd: in the remote directory, the user's login shell runs the
    /// command (so its profile, e.g. conda, is loaded), or starts interactively when there is
    /// none. sshd makes it a session leader, so its pid names its process group.
    ///
    /// With `relay_stdout` (no PTY), stdout goes through a FIFO that a `cat` copies to the
    /// session: killing that `cat` is how ssh's "end of output" reaches the command, which gets
    /// SIGPIPE at its next write, exactly as when OpenSSH's client loses its stdout.
    pub fn command_line(
        &self,
        dir: &RemoteDir,
        command: Option<&str>,
        relay_stdout: bool,
    ) -> String {
        let mut line = format!(
            "r={} && mkdir -p \"$r\" && echo $$ > \"$r/pid\" && cd {} && ",
            self.dir(),
            dir.for_shell()
        );
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

    /// Tells the command its stdout is gone (see `command_line`).
    pub fn cut_output_command(&self) -> String {
        format!("kill \"$(cat {}/cat)\" 2>/dev/null; true", self.dir())
    }

    /// Signals the command's whole process group (`0`: none, a probe); prints whether anything of
    /// it was left: `alive` or `gone`.
    pub fn signal_command(&self, signal: &str) -> String {
        format!(
            "pid=$(cat {}/pid 2>/dev/null) && kill -{signal} -- -\"$pid\" 2>/dev/null && echo alive || echo gone",
            self.dir()
        )
    }

    pub fn cleanup_command(&self) -> String {
        format!("rm -rf {}", self.dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_dirs() {
        let home = RemoteDir::parse("~/my project").unwrap();
        assert_eq!(home.for_shell(), "\"$HOME\"/'my project'");
        assert_eq!(home.for_rsync(), "my project/");
        assert_eq!(home.to_string(), "~/my project");
        assert_eq!(RemoteDir::parse("work/x/").unwrap().to_string(), "~/work/x");
        let abs = RemoteDir::parse("/data/x").unwrap();
        assert_eq!(
            (abs.for_shell(), abs.for_rsync()),
            ("/data/x".into(), "/data/x/".into())
        );
        assert_eq!(RemoteDir::parse("~").unwrap().for_rsync(), "./");
        assert!(RemoteDir::parse("").is_err());
        assert!(RemoteDir::parse("~bob/x").is_err());
        assert_eq!(
            RemoteDir::default_for(Path::new("/home/me/proj"))
                .unwrap()
                .to_string(),
            "~/proj"
        );
    }

    #[test]
    fn command_lines_quote_what_they_must() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("plain-word"), "plain-word");
        let dir = RemoteDir::parse("~/p").unwrap();
        let record = RunRecord { token: "t".into() };
        let prefix = "r=\"$HOME\"/.ssh-ec2/runs/t && mkdir -p \"$r\" && echo $$ > \"$r/pid\" && \
                      cd \"$HOME\"/p && ";
        assert_eq!(
            record.command_line(&dir, Some("make train"), false),
            format!("{prefix}exec \"${{SHELL:-/bin/sh}}\" -l -c 'make train'")
        );
        assert_eq!(
            record.command_line(&dir, None, true),
            format!(
                "{prefix}mkfifo \"$r/out\" && {{ cat \"$r/out\" & echo $! > \"$r/cat\"; }} && \
                 exec \"${{SHELL:-/bin/sh}}\" -l > \"$r/out\""
            )
        );
    }
}
