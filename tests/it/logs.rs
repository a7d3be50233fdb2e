//! Every job's and run's whole output is kept in a log on the instance (`ssh-ec2-logs/`), which
//! comes home with the results; `--finish` without a terminal prints what the job printed, and
//! `--logs` prints a job's log without attaching, from any terminal or a pipe.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Pane, Project, Run, TestCloud, assert_nothing_left, state_of};

#[test]
fn a_foreground_run_s_whole_output_comes_home_in_its_log() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .arg("echo to-stdout; echo to-stderr >&2"),
    );
    run.assert_code(0);
    assert_eq!(run.stdout, "to-stdout\n", "the output still streams\n{run}");
    home_log_with(&project, "run.log", &["to-stdout\n", "to-stderr\n"], &run);
    assert_nothing_left(&cloud, &project, &run);
}

#[test]
fn a_failed_command_s_log_comes_home_and_a_local_copy_is_replaced_not_kept_beside() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // The log of an earlier instance, and a .rsyncignore that leaves logs out.
    project.write("ssh-ec2-logs/run.log", "an earlier run's log\n");
    project.write(".rsyncignore", "*.log\n");
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .arg("echo 'epoch 1 failed' >&2; exit 3"),
    );
    run.assert_code(3);
    assert_eq!(
        project.read("ssh-ec2-logs/run.log").as_deref(),
        Some("epoch 1 failed\n"),
        "{run}"
    );
    let logs: Vec<_> = std::fs::read_dir(project.path().join("ssh-ec2-logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(logs, ["run.log"], "no conflict copy\n{run}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
}

/// The log `name` as it came home, which holds each of `lines`.
fn home_log_with(project: &Project, name: &str, lines: &[&str], run: &Run) {
    let log = project
        .read(&format!("ssh-ec2-logs/{name}"))
        .unwrap_or_else(|| panic!("{name} came home\n{run}"));
    for line in lines {
        assert!(log.contains(line), "{line} in {name}: {log}\n{run}");
    }
}

/// A job that prints a line, waits for the test's go, prints another and exits with `status`.
fn job(status: i32) -> String {
    format!(
        "echo before-go; echo to-stderr >&2; while [ ! -e go ]; do sleep 0.1; done; \
         echo after-go; exit {status}"
    )
}

fn go(cloud: &TestCloud, project: &Project) {
    std::fs::write(cloud.remote(project).join("go"), "").unwrap();
}

/// Waits until the job's log on the instance shows `text`.
fn wait_for_log(cloud: &TestCloud, project: &Project, log: &str, text: &str) {
    common::wait_until(&format!("{log} to show {text}"), || {
        (cloud.read_remote(project, &format!("ssh-ec2-logs/{log}")))
            .is_some_and(|content| content.contains(text))
    });
}

#[test]
fn finish_without_a_terminal_prints_the_job_s_output_and_its_log_comes_home() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let detach = Run::of(project.ssh_ec2(&cloud).args(["--detach", &job(3)]));
    detach.assert_code(0);
    wait_for_log(&cloud, &project, "job.log", "before-go");
    go(&cloud, &project);

    // Stdin is a pipe at its end, stdout a pipe: no terminal.
    let finish = Run::of(project.ssh_ec2(&cloud).arg("--finish"));
    finish.assert_code(3);
    for line in ["before-go", "to-stderr", "after-go"] {
        assert!(finish.stdout.contains(line), "{line}\n{finish}");
    }
    assert!(finish.stderr.contains("job ended (exit 3)"), "{finish}");
    home_log_with(&project, "job.log", &["before-go", "after-go"], &finish);
    assert_nothing_left(&cloud, &project, &finish);
}

#[test]
fn logs_prints_from_a_pipe_and_finish_then_prints_only_what_was_not_seen() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--detach", &job(4)])).assert_code(0);
    wait_for_log(&cloud, &project, "job.log", "before-go");

    let logs = Run::of(project.ssh_ec2(&cloud).arg("--logs"));
    logs.assert_code(0);
    assert!(logs.stdout.contains("before-go"), "{logs}");
    assert!(!logs.stdout.contains("after-go"), "{logs}");
    assert!(
        cloud.read_remote(&project, "go").is_none(),
        "nothing synced"
    );

    go(&cloud, &project);
    let finish = Run::of(project.ssh_ec2(&cloud).arg("--finish"));
    finish.assert_code(4);
    assert!(finish.stdout.contains("after-go"), "{finish}");
    assert!(
        !finish.stdout.contains("before-go"),
        "seen already with --logs\n{finish}"
    );
    assert!(finish.stderr.contains("job ended (exit 4)"), "{finish}");

    // Without an instance: where the last job's log is.
    let none = Run::of(project.ssh_ec2(&cloud).arg("--logs"));
    none.assert_code(255);
    assert!(
        none.stderr.contains("has no instance")
            && none.stderr.contains("came home: ssh-ec2-logs/job.log"),
        "{none}"
    );
    assert_nothing_left(&cloud, &project, &finish);
}

