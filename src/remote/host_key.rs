//! Installing a host key made for the instance in place of the one its user-data carried (see
//! `session::host_key`). It needs the login user's passwordless sudo, which the Deep Learning
//! AMIs give. The new key is written over the one sshd reads, where cloud-init put the
//! user-data's (`/etc/ssh/ssh_host_ed25519_key` and `.pub`); the configuration is checked
//! (`sshd -t`), the old pair put back if it fails; then the listening sshd reloads: SIGHUP to
//! the pid in `/run/sshd.pid`, which is what `systemctl reload ssh` does on Ubuntu, else
//! `systemctl reload ssh` or `sshd`. A reload leaves open connections alone, this one included.

use anyhow::{Result, bail};

use super::shell_quote;

/// The private key sshd reads, as cloud-init writes it from the user-data.
const KEY_FILE: &str = "/etc/ssh/ssh_host_ed25519_key";

/// The last line the command prints.
const INSTALLED: &str = "installed";
const NO_SUDO: &str = "no-sudo";

/// What the install did.
#[derive(Debug, PartialEq, Eq)]
pub enum Install {
    Done,
    /// The login user may not use sudo without a password: nothing was changed.
    NoSudo,
}

/// Run by root: `$1` is the public key; the private key comes on stdin, never on a command
/// line, which every process on the instance can read.
const SCRIPT: &str = r#"set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
umask 077
key=KEY_FILE new=KEY_FILE.ssh-ec2-new old=KEY_FILE.ssh-ec2-old
cat > "$new"
printf '%s\n' "$1" > "$new.pub"
chmod 600 "$new"
chmod 644 "$new.pub"
rm -f "$old" "$old.pub"
if [ -e "$key" ]; then cp -p "$key" "$old"; fi
if [ -e "$key.pub" ]; then cp -p "$key.pub" "$old.pub"; fi
mv -f "$new" "$key"
mv -f "$new.pub" "$key.pub"
if command -v restorecon >/dev/null; then restorecon "$key" "$key.pub" || true; fi
if ! sshd -t; then
  if [ -e "$old" ]; then mv -f "$old" "$key"; else rm -f "$key"; fi
  if [ -e "$old.pub" ]; then mv -f "$old.pub" "$key.pub"; else rm -f "$key.pub"; fi
  echo "sshd -t refused its configuration with the new key: the old key is back" >&2
  exit 1
fi
rm -f "$old" "$old.pub"
kill -HUP "$(cat /run/sshd.pid 2>/dev/null)" 2>/dev/null \
  || systemctl reload ssh 2>/dev/null || systemctl reload sshd
echo INSTALLED
"#;

/// The command that installs the host key whose public half is `public_openssh`; its private
/// half goes on the command's stdin. Without sudo it changes nothing and says so.
pub fn install_command(public_openssh: &str) -> String {
    let script = SCRIPT
        .replace("KEY_FILE", KEY_FILE)
        .replace("INSTALLED", INSTALLED);
    format!(
        "if sudo -n true 2>/dev/null; then sudo -n sh -c {} ssh-ec2-host-key {}; \
         else echo {NO_SUDO}; fi",
        shell_quote(&script),
        shell_quote(public_openssh)
    )
}

/// What the command's output says; its last line (a shell profile may print before it).
pub fn outcome(stdout: &str) -> Result<Install> {
    match stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        Some(INSTALLED) => Ok(Install::Done),
        Some(NO_SUDO) => Ok(Install::NoSudo),
        other => bail!(
            "the host key's install answered {:?} instead of `{INSTALLED}`",
            other.unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_writes_over_sshd_s_key_checks_then_reloads() {
        let command = install_command("ssh-ed25519 AAAA ssh-ec2-host");
        assert!(command.starts_with("if sudo -n true 2>/dev/null; then sudo -n sh -c '"));
        assert!(
            command.ends_with(
                " ssh-ec2-host-key 'ssh-ed25519 AAAA ssh-ec2-host'; else echo no-sudo; fi"
            )
        );
        assert!(command.contains("key=/etc/ssh/ssh_host_ed25519_key "));
        let order = [
            "cat > \"$new\"",
            "mv -f \"$new\" \"$key\"",
            "sshd -t",
            "kill -HUP",
            "echo installed",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|step| command.find(step).unwrap())
            .collect();
        assert!(at.is_sorted(), "{order:?} in that order: {command}");
        assert!(command.contains("systemctl reload ssh 2>/dev/null || systemctl reload sshd"));
        assert!(
            !command.contains("PRIVATE KEY"),
            "the private key never goes on a command line"
        );
    }

    #[test]
    fn the_last_line_says_what_was_done() {
        assert_eq!(outcome("welcome!\ninstalled\n").unwrap(), Install::Done);
        assert_eq!(outcome("no-sudo\n").unwrap(), Install::NoSudo);
        assert!(outcome("").is_err());
        assert!(outcome("installed\nsomething else\n").is_err());
    }
}
