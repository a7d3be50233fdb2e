//! Your instances at a glance and their clean-up: `--list`, `--down`, `--gc`; and a signal
//! while a stopped instance starts.

use crate::common;

use std::time::Duration;

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use common::{
    Project, Run, TestCloud, assert_nothing_left, instance_id, signal, start_until_held,
    start_until_ready, state_of, wait_or_kill,
};
use serde_json::{Value, json};

#[test]
fn list_json_names_the_instance_its_directory_and_its_job() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);

    let listed = Run::of(project.ssh_ec2(&cloud).args(["--list", "--json"]));
    listed.assert_code(0);
    let rows: Value = serde_json::from_str(&listed.stdout).expect("JSON on stdout");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    let row = &rows[0];
    assert_eq!(row["id"], instance_id(&cloud.instances()[0]), "{listed}");
    let dir = project.path().canonicalize().unwrap();
    assert_eq!(row["directory"], dir.to_str().unwrap(), "{listed}");
    assert_eq!(row["state"], "running", "{listed}");
    assert_eq!(row["market"], "on-demand", "{listed}");
    assert_eq!(row["region"], cloud.region.as_str(), "{listed}");
    assert_eq!(row["keys_here"], true, "{listed}");
    assert_eq!(row["job"], "none", "asked over SSH\n{listed}");
    // Its life so far, and what it has cost (g4dn.xlarge on demand, moto's price).
    assert!(row["running_for_seconds"].as_u64().is_some(), "{listed}");
    assert!(
        row["cost_usd"].as_f64().is_some_and(|usd| usd >= 0.0),
        "{listed}"
    );
    let text = Run::of(project.ssh_ec2(&cloud).arg("--list"));
    assert!(text.stdout.contains("COST SO FAR"), "{text}");
    assert!(row["launched"].as_str().is_some(), "{listed}");

    // A table on a terminal (or anywhere without --json).
    let table = Run::of(project.ssh_ec2(&cloud).arg("--list"));
    table.assert_code(0);
    assert!(table.stdout.starts_with("INSTANCE"), "{table}");
    assert!(table.stdout.contains(dir.to_str().unwrap()), "{table}");

    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_nothing_left(&cloud, &project, &down);
    let empty = Run::of(project.ssh_ec2(&cloud).args(["--list", "--json"]));
    empty.assert_code(0);
    assert_eq!(empty.stdout.trim(), "[]", "{empty}");
}

#[test]
fn down_after_a_sigkilled_run_pulls_then_terminates_and_again_is_a_no_op() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let mut child = start_until_ready(project.ssh_ec2(&cloud).arg(
        "echo result > out.txt; echo ready; while [ ! -e go ]; do sleep 0.1; done; touch ended",
    ));
    child.kill().unwrap(); // SIGKILL: no end of life, no pull
    wait_or_kill(child, Duration::from_secs(10)).expect("SIGKILL ends it");
    // Its command ends by itself (while one runs, --down leaves it alone: see earlier.rs).
    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    common::wait_until("the command to end", || {
        cloud.read_remote(&project, "ended").is_some()
    });
    assert_eq!(project.read("out.txt"), None, "not pulled yet");
    assert_eq!(cloud.instances_in(InstanceStateName::Running).len(), 1);

    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_eq!(
        project.read("out.txt").as_deref(),
        Some("result\n"),
        "{down}"
    );
    // out.txt, go, ended, and the command's log.
    assert!(down.stderr.contains("pulled 4 files ("), "{down}");
    assert!(down.stderr.contains("terminated"), "{down}");
    assert_nothing_left(&cloud, &project, &down);

    let again = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    again.assert_code(0);
    assert!(again.stderr.contains("no instance"), "{again}");
    assert_eq!(cloud.instances().len(), 1, "nothing launched\n{again}");
    assert_nothing_left(&cloud, &project, &again);
    cloud.assert_no_bed_errors();
}

#[test]
fn down_without_an_instance_says_so_and_launches_nothing() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert!(down.stderr.contains("no instance"), "{down}");
    assert!(cloud.instances().is_empty(), "{down}");
    assert_nothing_left(&cloud, &project, &down);
}

