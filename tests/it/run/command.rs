//! The main run, end to end: run. The words as one command, its exit status, stdin and live
//! output, a signal, -q and -v.

use crate::common;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, state_of};

#[test]
fn seed_usage_runs_the_words_as_one_command_and_terminates() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("hello.txt", "hi\n");

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "echo",
        "I",
        "am",
        "$(whoami)",
        "in",
        "$(pwd)",
        "with",
        "$(cat",
        "hello.txt)",
    ]));
    run.assert_code(0);
    let name = project.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(
        run.stdout.trim(),
        format!("I am ubuntu in /home/ubuntu/{name} with hi"),
        "the words run as one command in the synced directory\n{run}"
    );

    let run = Run::of(project.ssh_ec2(&cloud).args(["who", "am", "i"]));
    run.assert_code(0);

    let instances = cloud.instances();
    assert_eq!(instances.len(), 2, "one instance per run");
    assert!(
        instances
            .iter()
            .all(|i| state_of(i) == InstanceStateName::Terminated)
    );
    assert!(
        run.stderr.contains("terminated"),
        "a summary line says what happened\n{run}"
    );
}

#[test]
fn exit_status_comes_back_and_results_come_home_when_the_command_fails() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(
        "train.sh",
        "mkdir -p out\necho model > out/model.txt\necho 'epoch 1 failed' >&2\nexit 3\n",
    );

    let run = Run::of(project.ssh_ec2(&cloud).args(["sh", "train.sh"]));
    run.assert_code(3);
    assert_eq!(
        project.read("out/model.txt").as_deref(),
        Some("model\n"),
        "pulled back\n{run}"
    );
    assert!(
        run.stderr.contains("epoch 1 failed"),
        "remote stderr streams to stderr\n{run}"
    );
    assert!(
        !run.stdout.contains("epoch 1 failed"),
        "and not to stdout\n{run}"
    );
    assert_eq!(
        cloud.instances_in(InstanceStateName::Terminated).len(),
        1,
        "{run}"
    );
}

#[test]
fn stdin_is_forwarded_to_the_remote_command() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let run = Run::with_stdin(
        project
            .ssh_ec2(&cloud)
            .args(["--no-rsync", "tr", "a-z", "A-Z"]),
        "hello\nworld\n",
    );
    run.assert_code(0);
    assert_eq!(run.stdout, "HELLO\nWORLD\n", "{run}");
}

#[test]
fn a_command_killed_by_a_signal_exits_255_like_ssh_and_still_pulls_back() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .arg("echo partial > partial.txt; kill -9 $$"),
    );
    run.assert_code(255);
    assert!(run.stderr.contains("killed by signal KILL"), "{run}");
    assert_eq!(
        project.read("partial.txt").as_deref(),
        Some("partial\n"),
        "{run}"
    );
}

#[test]
fn quiet_prints_nothing_but_the_command_and_verbose_lists_synced_files() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("listed-file.txt", "x\n");

    // The first run may warn once about an old local rsync, and about a login user without
    // sudo (the host key from the user-data stays); warnings show even with -q.
    let first = Run::of(project.ssh_ec2(&cloud).args(["-q", "echo", "hi"]));
    first.assert_code(0);
    assert!(
        first.stderr.lines().all(|l| {
            l.starts_with("ssh-ec2: warning: your rsync is ") || l.contains("may not use sudo")
        }),
        "{first}"
    );
    let quiet = Run::of(project.ssh_ec2(&cloud).args(["-q", "echo", "hi"]));
    quiet.assert_code(0);
    assert_eq!(
        (quiet.stdout.as_str(), quiet.stderr.as_str()),
        ("hi\n", ""),
        "{quiet}"
    );

    project.write("listed-file.txt", "changed\n");
    let verbose = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-v", "echo made > made-remotely.txt"]),
    );
    verbose.assert_code(0);
    assert!(
        verbose.stderr.contains("listed-file.txt"),
        "pushed files listed\n{verbose}"
    );
    assert!(
        verbose.stderr.contains("made-remotely.txt"),
        "pulled files listed\n{verbose}"
    );
    assert!(
        !verbose.stdout.contains("listed-file.txt"),
        "stdout stays the command's\n{verbose}"
    );

    let debug = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--no-rsync", "true"]));
    debug.assert_code(0);
    assert!(
        debug.stderr.contains("DEBUG"),
        "-vv adds debug logs\n{debug}"
    );
}

#[test]
fn output_streams_live_while_the_command_runs() {
    use std::io::{BufRead, BufReader, Write};
    let cloud = TestCloud::start();
    let project = Project::new();
    // The command waits for a line that the test only sends once it has read the first output.
    let mut child = project
        .ssh_ec2(&cloud)
        .args(["--no-rsync", "echo first; read reply; echo second:$reply"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"pong\n").unwrap();
    drop(stdin);
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "second:pong\n");
    let status = common::wait_or_kill(child, common::RUN_TIMEOUT).expect("ssh-ec2 hung");
    assert_eq!(status.code(), Some(0));
}
