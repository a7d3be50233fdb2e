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

/// The command line sent to sshd: in the remote directory, the user's login shell runs the
/// command (so its profile, e.g. conda, is loaded), or starts interactively when there is none.
pub fn command_line(dir: &RemoteDir, command: Option<&str>) -> String {
    let shell = "exec \"${SHELL:-/bin/sh}\" -l";
    match command {
        Some(command) => format!(
            "cd {} && {shell} -c {}",
            dir.for_shell(),
            shell_quote(command)
        ),
        None => format!("cd {} && {shell}", dir.for_shell()),
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
        assert_eq!(
            command_line(&dir, Some("make train")),
            "cd \"$HOME\"/p && exec \"${SHELL:-/bin/sh}\" -l -c 'make train'"
        );
        assert_eq!(
            command_line(&dir, None),
            "cd \"$HOME\"/p && exec \"${SHELL:-/bin/sh}\" -l"
        );
    }
}