#[test]
fn gc_finds_then_removes_orphaned_groups_launches_instances_and_local_state() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let other = Project::new();
    let (first, keyless) = leave_leftovers(&cloud, &project, &other);
    // `other` has its own HOME: gc there sees only its own state; the project's, here.
    assert_eq!(cloud.run_security_groups().len(), 3);

    let shown = Run::of(project.ssh_ec2(&cloud).arg("--gc"));
    shown.assert_code(0);
    assert!(
        shown.stdout.contains("no instance uses it"),
        "the first instance's group\n{shown}"
    );
    assert!(
        shown.stdout.contains("unfinished"),
        "the killed launch\n{shown}"
    );
    assert!(
        shown
            .stdout
            .contains(&format!("keys of {first}, which no longer exists")),
        "{shown}"
    );
    assert!(shown.stderr.contains("--gc --yes"), "{shown}");
    assert_eq!(cloud.run_security_groups().len(), 3, "only shown\n{shown}");

    let removed = Run::of(project.ssh_ec2(&cloud).args(["--gc", "--yes"]));
    removed.assert_code(0);
    assert!(
        project.kept_instance_keys().is_empty(),
        "{:?}\n{removed}",
        project.kept_instance_keys()
    );
    let again = Run::of(project.ssh_ec2(&cloud).args(["--gc", "--yes"]));
    again.assert_code(0);
    assert!(again.stderr.contains("nothing to clean up"), "{again}");

    // From the other machine's state: the instance whose keys are gone.
    let shown = Run::of(other.ssh_ec2(&cloud).arg("--gc"));
    shown.assert_code(0);
    assert!(
        shown
            .stdout
            .contains(&format!("instance {keyless} ({}, running)", cloud.region)),
        "{shown}"
    );
    assert!(shown.stdout.contains("its keys are gone"), "{shown}");
    let removed = Run::of(other.ssh_ec2(&cloud).args(["--gc", "--yes"]));
    removed.assert_code(0);
    assert_nothing_left(&cloud, &other, &removed);
    assert_nothing_left(&cloud, &project, &removed);
    cloud.assert_no_bed_errors();
}

/// Leaves what --gc finds: an instance of `project` ended behind ssh-ec2's back (its group and
/// keys stay), a launch of it killed with no instance, and an instance whose keys `other`
/// lost. Returns the ended instance and the keyless one.
fn leave_leftovers(cloud: &TestCloud, project: &Project, other: &Project) -> (String, String) {
    // An instance ended behind ssh-ec2's back: its group and keys stay.
    Run::of(project.ssh_ec2(cloud).args(["--leave", "true"])).assert_code(0);
    let first = instance_id(&cloud.instances()[0]);
    cloud
        .block_on(
            cloud
                .ec2()
                .terminate_instances()
                .instance_ids(&first)
                .send(),
        )
        .unwrap();
    cloud.wait_for_events("sshd-stopped", 1);
    // A run killed while its security group was being created: a launch with no instance.
    cloud.set_faults(json!([{"action": "CreateSecurityGroup", "hold": true}]));
    let mut child = start_until_held(
        cloud,
        project.ssh_ec2(cloud).arg("true"),
        "CreateSecurityGroup",
    );
    child.kill().unwrap();
    wait_or_kill(child, Duration::from_secs(10)).expect("SIGKILL ends it");
    cloud.set_faults(json!([]));
    // An instance whose keys this machine lost.
    Run::of(other.ssh_ec2(cloud).args(["--leave", "true"])).assert_code(0);
    let keyless = cloud
        .instances_in(InstanceStateName::Running)
        .iter()
        .map(instance_id)
        .next()
        .unwrap();
    std::fs::remove_dir_all(
        other
            .home()
            .join(".local/state/ssh-ec2/instances")
            .join(&keyless),
    )
    .unwrap();
    (first, keyless)
}

#[test]
fn a_signal_while_a_stopped_instance_starts_ends_the_wait_and_stops_it_again() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--stop", "true"])).assert_code(0);
    cloud.wait_for_events("sshd-stopped", 1);

    // StartInstances happens, but its answer never comes while the rule holds.
    cloud.set_faults(json!([{"action": "StartInstances", "hold": true}]));
    let child = start_until_held(
        &cloud,
        project.ssh_ec2(&cloud).arg("true"),
        "StartInstances",
    );
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let run = Run::collect(child);
    run.assert_code(130);
    assert!(run.stderr.contains("stopped"), "{run}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Stopped,
        "stopped again, as it was found\n{run}"
    );
    cloud.set_faults(json!([]));

    // --down starts it, brings its results home, then ends it.
    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert!(down.stderr.contains("pulled "), "{down}");
    assert_nothing_left(&cloud, &project, &down);
}