#[test]
fn logs_follow_prints_a_screen_job_s_output_as_it_comes_until_it_ends_with_its_status() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let detach = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--multi", "screen", "--detach", &job(6)]),
    );
    detach.assert_code(0);
    assert!(detach.stderr.contains("in screen"), "{detach}");

    let mut child = project
        .ssh_ec2(&cloud)
        .args(["--logs", "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its lines as they come, so that a --logs -f that shows nothing fails the test, not hangs it.
    let (lines, printed) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let first = printed.recv_timeout(common::RUN_TIMEOUT);
    if !first
        .as_deref()
        .is_ok_and(|line| line.contains("before-go"))
    {
        let _ = child.kill();
        panic!("--logs -f did not print the job's first line: {first:?}");
    }
    // Still following: only now does the job go on.
    go(&cloud, &project);
    let status = common::wait_or_kill(child, common::RUN_TIMEOUT);
    let (rest, stderr): (Vec<String>, String) = (printed.iter().collect(), stderr.join().unwrap());
    assert_eq!(status.and_then(|s| s.code()), Some(6), "{rest:?}\n{stderr}");
    assert!(
        rest.iter().any(|l| l.contains("after-go")),
        "{rest:?}\n{stderr}"
    );
    assert!(stderr.contains("job ended (exit 6)"), "{stderr}");

    let finish = Run::of(project.ssh_ec2(&cloud).arg("--finish"));
    finish.assert_code(6);
    assert_nothing_left(&cloud, &project, &finish);
}

/// The live nodes of the project's cluster, in rank order (EC2's launch index).
fn node_ids(cloud: &TestCloud, project: &Project) -> Vec<String> {
    let dir = project.path().canonicalize().unwrap();
    let mut nodes: Vec<_> = (cloud.live_instances().into_iter())
        .filter(|i| common::tag(i, "ssh-ec2:dir").as_deref() == dir.to_str())
        .collect();
    nodes.sort_by_key(|i| i.ami_launch_index());
    nodes.iter().map(common::instance_id).collect()
}

/// The project's directory on node `id`, from here.
fn remote_on(cloud: &TestCloud, id: &str, project: &Project) -> std::path::PathBuf {
    cloud.home_on(id).join(project.path().file_name().unwrap())
}

#[test]
fn every_node_s_log_of_a_cluster_run_and_of_its_job_comes_home() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "2",
        "--leave",
        "echo run-of-$SSH_EC2_NODE_RANK",
    ]));
    run.assert_code(0);
    assert!(run.stdout.contains("[node 1] run-of-1\n"), "{run}");
    for rank in 0..2 {
        assert_eq!(
            project
                .read(&format!("ssh-ec2-logs/run-node-{rank}.log"))
                .as_deref(),
            Some(format!("run-of-{rank}\n").as_str()),
            "{run}"
        );
    }

    let detach = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "2",
        "--detach",
        "echo job-of-$SSH_EC2_NODE_RANK",
    ]));
    detach.assert_code(0);
    let finish = Run::of(project.ssh_ec2(&cloud).arg("--finish"));
    finish.assert_code(0);
    for rank in 0..2 {
        let (log, line) = (format!("job-node-{rank}.log"), format!("job-of-{rank}"));
        home_log_with(&project, &log, &[&line], &finish);
    }
    assert_nothing_left(&cloud, &project, &finish);
}

#[test]
fn attach_node_1_attaches_to_that_node_s_job_through_the_head() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(
        "job.sh",
        "echo started-on-node-$SSH_EC2_NODE_RANK; while [ ! -e go ]; do sleep 0.1; done",
    );
    let detach = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--nodes", "2", "--detach", "sh job.sh"]),
    );
    detach.assert_code(0);
    let pane = Pane::shell(&project, &cloud);
    pane.type_line("ssh-ec2 --attach --node 1; echo \"attach=$?\"");
    let screen = pane.wait_for("started-on-node-1");
    assert!(!screen.contains("started-on-node-0"), "{screen}");
    pane.tmux(&["send-keys", "C-b", "d"]);
    let screen = pane.wait_for("attach=0");
    assert!(screen.contains("--attach --node 1"), "{screen}");

    let logs = Run::of(project.ssh_ec2(&cloud).args(["--logs", "--node", "1"]));
    logs.assert_code(0);
    assert!(logs.stdout.contains("started-on-node-1"), "{logs}");
    let beyond = Run::of(project.ssh_ec2(&cloud).args(["--logs", "--node", "2"]));
    beyond.assert_code(255);
    assert!(beyond.stderr.contains("0 (the head) to 1"), "{beyond}");

    for id in node_ids(&cloud, &project) {
        std::fs::write(remote_on(&cloud, &id, &project).join("go"), "").unwrap();
    }
    let finish = Run::of(project.ssh_ec2(&cloud).arg("--finish"));
    finish.assert_code(0);
    assert_nothing_left(&cloud, &project, &finish);
}
