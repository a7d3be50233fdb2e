//! A foreground command whose client was killed (`kill -9`, as a closed lid or a dead laptop
//! ends it) goes on on the instance: the next run says so and never ends the instance under
//! it, `--finish` waits for it and brings what it wrote home, and `--down` leaves it alone
//! unless `--force` ends it first.

use crate::common;
use crate::watched::Watched;

use std::path::PathBuf;

use aws_sdk_ec2::types::InstanceStateName;
use common::{
    Project, RUN_TIMEOUT, Run, TestCloud, assert_nothing_left, start_until_ready, state_of,
    wait_or_kill, wait_until,
};

const STILL_RUNNING: &str = "a command from an earlier run is still running (since ";

/// A command that waits for the file `go`, then writes `late.txt`.
const WAITS_FOR_GO: &str =
    "echo ready; while [ ! -e go ]; do sleep 0.1; done; echo late > late.txt";

/// A cloud and a project whose foreground run of `command` (which prints `ready` first) had
/// its client killed with SIGKILL once the command ran, its connection gone.
fn killed_mid_command(command: &str) -> (TestCloud, Project) {
    let cloud = TestCloud::start();
    let project = Project::new();
    let mut client = start_until_ready(project.ssh_ec2(&cloud).arg(command));
    client.kill().unwrap();
    wait_or_kill(client, RUN_TIMEOUT).expect("SIGKILL ends it");
    wait_until("the killed client's connection to close", || {
        cloud.connection_pids().is_empty()
    });
    (cloud, project)
}

/// The records of this directory's foreground runs on the instance (see src/remote/runs.rs).
pub fn run_records(cloud: &TestCloud, project: &Project) -> Vec<PathBuf> {
    let scopes = cloud.remote_state_entries(project, "runs");
    (scopes
        .iter()
        .flat_map(std::fs::read_dir)
        .flatten()
        .flatten())
    .map(|entry| entry.path())
    .collect()
}

fn instance_state(cloud: &TestCloud) -> InstanceStateName {
    state_of(&cloud.instances()[0])
}

#[test]
fn the_next_run_leaves_the_instance_to_a_killed_clients_command_and_finish_waits_for_it() {
    let (cloud, project) = killed_mid_command(WAITS_FOR_GO);

    let next = Run::of(project.ssh_ec2(&cloud).arg("echo next"));
    next.assert_code(0);
    assert_eq!(next.stdout, "next\n", "{next}");
    assert!(next.stderr.contains(STILL_RUNNING), "says so\n{next}");
    assert!(next.stderr.contains("ssh-ec2 --finish"), "{next}");
    assert_eq!(
        instance_state(&cloud),
        InstanceStateName::Running,
        "not terminated under the command\n{next}"
    );

    let finish = Watched::start(project.ssh_ec2(&cloud).args(["--finish", "--no-attach"]));
    finish.wait_for("waiting for it to end");
    assert_eq!(project.read("late.txt"), None, "it has not written it yet");
    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    let finish = finish.collect(RUN_TIMEOUT);
    // What it wrote after its client died came home; its status nobody saw.
    assert_eq!(
        project.read("late.txt").as_deref(),
        Some("late\n"),
        "{finish}"
    );
    finish.assert_code(255);
    assert!(finish.stderr.contains("exit status is unknown"), "{finish}");
    assert_nothing_left(&cloud, &project, &finish);
    cloud.assert_no_bed_errors();
}

#[test]
fn down_leaves_a_killed_clients_command_alone_and_force_ends_it_then_pulls_and_terminates() {
    // Its output goes to a file, as a long job's does: what its client was is gone.
    let (cloud, project) = killed_mid_command(
        "echo ready; exec > log.txt 2>&1; trap 'echo ended-by-term > term.txt; exit 143' TERM; \
         echo partial > out.txt; while :; do sleep 0.1; done",
    );

    let refused = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    refused.assert_code(255);
    assert!(refused.stderr.contains(STILL_RUNNING), "{refused}");
    assert!(refused.stderr.contains("--down --force"), "{refused}");
    assert_eq!(instance_state(&cloud), InstanceStateName::Running);
    assert_eq!(project.read("out.txt"), None, "nothing pulled\n{refused}");

    // A job beside it: --force ends that too.
    let job = "trap 'echo job-ended > job.txt; exit 143' TERM; while :; do sleep 0.1; done";
    Run::of(project.ssh_ec2(&cloud).args(["--detach", job])).assert_code(0);
    let forced = Run::of(project.ssh_ec2(&cloud).args(["--down", "--force"]));
    forced.assert_code(0);
    for (file, content) in [
        ("out.txt", "partial\n"),
        ("term.txt", "ended-by-term\n"),
        ("job.txt", "job-ended\n"),
    ] {
        assert_eq!(
            project.read(file).as_deref(),
            Some(content),
            "ended, then pulled: {file}\n{forced}"
        );
    }
    assert_nothing_left(&cloud, &project, &forced);
    cloud.assert_no_bed_errors();
}

#[test]
fn a_killed_clients_command_that_ended_meanwhile_comes_home_with_the_next_run() {
    let (cloud, project) = killed_mid_command(WAITS_FOR_GO);
    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    wait_until("the command to end", || {
        cloud.read_remote(&project, "late.txt").is_some()
    });
    assert_eq!(
        run_records(&cloud, &project).len(),
        1,
        "the killed run's record"
    );

    // The next run brings it home (and only then forgets the record), then ends the instance.
    let next = Run::of(project.ssh_ec2(&cloud).arg("true"));
    next.assert_code(0);
    assert_eq!(
        project.read("late.txt").as_deref(),
        Some("late\n"),
        "{next}"
    );
    assert!(!next.stderr.contains(STILL_RUNNING), "{next}");
    assert!(
        run_records(&cloud, &project).is_empty(),
        "{:?}\n{next}",
        run_records(&cloud, &project)
    );
    assert_nothing_left(&cloud, &project, &next);
    cloud.assert_no_bed_errors();
}
