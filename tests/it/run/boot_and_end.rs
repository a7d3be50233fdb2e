//! The main run, end to end: launch and terminate around the command. The boot is waited for
//! (or given up on), the host key checked, and terminate leaves nothing behind.

use crate::common;

use aws_sdk_ec2::types::InstanceStateName;
use common::{CloudOptions, Project, Run, TestCloud, instance_id, state_of};

#[test]
fn terminate_leaves_no_instance_security_group_key_pair_or_keys() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let run = Run::of(project.ssh_ec2(&cloud).args(["--terminate", "true"]));
    run.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
    assert!(
        cloud.run_security_groups().is_empty(),
        "the run's security group is deleted\n{run}"
    );
    assert!(
        cloud.key_pair_names().is_empty(),
        "no EC2 key pair is ever made\n{run}"
    );
    assert!(
        project.kept_instance_keys().is_empty(),
        "its local keys are forgotten\n{run}"
    );
    cloud.wait_for_events("sshd-stopped", 1);
}

#[test]
fn waits_for_a_slow_boot_without_fixed_sleeps() {
    let cloud = TestCloud::start_with(CloudOptions {
        boot_delay: Some(3.0),
        ..Default::default()
    });
    let project = Project::new();

    let run = Run::of(project.ssh_ec2(&cloud).arg("echo up"));
    run.assert_code(0);
    assert_eq!(run.stdout, "up\n", "{run}");
}

#[test]
fn a_host_key_other_than_the_injected_one_is_refused_before_anything_is_sent() {
    let cloud = TestCloud::start_with(CloudOptions {
        wrong_host_key: true,
        ..Default::default()
    });
    let project = Project::new();
    project.write("secret.txt", "do not send\n");

    let run = Run::of(project.ssh_ec2(&cloud).arg("cat secret.txt"));
    run.assert_code(255);
    assert!(run.stderr.contains("presented host key SHA256:"), "{run}");
    assert!(run.stderr.contains("refusing to connect"), "{run}");
    assert!(!run.stdout.contains("do not send"));
    let instances = cloud.instances();
    let console = cloud.console(&instance_id(&instances[0]));
    assert!(
        console.contains("Connection from") && !console.contains("Accepted publickey"),
        "it was dialled, and no one logged in: nothing was synced\n{console}\n{run}"
    );
    // Nothing of the user's is on it: the failed run still cleans up.
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
    assert!(cloud.run_security_groups().is_empty(), "{run}");
}

#[test]
fn the_boot_timeout_gives_up_with_a_clear_error_and_cleans_up() {
    let cloud = TestCloud::start_with(CloudOptions {
        boot_delay: Some(60.0),
        ..Default::default()
    });
    let project = Project::new();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--boot-timeout", "2", "true"]),
    );
    run.assert_code(255);
    assert!(run.stderr.contains("before the boot timeout"), "{run}");
    assert!(
        run.stderr.contains("--boot-timeout"),
        "the error says what to change\n{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
    assert!(cloud.run_security_groups().is_empty(), "{run}");
}
