//! How things are spelled on the remote side: the remote directory (for the shell and for rsync),
//! and ssh-ec2's own state in the login's home there: jobs, leases, foreground runs' records
//! (`runs`), the last pull's stamp (`pulled`), the dead-man switch and the spot watch.

pub mod changes;
pub mod cluster;
pub mod contents;
pub mod env;
pub mod host_key;
pub mod job;
pub mod lease;
pub mod logs;
pub mod parts;
pub mod pulled;
pub mod runs;
pub mod spot_watch;
pub mod watchdog;

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The directory on the instance that mirrors the local one: `~/name` or an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDir {
    /// Relative to the remote user's home, or absolute; never empty, no trailing slash, no `.`
    /// or `..` components, never a whole home or system directory.
    path: String,
    in_home: bool,
}

/// Top-level directories that belong to the system (or hold every home directory): syncing a
/// project into one of them as a whole would mix it with the system's own files.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt",
    "proc", "root", "run", "sbin", "snap", "srv", "sys", "tmp", "usr", "var",
];
/// System directories that nothing under may be synced into either.
const SYSTEM_TREES: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys", "usr",
];
/// Hold the login's keys and credentials: rsync would give them the project's permissions, and
/// a group-writable ~/.ssh makes sshd refuse the key.
const HOME_SECRETS: &[&str] = &[".ssh", ".aws"];

impl RemoteDir {
    /// `~/x`, `x` (both in the home directory) or `/abs/x`. A whole home or system directory,
    /// `..`, ~/.ssh and ~/.aws are refused: the pull and push would copy them, or the push
    /// would change their permissions (rsync --archive) and could lock the login out.
    pub fn parse(text: &str) -> Result<Self> {
        // It goes on remote command lines (quoted) and into messages: no control characters.
        if text.is_empty() || text.contains(char::is_control) {
            bail!(
                "remote directory `{}` is not usable: write e.g. ~/project or /data/project",
                text.escape_debug()
            );
        }
        let (rest, in_home) = match text.strip_prefix("~") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => (rest, true),
            Some(_) => {
                bail!("remote directory `{text}`: ~user paths are not supported, write ~/dir")
            }
            None => (text, !text.starts_with('/')),
        };
        let mut parts = Vec::new();
        for part in rest.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                bail!(
                    "remote directory `{text}`: `..` is not allowed, it could reach a home or \
                     system directory; write the directory itself, e.g. ~/project or /data/project"
                );
            }
            parts.push(part);
        }
        // What lies under a home directory, for the checks that apply to every home.
        let in_a_home = match parts.as_slice() {
            _ if in_home => Some(&parts[..]),
            ["home", _, rest @ ..] | ["root", rest @ ..] => Some(rest),
            _ => None,
        };
        match (in_a_home, parts.as_slice()) {
            (Some([]), _) => bail!(
                "remote directory `{text}` is a whole home directory: syncing into it would copy \
                 it all back, and could change its permissions and lock the login out; write a \
                 directory in it, e.g. ~/project"
            ),
            (Some([first, ..]), _) if HOME_SECRETS.contains(first) => bail!(
                "remote directory `{text}` is in ~/{first}, the login's keys and credentials: \
                 syncing into it could lock the login out; write e.g. ~/project"
            ),
            (None, []) => bail!(
                "remote directory `{text}` is the whole file system: write a directory of its \
                 own, e.g. /data/project or ~/project"
            ),
            (None, [only]) if SYSTEM_DIRS.contains(only) => bail!(
                "remote directory `{text}` is a system directory: write a directory of its own, \
                 e.g. /data/project or ~/project"
            ),
            (None, [first, ..]) if SYSTEM_TREES.contains(first) => bail!(
                "remote directory `{text}` is inside /{first}, which belongs to the system: write \
                 a directory of its own, e.g. /data/project or ~/project"
            ),
            _ => {}
        }
        let path = parts.join("/");
        Ok(Self {
            path: if in_home { path } else { format!("/{path}") },
            in_home,
        })
    }

    /// `~/<name of the local directory>`, the original tool's default.
    pub fn default_for(local_dir: &Path) -> Result<Self> {
        match local_dir.file_name().and_then(|n| n.to_str()) {
            Some(name) => Self::parse(&format!("~/{name}"))
                .context("the default remote directory is named after this one: pass --remote-dir"),
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
        format!("{}/", self.path)
    }
}

