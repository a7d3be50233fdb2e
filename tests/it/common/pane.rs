//! A real terminal for the tests: a pane of a tmux server of the test's own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Laptop, Project, TestCloud, cloud_environment, path_with_ssh_ec2};

/// A private tmux server holding one pane; killed on drop.
pub struct Pane {
    socket: PathBuf,
}

impl Pane {
    /// Runs `script` with sh in a new 100x30 pane, on the laptop: the tmux server starts
    /// there, and everything in its pane runs there.
    pub fn start(dir: &Path, script: &str, laptop: &Laptop) -> Pane {
        let socket = dir.join("tmux.sock");
        let script_file = dir.join("pane.sh");
        std::fs::write(&script_file, script).unwrap();
        let started = laptop
            .command("/usr/bin/tmux")
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "100",
                "-y",
                "30",
                "sh",
            ])
            .arg(&script_file)
            .status()
            .expect("tmux is needed for terminal tests: run tests/testbed/install");
        assert!(started.success());
        Pane { socket }
    }

    pub fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// With a remote shell in the pane: its terminal has the pane's size (100x30), then follows
    /// a resize to 120x40 (the new size travels beside what is typed: asked until it shows).
    pub fn assert_remote_size_follows(&self) {
        self.type_line("echo \"size: $(stty size)\"");
        self.wait_for("size: 30 100");
        self.tmux(&["resize-window", "-x", "120", "-y", "40"]);
        let resized = (0..20).any(|_| {
            self.type_line("echo \"size: $(stty size)\"");
            self.shows_within("size: 40 120", Duration::from_secs(1))
                .is_ok()
        });
        assert!(
            resized,
            "the remote PTY follows the resize:\n{}",
            self.screen()
        );
    }

    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-200"])
    }

    /// Waits until the pane shows `text`.
    pub fn wait_for(&self, text: &str) -> String {
        self.shows_within(text, Duration::from_secs(60))
            .unwrap_or_else(|screen| panic!("the pane never showed `{text}`:\n{screen}"))
    }

    /// The screen once it shows `text`, or the last screen seen after `timeout`.
    pub fn shows_within(&self, text: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                return Err(screen);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-l", line]);
        self.tmux(&["send-keys", "Enter"]);
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

impl Pane {
    /// An interactive shell in a pane, in the project, on the cloud's laptop, with ssh-ec2's
    /// environment for `cloud` and ssh-ec2 first in PATH: what a user's terminal would be.
    pub fn shell(project: &Project, cloud: &TestCloud) -> Pane {
        let path = path_with_ssh_ec2().into_string().unwrap();
        let env = [
            ("PATH", path),
            ("HOME", project.home().display().to_string()),
            ("USER", "tester".into()),
            ("TERM", "xterm".into()),
            ("PS1", "$ ".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ];
        let exports: String = env
            .into_iter()
            .chain(cloud_environment(cloud))
            .map(|(k, v)| format!("export {k}={}\n", quote(&v)))
            .collect();
        let script = format!(
            "{exports}cd {dir}\nexec sh -i\n",
            dir = quote(&project.path().display().to_string()),
        );
        Pane::start(project.home(), &script, &cloud.laptop)
    }
}
