//! Round trips to AWS, counted per action through the proxy: the lookups before a launch go
//! out together, each asked once; what AWS said before (a price, a type) is not asked again for
//! a while; a warm run does not ask what it already knows (the rule it set, the tag it wrote).

use crate::common;

use std::collections::BTreeMap;

use common::{Project, Run, TestCloud, assert_nothing_left, start_until_held, wait_until};
use serde_json::json;

/// How many calls of each action the proxy logged since `since` (an index into its log).
fn per_action(cloud: &TestCloud, since: usize) -> BTreeMap<String, usize> {
    let mut counted = BTreeMap::new();
    for call in &cloud.aws_calls()[since..] {
        *counted
            .entry(call["action"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counted
}

#[test]
fn the_lookups_before_a_launch_go_out_together_and_once_each() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // The types' answer waits: what goes out meanwhile did not wait for it.
    cloud.set_faults(json!([{"action": "DescribeInstanceTypes", "hold": true}]));
    let mut launching = project.ssh_ec2(&cloud);
    launching.args(["--fallback-types", "g5.xlarge", "--leave", "true"]);
    let child = start_until_held(&cloud, &mut launching, "DescribeInstanceTypes");
    let together = ["DescribeImages", "DescribeSubnets"];
    wait_until("the other lookups, while the types' answer waits", || {
        together.iter().all(|a| !cloud.calls(a).is_empty()) && cloud.count_events("checkip") == 1
    });
    assert!(cloud.calls("CreateSecurityGroup").is_empty());
    cloud.set_faults(json!([]));
    let run = Run::collect(child);
    run.assert_code(0);
    let calls = per_action(&cloud, 0);
    for action in ["DescribeInstanceTypes", "DescribeImages", "DescribeSubnets"] {
        assert_eq!(
            calls.get(action),
            Some(&1),
            "{action} once for both types: {calls:?}"
        );
    }
    for action in ["DescribeVpcs", "GetCallerIdentity"] {
        assert_eq!(
            calls.get(action),
            None,
            "the default subnets name their VPC and account: {calls:?}"
        );
    }
    let kept = project.home().join(".local/state/ssh-ec2/instances");
    let kept = std::fs::read_dir(&kept)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let record = std::fs::read_to_string(kept.join("launch.json")).unwrap_or_default();
    assert!(
        record.contains("\"account\": \"123456789012\""),
        "the launch records the account all the same: {record}"
    );
    common::end(&cloud, &mut project.ssh_ec2(&cloud));

    // Two subnets given: looked up in one request.
    let subnets = crate::faults::default_subnets(&cloud);
    let given = format!("{},{}", subnets[0].1, subnets[1].1);
    let seen = cloud.aws_calls().len();
    let project = Project::new();
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--subnet-ids", &given, "--no-rsync", "true"]),
    );
    run.assert_code(0);
    let calls = per_action(&cloud, seen);
    assert_eq!(calls.get("DescribeSubnets"), Some(&1), "{calls:?}\n{run}");
    assert_nothing_left(&cloud, &project, &run);
}

#[test]
fn what_a_launch_needs_is_asked_while_the_instance_is_looked_for() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // Every answer held (a timed-out attempt's retry too) until the others have been asked:
    // this machine holds no instance of the directory, so a launch is likely.
    cloud.set_faults(json!([{"action": "DescribeInstances", "hold": true}]));
    let mut running = project.ssh_ec2(&cloud);
    running.arg("true");
    let child = start_until_held(&cloud, &mut running, "DescribeInstances");
    wait_until(
        "checkip and the lookups, while the look for the instance waits",
        || {
            cloud.count_events("checkip") == 1
                && ["DescribeImages", "DescribeSubnets"]
                    .iter()
                    .all(|action| cloud.calls(action).len() == 1)
        },
    );
    cloud.set_faults(json!([]));
    let run = Run::collect(child);
    run.assert_code(0);
    assert_eq!(cloud.count_events("checkip"), 1, "asked once\n{run}");
    assert_nothing_left(&cloud, &project, &run);
}

/// The value of the `ssh-ec2:expires-at` tag of the cloud's only instance.
fn expiry_tag(cloud: &TestCloud) -> Option<String> {
    common::tag(&cloud.instances()[0], "ssh-ec2:expires-at")
}

#[test]
fn a_warm_run_asks_only_what_it_does_not_know() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // Launched letting in the laptop's whole network.
    let cold =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--leave", "--ssh-cidr", "172.31.0.0/16", "true"]),
        );
    cold.assert_code(0);

    // From this machine's own address: the rule changes, without a look at the group.
    let seen = cloud.aws_calls().len();
    let moved = Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"]));
    moved.assert_code(0);
    let calls = per_action(&cloud, seen);
    assert_eq!(
        calls.get("AuthorizeSecurityGroupIngress"),
        Some(&1),
        "{calls:?}"
    );
    assert_eq!(
        calls.get("RevokeSecurityGroupIngress"),
        Some(&1),
        "{calls:?}"
    );
    assert_eq!(
        calls.get("DescribeSecurityGroups"),
        None,
        "{calls:?}\n{moved}"
    );
    let rules: Vec<String> = (cloud.run_security_groups()[0].ip_permissions().iter())
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip().map(str::to_string))
        .collect();
    assert_eq!(rules, [format!("{}/32", cloud.laptop.address)]);

    // Again from there: the tag (within its 10 minutes) and the price are known; the rule is
    // asked for again (it may have been removed since), answered as a duplicate.
    let tag = expiry_tag(&cloud);
    let seen = cloud.aws_calls().len();
    let warm = Run::of(project.ssh_ec2(&cloud).args(["--leave", "echo warm"]));
    warm.assert_code(0);
    assert_eq!(warm.stdout, "warm\n");
    let mut calls = per_action(&cloud, seen);
    let retagged = usize::from(expiry_tag(&cloud) != tag);
    assert_eq!(calls.remove("CreateTags").unwrap_or(0), retagged, "{warm}");
    assert_eq!(
        calls,
        BTreeMap::from([
            ("AuthorizeSecurityGroupIngress".to_string(), 1),
            ("DescribeInstances".to_string(), 1)
        ]),
        "the look for this directory's instance, and its rule\n{warm}"
    );
    assert!(warm.stderr.contains("left running"), "{warm}");
    common::end(&cloud, &mut project.ssh_ec2(&cloud));
}

#[test]
fn a_cold_run_with_what_aws_said_before_kept_makes_nine_calls() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let first = Run::of(project.ssh_ec2(&cloud).arg("true"));
    first.assert_code(0);
    let seen = cloud.aws_calls().len();
    let cold = Run::of(project.ssh_ec2(&cloud).arg("echo cold"));
    cold.assert_code(0);
    assert_eq!(cold.stdout, "cold\n");
    let calls = per_action(&cloud, seen);
    let expected = [
        ("AuthorizeSecurityGroupIngress", 1),
        ("CreateSecurityGroup", 1),
        ("DeleteSecurityGroup", 1),
        ("DescribeImages", 1),
        ("DescribeInstances", 2),
        ("DescribeSubnets", 1),
        ("RunInstances", 1),
        ("TerminateInstances", 1),
    ];
    let expected: BTreeMap<String, usize> = (expected.iter())
        .map(|(a, n)| (a.to_string(), *n))
        .collect();
    assert_eq!(calls, expected, "the price and the type are known\n{cold}");
    assert_eq!(calls.values().sum::<usize>(), 9);
    assert_nothing_left(&cloud, &project, &cold);
}
