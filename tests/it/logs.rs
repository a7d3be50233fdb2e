//! Every job's and run's whole output is kept in a log on the instance (`ssh-ec2-logs/`), which
//! comes home with the results; `--finish` without a terminal prints what the job printed, and
//! `--logs` prints a job's log without attaching, from any terminal or a pipe.

use crate::common;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, assert_nothing_left, state_of};

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
    let log = project
        .read("ssh-ec2-logs/run.log")
        .unwrap_or_else(|| panic!("the run's log came home\n{run}"));
    assert!(
        log.contains("to-stdout\n") && log.contains("to-stderr\n"),
        "{log}\n{run}"
    );
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
