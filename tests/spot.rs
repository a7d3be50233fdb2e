//! Spot instances: `--spot` launches a one-time spot instance, falls back to on-demand (and says
//! so) when there is no spot capacity, unless `--spot-only`; `--stop` with `--spot` is refused.

mod common;

use aws_sdk_ec2::types::{InstanceLifecycleType, InstanceStateName};
use common::{CloudOptions, Project, Run, TestCloud, state_of};
use serde_json::{Value, json};

fn cloud_with_faults() -> TestCloud {
    TestCloud::start_with(CloudOptions {
        faults: true,
        ..Default::default()
    })
}

/// The parameters of each RunInstances ssh-ec2 sent, with what became of it.
fn launches(cloud: &TestCloud) -> Vec<Value> {
    cloud
        .aws_calls()
        .into_iter()
        .filter(|call| call["action"] == "RunInstances")
        .collect()
}

/// No spot capacity anywhere: every spot RunInstances is answered so.
fn no_spot_capacity() -> Value {
    json!([{
        "action": "RunInstances",
        "params": {"InstanceMarketOptions.MarketType": "spot"},
        "error": "InsufficientInstanceCapacity",
    }])
}

fn assert_nothing_left(cloud: &TestCloud, run: &Run) {
    for instance in cloud.instances() {
        assert_eq!(state_of(&instance), InstanceStateName::Terminated, "{run}");
    }
    assert!(cloud.run_security_groups().is_empty(), "{run}");
    cloud.assert_no_bed_errors();
}

#[test]
fn spot_gives_a_one_time_spot_instance_at_most_at_the_max_price() {
    let cloud = cloud_with_faults();
    let project = Project::new();
    let run =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--spot", "--max-price", "0.42", "echo on spot"]),
        );
    run.assert_code(0);
    assert_eq!(run.stdout, "on spot\n", "{run}");
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "{run}");
    assert_eq!(
        instances[0].instance_lifecycle(),
        Some(&InstanceLifecycleType::Spot),
        "{run}"
    );
    let sent = launches(&cloud);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let params = &sent[0]["params"];
    assert_eq!(
        params["InstanceMarketOptions.MarketType"], "spot",
        "{params}"
    );
    assert_eq!(
        params["InstanceMarketOptions.SpotOptions.SpotInstanceType"],
        "one-time"
    );
    assert_eq!(params["InstanceMarketOptions.SpotOptions.MaxPrice"], "0.42");
    assert_eq!(
        params["InstanceInitiatedShutdownBehavior"], "terminate",
        "AWS takes nothing else for a one-time spot instance"
    );
    assert!(
        run.stderr.contains(", spot; terminated, not stopped"),
        "{run}"
    );
    assert_nothing_left(&cloud, &run);
}

#[test]
fn spot_without_spot_capacity_launches_on_demand_and_says_so() {
    let cloud = cloud_with_faults();
    let project = Project::new();
    cloud.set_faults(no_spot_capacity());
    let run = Run::of(project.ssh_ec2(&cloud).args(["--spot", "echo anyway"]));
    run.assert_code(0);
    assert_eq!(run.stdout, "anyway\n", "{run}");
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("on-demand instead"))
        .collect();
    assert_eq!(said.len(), 1, "said once, on one line\n{run}");
    assert!(said[0].contains("no spot capacity"), "{run}");
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "{run}");
    assert_eq!(instances[0].instance_lifecycle(), None, "on-demand\n{run}");
    let sent = launches(&cloud);
    let (last, spot) = sent.split_last().unwrap();
    assert!(
        spot.iter().all(
            |call| call["outcome"] == "error InsufficientInstanceCapacity"
                && call["params"]["InstanceMarketOptions.MarketType"] == "spot"
        ),
        "spot first, in every zone: {sent:?}"
    );
    assert!(!spot.is_empty());
    assert_eq!(
        last["params"]["InstanceMarketOptions.MarketType"],
        Value::Null
    );
    assert_eq!(last["params"]["InstanceInitiatedShutdownBehavior"], "stop");
    assert_nothing_left(&cloud, &run);
}

#[test]
fn spot_only_without_spot_capacity_fails_and_leaves_nothing() {
    let cloud = cloud_with_faults();
    let project = Project::new();
    cloud.set_faults(no_spot_capacity());
    let run = Run::of(project.ssh_ec2(&cloud).args(["--spot-only", "true"]));
    run.assert_code(255);
    assert!(run.stderr.contains("drop --spot-only"), "{run}");
    assert!(!run.stderr.contains("on-demand instead"), "{run}");
    assert!(cloud.instances().is_empty(), "{run}");
    assert!(
        launches(&cloud)
            .iter()
            .all(|call| call["params"]["InstanceMarketOptions.MarketType"] == "spot"),
        "never on-demand"
    );
    assert!(cloud.key_pair_names().is_empty(), "{run}");
    assert_nothing_left(&cloud, &run);
    assert!(
        project.kept_instance_keys().is_empty(),
        "no launch left in the journal"
    );
}

#[test]
fn stop_with_spot_is_refused_before_any_aws_call() {
    let cloud = cloud_with_faults();
    let project = Project::new();
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("SSH_EC2_SPOT", "true")
            .args(["--stop", "true"]),
    );
    run.assert_code(255);
    assert!(
        run.stderr
            .contains("AWS cannot stop a one-time spot instance"),
        "{run}"
    );
    assert!(cloud.aws_calls().is_empty(), "{run}");
    let priced = Run::of(project.ssh_ec2(&cloud).args(["--max-price", "0.3", "true"]));
    priced.assert_code(255);
    assert!(priced.stderr.contains("add --spot"), "{priced}");
    assert!(cloud.aws_calls().is_empty(), "{priced}");
}
