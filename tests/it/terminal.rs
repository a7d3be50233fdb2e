//! On a terminal: a remote PTY, raw mode while it runs, the terminal restored afterwards.
//! The terminal is a real one: a tmux pane, driven with send-keys and read with capture-pane.

use crate::common;

use common::{Pane, Project, TestCloud};

#[test]
fn an_interactive_shell_gets_a_pty_and_the_terminal_is_restored() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let pane = Pane::shell(&project, &cloud);
    // After ssh-ec2: its exit status, and whether the terminal is back in canonical mode (the
    // quotes keep the typed line from matching what the test waits for).
    pane.type_line(
        "ssh-ec2; echo \"ex\"\"it=$?\"; echo \"aft\"\"er: $(stty -a | grep -o -- '-\\?icanon' | head -n1)\"",
    );

    pane.wait_for("opening a shell in");
    // The login shell is interactive on a remote PTY; what we type reaches it.
    pane.type_line("echo \"remote tty: $(tty)\"; echo \"answer=$((6*7))\"; exit 7");
    let screen = pane.wait_for("after: ");
    assert!(screen.contains("exit=7"), "{screen}");
    assert!(screen.contains("remote tty: /dev/pts/"), "{screen}");
    assert!(screen.contains("answer=42"), "{screen}");
    assert!(
        screen.contains("after: icanon"),
        "the local terminal is back in canonical mode:\n{screen}"
    );
    assert!(screen.contains("terminated"), "{screen}");
}

#[test]
fn a_shell_gets_the_terminal_size_follows_resizes_and_tilde_dot_ends_it() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let pane = Pane::shell(&project, &cloud);

    pane.type_line("ssh-ec2; echo \"exit=$?\"");
    pane.wait_for("opening a shell in");

    pane.assert_remote_size_follows();

    // ssh's escape, after a newline: hangs up on a session that would not end by itself.
    pane.tmux(&["send-keys", "Enter"]);
    pane.tmux(&["send-keys", "-l", "~."]);
    let screen = pane.wait_for("exit=255");
    assert!(screen.contains("~.: hanging up"), "{screen}");
    assert!(
        screen.contains("terminated"),
        "nothing left running:\n{screen}"
    );
}