impl fmt::Display for RemoteDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.in_home {
            true => write!(f, "~/{}", self.path),
            false => write!(f, "{}", self.path),
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
    format!(
        "[ -e {dir} ] || made=1; mkdir -p {dir} && cd {dir} && \
         {{ [ -z \"$made\" ] || echo '{MADE}'; }} && pwd"
    )
}

/// Printed before the directory's path when `prepare_dir_command` made it.
const MADE: &str = "ssh-ec2: made";

/// What `prepare_dir_command` said: the directory's path (the last line: a chatty shell
/// profile may print before it), and whether it made the directory (nothing is in it yet).
pub fn prepared_dir(answer: &str) -> (&str, bool) {
    let mut lines = answer.lines().rev();
    let pwd = lines.next().unwrap_or_default();
    (pwd, lines.next() == Some(MADE))
}

/// ssh-ec2's own state in the login user's home on the instance, for the shell: `kind` is
/// `runs`, `jobs`, `leases` or `watchdog`.
fn state_dir(kind: &str) -> String {
    format!("\"$HOME\"/.ssh-ec2/{kind}")
}

/// A shell function: `alive PGID` succeeds while that process group has a member that is not a
/// zombie (an ended process that nobody reaped yet runs nothing).
const ALIVE: &str = "alive() { [ -n \"$1\" ] && ps -e -o pgid=,stat= | \
                     awk -v g=\"$1\" '$1 == g && $2 !~ /^Z/ { f = 1 } END { exit !f }'; }";

/// Signals the process group whose id is in the file `pid` of `record` (`0`: none, a probe);
/// prints whether anything of it was left: `alive` or `gone`. (No `--` before the group: dash's
/// `kill`, the instance's /bin/sh, refuses it.)
fn signal_group(record: &str, signal: &str) -> String {
    format!(
        "{ALIVE}; pid=$(cat {record}/pid 2>/dev/null); kill -{signal} -\"$pid\" 2>/dev/null; \
         if alive \"$pid\"; then echo alive; else echo gone; fi"
    )
}

/// A name no other run picks.
fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
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
        assert_eq!(
            RemoteDir::parse("~//./work//x/.").unwrap().for_rsync(),
            "work/x/"
        );
        assert_eq!(
            RemoteDir::parse("/data/./x/").unwrap().to_string(),
            "/data/x"
        );
        assert!(RemoteDir::parse("").is_err());
        assert!(RemoteDir::parse("~/x\u{1b}]0;x\u{7}").is_err());
        assert!(RemoteDir::parse("~/x\ry").is_err());
        assert!(RemoteDir::parse("~bob/x").is_err());
        assert_eq!(
            RemoteDir::default_for(Path::new("/home/me/proj"))
                .unwrap()
                .to_string(),
            "~/proj"
        );
    }

    #[test]
    fn whole_homes_system_directories_and_login_secrets_are_refused() {
        let refused = |text: &str, says: &str| {
            let error = RemoteDir::parse(text).err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains(says)),
                "`{text}` should be refused saying `{says}`: {error:?}"
            );
        };
        for home in ["~", "~/", ".", "./", "~/.", "/home/ubuntu", "//root//"] {
            refused(home, "e.g. ~/project");
        }
        for dotdot in ["~/../..", "../x", "/data/../etc", "~/x/.."] {
            refused(dotdot, "`..` is not allowed");
        }
        for system in ["/", "/home", "/etc", "/usr", "/var", "/tmp", "/bin", "/opt"] {
            refused(system, "/data/project");
        }
        for inside in [
            "/proc/1",
            "/sys/x",
            "/dev/shm/x",
            "/boot/x",
            "/etc/x",
            "/usr/local/src",
        ] {
            refused(inside, "belongs to the system");
        }
        for secret in [
            "~/.ssh",
            ".aws",
            "~/.ssh/x",
            "/home/ubuntu/.ssh",
            "/root/.aws/",
        ] {
            refused(secret, "could lock the login out");
        }
        for fine in [
            "~/work/x",
            "/data/project",
            "/home/ubuntu/project",
            "/root/project",
            "/var/tmp/x",
            "/opt/project",
            "~/.cache/x",
            "~/..x",
        ] {
            assert!(RemoteDir::parse(fine).is_ok(), "`{fine}` is usable");
        }
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("plain-word"), "plain-word");
    }
}