#[test]
fn a_terminate_that_fails_after_ctrl_c_exits_255_naming_the_instance_and_the_command() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = start_until_ready(project.ssh_ec2(&cloud).arg("echo ready; sleep 60"));
    let id = instance_id(&cloud.instances()[0]);
    cloud.set_faults(json!([{"action": "TerminateInstances", "error": "UnauthorizedOperation"}]));
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let run = Run::collect(child);
    run.assert_code(255);
    assert!(
        run.stderr
            .contains(&format!("aws ec2 terminate-instances --instance-ids {id}")),
        "{run}"
    );
    assert_eq!(cloud.instances_in(InstanceStateName::Running).len(), 1);

    cloud.set_faults(json!([]));
    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_nothing_left(&cloud, &project, &down);
}

/// Sets the instance's `ssh-ec2:expires-at` in the past.
fn expire(cloud: &TestCloud, id: &str) {
    let tag = aws_sdk_ec2::types::Tag::builder()
        .key("ssh-ec2:expires-at")
        .value("2020-01-01T00:00:00Z")
        .build();
    cloud
        .block_on(cloud.ec2().create_tags().resources(id).tags(tag).send())
        .unwrap();
}

#[test]
fn an_expired_instance_is_listed_with_its_expiry_and_ended_by_gc() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let id = instance_id(&cloud.instances()[0]);
    expire(&cloud, &id);

    let listed = Run::of(project.ssh_ec2(&cloud).args(["--list", "--json"]));
    listed.assert_code(0);
    let rows: Value = serde_json::from_str(&listed.stdout).expect("JSON on stdout");
    assert_eq!(rows[0]["expires_at"], "2020-01-01T00:00:00Z", "{listed}");

    let shown = Run::of(project.ssh_ec2(&cloud).arg("--gc"));
    shown.assert_code(0);
    assert!(
        shown.stdout.contains(&format!("instance {id}")) && shown.stdout.contains("expiry passed"),
        "{shown}"
    );
    assert!(
        shown
            .stdout
            .contains("its results come home to its directory first"),
        "{shown}"
    );
    assert_eq!(cloud.instances_in(InstanceStateName::Running).len(), 1);
    // A result only the instance has: --gc --yes brings it home before it ends the instance,
    // as --down in its directory does.
    std::fs::write(cloud.remote(&project).join("late.txt"), "only there\n").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let removed = Run::of(
        project
            .ssh_ec2(&cloud)
            .current_dir(elsewhere.path())
            .args(["--gc", "--yes"]),
    );
    removed.assert_code(0);
    assert_eq!(
        project.read("late.txt").as_deref(),
        Some("only there\n"),
        "{removed}"
    );
    assert!(
        removed.stderr.contains("pulled 1 file (11 bytes)"),
        "{removed}"
    );
    assert_nothing_left(&cloud, &project, &removed);

    // Its directory gone from this machine: nothing to bring its results home to.
    let gone = Project::new();
    Run::of(gone.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let id = instance_id(&cloud.instances_in(InstanceStateName::Running)[0]);
    expire(&cloud, &id);
    std::fs::remove_dir_all(gone.path()).unwrap();
    let shown = Run::of(
        gone.ssh_ec2(&cloud)
            .current_dir(elsewhere.path())
            .arg("--gc"),
    );
    shown.assert_code(0);
    assert!(
        shown
            .stdout
            .contains("its directory is gone from this machine"),
        "{shown}"
    );
    let removed = Run::of(
        gone.ssh_ec2(&cloud)
            .current_dir(elsewhere.path())
            .args(["--gc", "--yes"]),
    );
    removed.assert_code(0);
    assert!(
        cloud.instances_in(InstanceStateName::Running).is_empty(),
        "{removed}"
    );
}

#[test]
fn down_leaves_a_running_job_alone_and_list_shows_it() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--detach", "sleep 120"])).assert_code(0);

    let listed = Run::of(project.ssh_ec2(&cloud).args(["--list", "--json"]));
    listed.assert_code(0);
    let rows: Value = serde_json::from_str(&listed.stdout).expect("JSON on stdout");
    assert_eq!(rows[0]["job"], "running (tmux)", "{listed}");

    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(255);
    assert!(down.stderr.contains("still runs"), "{down}");
    assert!(down.stderr.contains("--finish"), "{down}");
    assert_eq!(
        cloud.instances_in(InstanceStateName::Running).len(),
        1,
        "left as it is\n{down}"
    );

    // Ended behind ssh-ec2's back: --gc removes its group and keys.
    let id = instance_id(&cloud.instances()[0]);
    cloud
        .block_on(cloud.ec2().terminate_instances().instance_ids(&id).send())
        .unwrap();
    let removed = Run::of(project.ssh_ec2(&cloud).args(["--gc", "--yes"]));
    removed.assert_code(0);
    assert_nothing_left(&cloud, &project, &removed);
}

