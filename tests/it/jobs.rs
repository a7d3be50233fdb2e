//! Jobs in tmux or screen that outlive the connection: --detach, --attach, --finish, a
//! foreground --multi run, a killed client, a dropped connection. Driven through a real
//! terminal (a tmux pane of the test's own) where a person would use one.

use crate::common;

use std::process::Stdio;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Pane, Project, RUN_TIMEOUT, Run, TestCloud, state_of, wait_or_kill, wait_until};

/// A job that says it started, waits for the test's go, leaves a result and exits with 5.
const JOB: &str = "echo job-started; while [ ! -e go ]; do sleep 0.1; done; \
                   echo result > result.txt; exit 5";

fn go(cloud: &TestCloud, project: &Project) {
    std::fs::write(cloud.remote(project).join("go"), "").unwrap();
}

#[test]
fn detach_then_attach_shows_the_job_and_detaching_leaves_it_then_finish_brings_its_status_and_results()
 {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("job.sh", JOB);
    let pane = Pane::shell(&project, &cloud);

    pane.type_line("ssh-ec2 --detach 'sh job.sh'; echo \"detach=$?\"");
    let screen = pane.wait_for("detach=0");
    assert!(
        screen.contains("ssh-ec2 --attach"),
        "says how to come back\n{screen}"
    );
    assert!(screen.contains("ssh-ec2 --finish"), "{screen}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Running,
        "the instance stays for the job"
    );

    pane.type_line("ssh-ec2 --attach; echo \"attach=$?\"");
    pane.wait_for("job-started");
    pane.tmux(&["send-keys", "C-b", "d"]);
    pane.wait_for("attach=0");
    assert!(
        !cloud.remote(&project).join("result.txt").exists(),
        "the job goes on"
    );

    pane.type_line("ssh-ec2 --finish; echo \"finish=$?\"");
    pane.wait_for("job-started");
    go(&cloud, &project);
    // The job's exit status.
    let screen = pane.wait_for("finish=5");
    assert_eq!(
        project.read("result.txt").as_deref(),
        Some("result\n"),
        "{screen}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{screen}"
    );
}

#[test]
fn a_screen_job_finishes_without_a_terminal_and_a_second_detach_is_refused_while_it_runs() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("job.sh", JOB);

    let detached =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--multi", "screen", "--detach", "sh job.sh"]),
        );
    detached.assert_code(0);
    assert!(detached.stderr.contains("in screen"), "{detached}");

    let again = Run::of(project.ssh_ec2(&cloud).args(["--detach", "true"]));
    again.assert_code(255);
    assert!(
        again.stderr.contains("still runs") && again.stderr.contains("ssh-ec2 --finish"),
        "{again}"
    );

    go(&cloud, &project);
    let finished = Run::of(project.ssh_ec2(&cloud).args(["--finish", "--no-attach"]));
    finished.assert_code(5);
    assert_eq!(
        project.read("result.txt").as_deref(),
        Some("result\n"),
        "{finished}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{finished}"
    );
}

