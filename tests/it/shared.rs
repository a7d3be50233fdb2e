//! Several runs in one directory share its instance: a second run joins instead of launching,
//! and only the last one out applies the end of life. Presence is a lease on the instance that
//! expires with its holder.

use crate::common;

use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, RUN_TIMEOUT, Run, TestCloud, start_until_ready, state_of, wait_or_kill};

/// Starts a run whose command says `ready` and then waits for the file `go` on the instance.
fn start_waiting(cloud: &TestCloud, project: &Project) -> std::process::Child {
    let command = "echo ready; while [ ! -e go ]; do sleep 0.1; done; echo first > first.txt";
    start_until_ready(project.ssh_ec2(cloud).arg(command))
}

#[test]
fn two_overlapping_runs_share_one_instance_and_the_last_one_out_applies_the_policy() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let first = start_waiting(&cloud, &project);

    let second = Run::of(project.ssh_ec2(&cloud).arg("echo second > second.txt"));
    second.assert_code(0);
    assert!(second.stderr.contains("another run"), "{second}");
    assert_eq!(
        project.read("second.txt").as_deref(),
        Some("second\n"),
        "{second}"
    );
    assert_eq!(cloud.instances().len(), 1, "no second launch\n{second}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Running,
        "not ended under the first run\n{second}"
    );

    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    let first = Run::collect(first);
    first.assert_code(0);
    assert_eq!(
        project.read("first.txt").as_deref(),
        Some("first\n"),
        "{first}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "the last one out terminates\n{first}"
    );
}

#[test]
fn a_killed_clients_lease_expires_and_a_running_job_keeps_the_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let first = start_waiting(&cloud, &project);
    let pid = nix::unistd::Pid::from_raw(first.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_or_kill(first, RUN_TIMEOUT);
    // Its command ends too (one still running would keep the instance: see earlier.rs).
    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    common::wait_until("the killed run's command to end", || {
        cloud.read_remote(&project, "first.txt").is_some()
    });
    // Time passes: its lease is no longer renewed.
    let ours = cloud
        .remote_state_entries(&project, "leases")
        .into_iter()
        .next()
        .expect("the killed run held a lease");
    let long_ago = SystemTime::now() - Duration::from_secs(600);
    for lease in std::fs::read_dir(ours).unwrap().flatten() {
        let file = std::fs::File::options()
            .write(true)
            .open(lease.path())
            .unwrap();
        file.set_modified(long_ago).unwrap();
    }

    // A job keeps the instance whatever the policy, even with no other run.
    let job = "while [ ! -e stop ]; do sleep 0.1; done";
    Run::of(project.ssh_ec2(&cloud).args(["--detach", job])).assert_code(0);
    let second = Run::of(project.ssh_ec2(&cloud).arg("true"));
    second.assert_code(0);
    assert!(second.stderr.contains("still uses it"), "{second}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Running,
        "{second}"
    );

    // Once the job is over, the dead client's lease does not pin the instance.
    std::fs::write(cloud.remote(&project).join("stop"), "").unwrap();
    let finished = Run::of(project.ssh_ec2(&cloud).args(["--finish", "--no-attach"]));
    finished.assert_code(0);
    assert!(!finished.stderr.contains("still uses it"), "{finished}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{finished}"
    );
}