#[test]
fn all_regions_lists_and_cleans_up_instances_beyond_the_current_region() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let here = cloud.instances()[0].clone();
    // The same owner, machine and directory in another region, its keys not on this machine:
    // as left by a run there whose state was lost.
    let elsewhere = "us-west-2";
    let there = cloud.ec2_in(elsewhere);
    let far = launch_like(&cloud, &there, &here);

    let regional = Run::of(project.ssh_ec2(&cloud).args(["--list", "--json"]));
    regional.assert_code(0);
    let rows: Value = serde_json::from_str(&regional.stdout).expect("JSON on stdout");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{regional}");
    let everywhere = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--list", "--json", "--all-regions"]),
    );
    everywhere.assert_code(0);
    let rows: Value = serde_json::from_str(&everywhere.stdout).expect("JSON on stdout");
    let regions: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["id"].as_str().unwrap(), row["region"].as_str().unwrap()))
        .collect();
    assert!(
        regions.contains(&(instance_id(&here).as_str(), cloud.region.as_str())),
        "{everywhere}"
    );
    assert!(regions.contains(&(far.as_str(), elsewhere)), "{everywhere}");

    let shown = Run::of(project.ssh_ec2(&cloud).args(["--gc", "--all-regions"]));
    shown.assert_code(0);
    assert!(
        shown.stdout.contains(&format!(
            "instance {far} ({elsewhere}, running) of {}: its keys are gone",
            project.path().canonicalize().unwrap().display()
        )),
        "{shown}"
    );
    let removed = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--gc", "--yes", "--all-regions"]),
    );
    removed.assert_code(0);
    let far_state = cloud
        .block_on(there.describe_instances().instance_ids(&far).send())
        .unwrap();
    assert_eq!(
        state_of(&far_state.reservations()[0].instances()[0]),
        InstanceStateName::Terminated,
        "{removed}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Running,
        "this machine's instance with its keys is left alone\n{removed}"
    );

    assert_a_denied_region_is_named(&cloud, &project);

    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_nothing_left(&cloud, &project, &down);
}

/// Launches, with `there` (a client of another region), an instance tagged as `here` is.
fn launch_like(cloud: &TestCloud, there: &aws_sdk_ec2::Client, here: &Instance) -> String {
    let tags: Vec<_> = here
        .tags()
        .iter()
        .filter(|t| t.key().is_some_and(|k| !k.starts_with("aws:")))
        .cloned()
        .collect();
    let launched = cloud
        .block_on(
            there
                .run_instances()
                .image_id(here.image_id().unwrap())
                .instance_type(here.instance_type().unwrap().clone())
                .min_count(1)
                .max_count(1)
                .tag_specifications(
                    aws_sdk_ec2::types::TagSpecification::builder()
                        .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                        .set_tags(Some(tags))
                        .build(),
                )
                .send(),
        )
        .unwrap();
    launched.instances()[0].instance_id().unwrap().to_string()
}

/// A region the account may not look in (an organization's policy, say): the others are
/// still listed and cleaned, and the run fails naming it.
fn assert_a_denied_region_is_named(cloud: &TestCloud, project: &Project) {
    let denied = "ap-south-1";
    cloud.set_faults(json!([
        {"action": "DescribeInstances", "region": denied, "error": "UnauthorizedOperation"},
    ]));
    let partial = Run::of(
        project
            .ssh_ec2(cloud)
            .args(["--list", "--json", "--all-regions"]),
    );
    partial.assert_code(255);
    let rows: Value = serde_json::from_str(&partial.stdout).expect("JSON on stdout");
    assert_eq!(rows.as_array().unwrap().len(), 1, "{partial}");
    assert!(
        partial.stderr.contains(&format!("skipping {denied}"))
            && partial
                .stderr
                .contains(&format!("could not look in {denied}")),
        "{partial}"
    );
    let gc = Run::of(project.ssh_ec2(cloud).args(["--gc", "--all-regions"]));
    gc.assert_code(255);
    assert!(
        gc.stderr.contains(&format!("could not look in {denied}")),
        "{gc}"
    );
    cloud.set_faults(json!([]));
}

#[test]
fn gc_after_ordinary_runs_finds_nothing_to_clean_up() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).arg("true")).assert_code(0);
    Run::of(project.ssh_ec2(&cloud).arg("true")).assert_code(0);
    let gc = Run::of(project.ssh_ec2(&cloud).arg("--gc"));
    gc.assert_code(0);
    assert_eq!(gc.stdout, "", "{gc}");
    assert!(gc.stderr.contains("nothing to clean up"), "{gc}");
}