#[test]
fn a_killed_client_leaves_the_job_running_and_finish_later_brings_its_status() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("job.sh", JOB);

    let child = project
        .ssh_ec2(&cloud)
        .args(["--multi", "tmux", "sh job.sh"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the job to start", || {
        cloud
            .remote_state_entries(&project, "jobs")
            .iter()
            .any(|job| job.join("started").exists())
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_or_kill(child, RUN_TIMEOUT);
    // Its connection closes with it (and its lease stops counting): as when a laptop dies.
    wait_until("the killed client's connection to close", || {
        cloud.connection_pids().is_empty()
    });

    go(&cloud, &project);
    let finished = Run::of(project.ssh_ec2(&cloud).args(["--finish", "--no-attach"]));
    finished.assert_code(5);
    assert_eq!(
        project.read("result.txt").as_deref(),
        Some("result\n"),
        "{finished}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{finished}"
    );
}

#[test]
fn a_dropped_connection_is_reestablished_and_the_job_ends_as_usual() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("job.sh", &format!("touch running; {JOB}"));

    let child = project
        .ssh_ec2(&cloud)
        .args(["--multi", "tmux", "sh job.sh"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the job to start", || {
        cloud.read_remote(&project, "running").is_some()
    });
    assert!(
        cloud.drop_connections() > 0,
        "there was a connection to cut"
    );
    go(&cloud, &project);
    let run = Run::collect(child);
    run.assert_code(5);
    assert!(run.stderr.contains("reconnecting"), "{run}");
    assert_eq!(
        project.read("result.txt").as_deref(),
        Some("result\n"),
        "{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
}

#[test]
fn attach_and_finish_without_a_job_or_an_instance_say_so_and_launch_nothing() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let finish = Run::of(project.ssh_ec2(&cloud).args(["--finish", "--no-attach"]));
    finish.assert_code(255);
    assert!(finish.stderr.contains("has no instance"), "{finish}");
    assert!(cloud.instances().is_empty(), "nothing launched\n{finish}");

    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let pane = Pane::shell(&project, &cloud);
    pane.type_line("ssh-ec2 --attach; echo \"attach=$?\"");
    let screen = pane.wait_for("attach=255");
    assert!(screen.contains("no job"), "{screen}");
    let finish = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--finish", "--no-attach", "--stop"]),
    );
    finish.assert_code(255);
    assert!(finish.stderr.contains("no job"), "{finish}");
    assert_eq!(cloud.instances().len(), 1, "{finish}");
    // Clean up what the test left running.
    Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"])).assert_code(0);
}

#[test]
fn ctrl_c_typed_in_a_terminal_ends_the_run_with_130_as_make_expects() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let pane = Pane::shell(&project, &cloud);

    pane.type_line(
        "ssh-ec2 'echo started > started.txt; printf \"%s-ready\\n\" cmd; sleep 60'; echo \"run=$?\"",
    );
    pane.wait_for("cmd-ready");
    pane.tmux(&["send-keys", "C-c"]);
    let screen = pane.wait_for("run=130");
    assert!(!screen.contains("killed by signal"), "{screen}");
    assert_eq!(
        project.read("started.txt").as_deref(),
        Some("started\n"),
        "{screen}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{screen}"
    );
}

#[test]
fn ctrl_c_typed_in_a_foreground_tmux_run_reaches_the_job_whose_status_is_the_runs() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(
        "job.sh",
        "trap 'echo got-int > int.txt; exit 7' INT; echo job-ready; \
         while :; do sleep 0.1; done",
    );
    let pane = Pane::shell(&project, &cloud);

    pane.type_line("ssh-ec2 --multi tmux 'sh job.sh'; echo \"run=$?\"");
    pane.wait_for("job-ready");
    // A keystroke in the terminal, as a person would type it.
    pane.tmux(&["send-keys", "C-c"]);
    let screen = pane.wait_for("run=7");
    // The job's trap ran, and what it wrote came home.
    assert_eq!(
        project.read("int.txt").as_deref(),
        Some("got-int\n"),
        "{screen}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{screen}"
    );
}

#[test]
fn what_is_typed_during_a_reconnect_reaches_the_job() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(
        "job.sh",
        "echo job-ready; read line; echo \"got:$line\" > got.txt; exit 4",
    );
    let pane = Pane::shell(&project, &cloud);

    pane.type_line("ssh-ec2 --multi tmux 'sh job.sh'; echo \"run=$?\"");
    pane.wait_for("job-ready");
    let cut = cloud.connection_pids();
    assert!(
        cloud.drop_connections() > 0,
        "there was a connection to cut"
    );
    // Typed once ssh-ec2 has connected again, before it is attached again (what reached the
    // dead connection is lost, as with ssh): it reaches the job.
    wait_until("a new connection", || {
        cloud.connection_pids().iter().any(|pid| !cut.contains(pid))
    });
    pane.type_line("typed during the reconnect");
    let screen = pane.wait_for("run=4");
    assert_eq!(
        project.read("got.txt").as_deref(),
        Some("got:typed during the reconnect\n"),
        "{screen}"
    );
}
