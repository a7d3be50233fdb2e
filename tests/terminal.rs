//! On a terminal: a remote PTY, raw mode while it runs, the terminal restored afterwards.
//! The terminal is a real one: a tmux pane, driven with send-keys and read with capture-pane.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Project, TestCloud, ssh_ec2_binary};

/// A private tmux server holding one pane; killed on drop.
struct Pane {
    socket: PathBuf,
}

impl Pane {
    /// Runs `script` with sh in a new 100x30 pane.
    fn start(dir: &Path, script: &str) -> Pane {
        let socket = dir.join("tmux.sock");
        let script_file = dir.join("pane.sh");
        std::fs::write(&script_file, script).unwrap();
        let started = Command::new("tmux")
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

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-200"])
    }

    /// Waits until the pane shows `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the pane never showed `{text}`:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-l", line]);
        self.tmux(&["send-keys", "Enter"]);
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[test]
fn an_interactive_shell_gets_a_pty_and_the_terminal_is_restored() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let env = [
        ("PATH", std::env::var("PATH").unwrap()),
        ("HOME", project.home().display().to_string()),
        ("USER", "tester".into()),
        ("TERM", "xterm".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ENDPOINT_URL", cloud.endpoint.clone()),
        ("AWS_REGION", cloud.region.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("SSH_EC2_CONNECT", cloud.connect.clone()),
        ("SSH_EC2_CHECKIP_URL", cloud.checkip_url.clone()),
    ];
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", quote(v)))
        .collect();
    let script = format!(
        "{exports}cd {dir}\n{bin}\necho \"exit=$?\"\necho \"after: $(stty -a | grep -o -- '-\\?icanon' | head -n1)\"\nexec sleep 600\n",
        dir = quote(&project.path().display().to_string()),
        bin = quote(&ssh_ec2_binary().display().to_string()),
    );
    let pane = Pane::start(project.home(), &script);

    pane.wait_for("opening a shell in");
    // The login shell is interactive on a remote PTY; what we type reaches it.
    pane.type_line("echo \"remote tty: $(tty)\"; echo \"answer=$((6*7))\"; exit 7");
    let screen = pane.wait_for("exit=7");
    assert!(screen.contains("remote tty: /dev/pts/"), "{screen}");
    assert!(screen.contains("answer=42"), "{screen}");
    assert!(
        screen.contains("after: icanon"),
        "the local terminal is back in canonical mode:\n{screen}"
    );
    assert!(screen.contains("terminated"), "{screen}");
}
