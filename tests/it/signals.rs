//! Ctrl-C, SIGTERM and SIGQUIT during the command, and a second Ctrl-C after it that gives up
//! the pull.

use crate::common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;

use aws_sdk_ec2::types::InstanceStateName;
use common::{
    Project, RUN_TIMEOUT, Run, TestCloud, signal, start_until_ready, state_of, wait_or_kill,
};
use nix::sys::signal::Signal;

#[test]
fn sigquit_is_passed_on_like_sigterm_and_the_run_ends_cleanly() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .arg("echo partial > log.txt; echo ready; sleep 60"),
    );
    signal(&child, Signal::SIGQUIT);
    let run = Run::collect(child);
    run.assert_code(131);
    assert!(run.stderr.contains("SIGQUIT: passed on"), "{run}");
    assert!(
        run.stderr.contains("killed by signal TERM"),
        "the command got SIGTERM\n{run}"
    );
    assert_eq!(
        project.read("log.txt").as_deref(),
        Some("partial\n"),
        "{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
}

#[test]
fn a_second_ctrl_c_during_the_pull_skips_it_and_stops_the_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // A result big enough for the pull to last while the test presses Ctrl-C twice.
    let mut child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .arg("echo ready; head -c 1200000000 /dev/urandom > big.bin"),
    );
    let (lines, seen) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line.clone());
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let wait_for = |text: &str| loop {
        let line = seen.recv_timeout(RUN_TIMEOUT).expect("ssh-ec2 went quiet");
        if line.contains(text) {
            break;
        }
    };
    wait_for("pulling results back");
    // Signals are not queued: the second only once the first was seen, as a person would.
    signal(&child, Signal::SIGINT);
    wait_for("again to skip the pull");
    signal(&child, Signal::SIGINT);
    let status = wait_or_kill(child, RUN_TIMEOUT).expect("ssh-ec2 hung");
    let stderr = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("skipping the pull"), "{stderr}");
    assert!(
        stderr.contains("`ssh-ec2 true`"),
        "says how to get the results\n{stderr}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Stopped,
        "stopped, never terminated, with results not home\n{stderr}"
    );
}

#[test]
fn ctrl_c_stops_the_command_brings_results_home_terminates_and_exits_130() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .arg("echo started > started.txt; echo ready; sleep 60"),
    );
    signal(&child, Signal::SIGINT);
    let Run { code, stderr, .. } = Run::collect(child);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("killed by signal INT"),
        "Ctrl-C reached the remote command\n{stderr}"
    );
    assert_eq!(
        project.read("started.txt").as_deref(),
        Some("started\n"),
        "{stderr}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{stderr}"
    );
}

#[test]
fn sigterm_ends_a_run_cleanly() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .arg("echo partial > log.txt; echo ready; sleep 60"),
    );
    signal(&child, Signal::SIGTERM);
    let Run { code, stderr, .. } = Run::collect(child);
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        stderr.contains("killed by signal TERM"),
        "passed on to the command\n{stderr}"
    );
    assert_eq!(
        project.read("log.txt").as_deref(),
        Some("partial\n"),
        "{stderr}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("error:").count(),
        1,
        "one error line\n{stderr}"
    );
}
