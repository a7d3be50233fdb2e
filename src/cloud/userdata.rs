//! The instance's user-data: one `#cloud-config` document that installs the host key ssh-ec2
//! will demand and the login key it will use, before sshd first starts, and the dead-man
//! switch that ends the instance when nobody uses it (see `remote::watchdog`), and the watch
//! for spot interruption notices (`remote::spot_watch`).

use crate::remote::spot_watch;
use crate::remote::watchdog::{self, Arming};

/// Free text is written as JSON strings, which YAML reads as double-quoted scalars.
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
}

pub struct UserData<'a> {
    pub host_private_openssh: &'a str,
    pub host_public_openssh: &'a str,
    /// The per-run login key; `None` when an EC2 key pair provides it.
    pub authorized_key: Option<&'a str>,
    /// The user's own boot commands (AWS_USER_DATA), run by cloud-init after ours.
    pub extra_commands: Option<&'a str>,
    /// The dead-man switch, armed with the launch's settings.
    pub watchdog: &'a Arming,
}

impl UserData<'_> {
    pub fn render(&self) -> String {
        let mut doc = String::from("#cloud-config\n");
        // Only our host key: no generated ones that could be offered instead.
        doc.push_str("ssh_deletekeys: true\nssh_genkeytypes: []\n");
        doc.push_str("ssh_keys:\n  ed25519_private: |\n");
        for line in self.host_private_openssh.lines() {
            doc.push_str(&format!("    {line}\n"));
        }
        doc.push_str(&format!(
            "  ed25519_public: {}\n",
            yaml_string(self.host_public_openssh)
        ));
        if let Some(key) = self.authorized_key {
            doc.push_str(&format!("ssh_authorized_keys:\n  - {}\n", yaml_string(key)));
        }
        doc.push_str("write_files:\n");
        let files = self.watchdog.boot_files().into_iter();
        for (path, mode, content) in files.chain(spot_watch::boot_files()) {
            doc.push_str(&format!(
                "  - path: {path}\n    permissions: '{mode}'\n    content: {}\n",
                yaml_string(&content)
            ));
        }
        doc.push_str("runcmd:\n");
        let start = format!(
            "systemctl daemon-reload && systemctl enable --now {} {}",
            watchdog::UNITS,
            spot_watch::TIMER_UNIT
        );
        for command in std::iter::once(start.as_str()).chain(self.extra_commands) {
            doc.push_str(&format!("  - [sh, -c, {}]\n", yaml_string(command)));
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_cloud_config_document() {
        let doc = UserData {
            host_private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
            host_public_openssh: "ssh-ed25519 AAAA host",
            authorized_key: Some("ssh-ed25519 BBBB login"),
            extra_commands: Some("echo \"hi\"\nexit 0"),
            watchdog: &Arming::new(
                std::time::SystemTime::now(),
                crate::settings::values::Limit::Off,
                crate::settings::values::Limit::Off,
            ),
        }
        .render();
        assert!(doc.starts_with("#cloud-config\n"));
        assert!(
            doc.contains(
                "  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    abc\n"
            )
        );
        assert!(doc.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 BBBB login\"\n"));
        assert!(doc.contains(r#"  - [sh, -c, "echo \"hi\"\nexit 0"]"#));
        assert!(
            doc.contains("  - path: /usr/local/sbin/ssh-ec2-watchdog\n    permissions: '0755'\n")
        );
        let runcmd = doc.split("runcmd:\n").nth(1).unwrap();
        assert!(
            runcmd.starts_with("  - [sh, -c, \"systemctl daemon-reload"),
            "the switch starts before the user's commands: {runcmd}"
        );
    }
}
