//! On a terminal: a remote PTY, raw mode while it runs, the terminal restored afterwards.
//! The terminal is a real one: a tmux pane, driven with send-keys and read with capture-pane.

mod common;

use common::{Pane, Project, TestCloud, quote, ssh_ec2_binary};

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
