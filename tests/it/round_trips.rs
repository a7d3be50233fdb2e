//! Round trips to AWS: the lookups before a launch go out together, and each is asked once;
//! counted per action through the proxy.

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
    launching.args(["--fallback-types", "g5.xlarge", "true"]);
    let child = start_until_held(&cloud, &mut launching, "DescribeInstanceTypes");
    let together = ["DescribeImages", "DescribeSubnets", "GetCallerIdentity"];
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
    assert_eq!(
        calls.get("DescribeVpcs"),
        None,
        "the default subnets name their VPC: {calls:?}"
    );

    // Two subnets given: looked up in one request.
    let subnets = crate::faults::default_subnets(&cloud);
    let given = format!("{},{}", subnets[0].1, subnets[1].1);
    let seen = cloud.aws_calls().len();
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
