//! The prompt comes back once the results are home: AWS takes its time to terminate (the proxy
//! shows the instances `shutting-down` for a while, and refuses to delete their groups
//! meanwhile), and a helper deletes the groups once it lets go. Nothing is left all the same;
//! what the helper could not delete, `--gc` does.

use crate::common;

use std::path::{Path, PathBuf};

use common::{Project, Run, TestCloud, assert_nothing_left, wait_until};
use serde_json::json;

/// How long terminated instances show `shutting-down` here: far longer than a run takes to end
/// once it has terminated them, even on a loaded machine.
const SHUTTING_DOWN: u64 = 20;

/// The helpers (`ssh-ec2 --release-groups`) that runs in `project` left, still running.
pub fn helpers_of(project: &Project) -> Vec<PathBuf> {
    let dir = project.path().canonicalize().unwrap();
    (std::fs::read_dir("/proc").unwrap().flatten())
        .map(|entry| entry.path())
        .filter(|proc| {
            let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
            let helper = (cmdline.split(|&b| b == 0)).any(|arg| arg == b"--release-groups");
            helper && std::fs::read_link(proc.join("cwd")).is_ok_and(|cwd| cwd == dir)
        })
        .collect()
}

/// The actions of the AWS calls after the first TerminateInstances, each once, in order.
fn actions_after_terminate(cloud: &TestCloud) -> Vec<String> {
    let actions: Vec<String> = (cloud.aws_calls().iter())
        .map(|call| call["action"].as_str().unwrap().to_string())
        .collect();
    let at = (actions.iter().position(|a| a == "TerminateInstances"))
        .expect("the run terminated its instance");
    let mut after = actions[at + 1..].to_vec();
    after.sort();
    after.dedup();
    after
}

/// Waits until AWS has let go and the helper deleted everything, and has ended itself.
fn wait_for_the_helper(cloud: &TestCloud, project: &Project, run: &Run) {
    wait_until("the helper to delete what AWS held", || {
        cloud.run_security_groups().is_empty() && cloud.placement_groups().is_empty()
    });
    wait_until("the helper to end", || helpers_of(project).is_empty());
    assert_nothing_left(cloud, project, run);
}

#[test]
fn the_prompt_comes_back_while_aws_still_holds_the_group_which_goes_later() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(json!([{"action": "TerminateInstances", "shutting_down": SHUTTING_DOWN}]));

    let run = Run::of(project.ssh_ec2(&cloud).arg("echo done > result.txt"));
    run.assert_code(0);
    assert_eq!(project.read("result.txt").as_deref(), Some("done\n"));
    // Back while AWS still holds the group: nothing waited for `terminated`, only deletions
    // were tried (then by the helper, which goes on).
    assert_eq!(
        actions_after_terminate(&cloud),
        ["DeleteSecurityGroup"],
        "{run}"
    );
    let deletes = cloud.outcomes("DeleteSecurityGroup");
    assert!(
        deletes.iter().all(|o| o == "error DependencyViolation"),
        "{deletes:?}\n{run}"
    );
    assert_eq!(cloud.run_security_groups().len(), 1, "{run}");
    assert!(
        run.stderr
            .contains("deleted in the background once AWS lets go"),
        "{run}"
    );
    assert!(run.stderr.contains("terminated"), "{run}");
    assert_eq!(helpers_of(&project).len(), 1, "the helper runs\n{run}");

    wait_for_the_helper(&cloud, &project, &run);
    let deletes = cloud.outcomes("DeleteSecurityGroup");
    assert_eq!(deletes.first().unwrap(), "error DependencyViolation");
    assert_eq!(deletes.last().unwrap(), "forwarded 200", "{deletes:?}");
    assert!(
        !actions_after_terminate(&cloud).contains(&"DescribeInstances".to_string()),
        "the helper only tries the deletions"
    );
}

#[test]
fn a_cluster_s_groups_and_placement_group_go_once_aws_lets_go() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(json!([{"action": "TerminateInstances", "shutting_down": SHUTTING_DOWN}]));

    let run = Run::of(project.ssh_ec2(&cloud).args(["--nodes", "2", "true"]));
    run.assert_code(0);
    // Before the test's own look at the placement groups, which goes through the proxy.
    assert_eq!(
        actions_after_terminate(&cloud),
        ["DeletePlacementGroup", "DeleteSecurityGroup"],
        "only deletions were tried\n{run}"
    );
    assert_eq!(
        cloud.run_security_groups().len(),
        2,
        "its SSH group and its own, still held\n{run}"
    );
    assert_eq!(cloud.placement_groups().len(), 1, "{run}");
    assert!(cloud.live_instances().is_empty(), "both terminated\n{run}");

    wait_for_the_helper(&cloud, &project, &run);
}

/// The state directory's file `name`.
fn state_file(project: &Project, name: &str) -> PathBuf {
    project.home().join(".local/state/ssh-ec2").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn what_the_helper_cannot_delete_is_said_in_the_state_dir_and_gc_deletes_it() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(json!([
        {"action": "DeleteSecurityGroup", "error": "DependencyViolation", "times": 1},
        {"action": "DeleteSecurityGroup", "error": "UnauthorizedOperation"},
    ]));

    let run = Run::of(project.ssh_ec2(&cloud).arg("true"));
    run.assert_code(0);
    let log = state_file(&project, "release.log");
    wait_until("the helper to give up", || {
        read(&log).contains("--gc --yes")
    });
    wait_until("the helper to end", || helpers_of(&project).is_empty());
    let said = read(&log);
    let group = cloud.run_security_groups()[0]
        .group_id()
        .unwrap()
        .to_string();
    assert!(said.contains(&group), "{said}");
    assert!(said.contains("UnauthorizedOperation"), "{said}");

    cloud.set_faults(json!([]));
    let gc = Run::of(project.ssh_ec2(&cloud).args(["--gc", "--yes"]));
    gc.assert_code(0);
    assert!(gc.stderr.contains(&group), "{gc}");
    assert_nothing_left(&cloud, &project, &gc);
}
