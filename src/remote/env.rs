//! The user's variables on the instance (`-e`, `--env-file`, the `env` setting). Their values
//! never go on a command line, which every process on the instance may read (`ps`), nor into
//! the synced directory: they travel on a channel's stdin into a file of the run's (or the
//! job's) record that only the login user can read, and the command line that starts the
//! login shell sources that file and removes it first. The login shell, its profile and the
//! command then find them in their environment, as with ssh's `SendEnv` (the Deep Learning
//! AMIs' sshd, like Debian's and Ubuntu's, only accepts `LANG` and `LC_*` that way).

use std::fmt;

use super::shell_quote;

/// The variables, resolved: names (checked) with their values, in order, each name once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Environment(Vec<(String, String)>);

impl Environment {
    /// `variables` in order; a later value of a name replaces an earlier one, where it was.
    pub fn new(variables: impl IntoIterator<Item = (String, String)>) -> Environment {
        let mut found: Vec<(String, String)> = Vec::new();
        for (name, value) in variables {
            match found.iter_mut().find(|(known, _)| *known == name) {
                Some(known) => known.1 = value,
                None => found.push((name, value)),
            }
        }
        Environment(found)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(name, _)| name.clone()).collect()
    }

    /// The file's text, for a POSIX shell to source: one `export NAME='VALUE'` a line.
    pub fn script(&self) -> String {
        (self.0.iter())
            .map(|(name, value)| format!("export {name}={}\n", shell_quote(value)))
            .collect()
    }
}

/// Shows the names only: a value may be a secret.
impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Writes what comes on stdin into the file `env` of the record `dir` (a shell word), readable
/// by the login user only from the start. In a subshell: nothing else gets the umask.
pub fn write_command(dir: &str) -> String {
    format!("( umask 077 && mkdir -p {dir} && rm -f {dir}/env && cat > {dir}/env )")
}

/// Sources, then removes, the file `write_command` wrote in `dir`: the shell that runs this
/// exports the variables to what it starts.
pub fn load_command(dir: &str) -> String {
    format!(". {dir}/env && rm -f {dir}/env")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn environment() -> Environment {
        Environment::new([
            ("A".to_string(), "it's $HOME `x`\nline 2".to_string()),
            ("B".to_string(), "first".to_string()),
            ("A".to_string(), "again: it's $HOME `x`\nline 2".to_string()),
            ("EMPTY".to_string(), String::new()),
        ])
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_value_and_values_are_not_shown() {
        let environment = environment();
        assert_eq!(environment.names(), ["A", "B", "EMPTY"]);
        let debug = format!("{environment:?}");
        assert_eq!(debug, r#"["A", "B", "EMPTY"]"#);
    }

    /// Written as the instance writes it, then sourced by a real shell: the values arrive as
    /// they were, the file is private while it lives, and gone once sourced.
    #[test]
    fn the_file_is_private_and_a_shell_reads_the_values_back_exactly() {
        let home = tempfile::tempdir().unwrap();
        let dir = "\"$HOME\"/.ssh-ec2/runs/s/t";
        let sh = |line: &str, input: &str| {
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(line)
                .env_clear()
                .env("HOME", home.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "{line}");
            String::from_utf8(output.stdout).unwrap()
        };
        sh(&write_command(dir), &environment().script());
        let file = home.path().join(".ssh-ec2/runs/s/t/env");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let shown = sh(
            &format!(
                "{} && printf '%s|%s|%s' \"$A\" \"$B\" \"${{EMPTY-unset}}\"",
                load_command(dir)
            ),
            "",
        );
        assert_eq!(shown, "again: it's $HOME `x`\nline 2|first|");
        assert!(!file.exists(), "removed once sourced");
    }
}
