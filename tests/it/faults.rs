//! Nothing leaks, even when AWS misbehaves or ssh-ec2 is killed: lost answers, throttling,
//! no capacity, eventual consistency, a group still in use. ssh-ec2 talks to moto through the
//! fault-injecting proxy (tests/testbed/faults.py); each test asserts moto's final state, the
//! exit status, and the AWS calls where their number or order matters.

use crate::common;

use std::time::Duration;

use crate::release::helpers_of;
use aws_sdk_ec2::types::InstanceStateName;
use common::{
    Project, Run, TestCloud, assert_nothing_left, start_until_held, state_of, wait_or_kill,
    wait_until,
};
use serde_json::{Value, json};

/// The default VPC's subnets, as (zone, subnet id), by zone.
pub fn default_subnets(cloud: &TestCloud) -> Vec<(String, String)> {
    let found = cloud
        .block_on(
            cloud
                .ec2()
                .describe_subnets()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("default-for-az")
                        .values("true")
                        .build(),
                )
                .send(),
        )
        .unwrap();
    let mut zones: Vec<(String, String)> = found
        .subnets()
        .iter()
        .map(|s| {
            let zone = s.availability_zone().unwrap().to_string();
            (zone, s.subnet_id().unwrap().to_string())
        })
        .collect();
    zones.sort();
    zones
}

fn count(outcomes: &[String], outcome: &str) -> usize {
    outcomes.iter().filter(|o| *o == outcome).count()
}

#[test]
fn every_run_instances_answer_lost_the_instance_is_found_and_used() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(json!([{"action": "RunInstances", "lose": true}]));

    let run = Run::of(project.ssh_ec2(&cloud).arg("echo hello"));
    run.assert_code(0);
    assert_eq!(run.stdout, "hello\n", "{run}");
    let launches = cloud.outcomes("RunInstances");
    assert!(
        launches.len() > 3,
        "retried beyond 3 attempts: {launches:?}"
    );
    assert_eq!(launches[0], "lost (forwarded 200)", "{launches:?}");
    assert!(
        launches[1..].iter().all(|o| o == "lost (replayed)"),
        "the retries carried the same client token: {launches:?}"
    );
    assert_eq!(cloud.instances().len(), 1, "launched once\n{run}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated
    );
    assert_nothing_left(&cloud, &project, &run);
    cloud.assert_no_bed_errors();
}

#[test]
fn killed_right_after_run_instances_the_next_run_adopts_the_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // RunInstances happens, but its answer waits until the rules change.
    cloud.set_faults(json!([{"action": "RunInstances", "hold": true}]));
    let mut child = start_until_held(&cloud, project.ssh_ec2(&cloud).arg("true"), "RunInstances");
    child.kill().unwrap(); // SIGKILL
    wait_or_kill(child, Duration::from_secs(10)).expect("SIGKILL ends it");
    cloud.set_faults(json!([]));
    assert_eq!(cloud.instances_in(InstanceStateName::Running).len(), 1);
    assert!(
        project
            .kept_instance_keys()
            .iter()
            .any(|k| k.starts_with("pending-")),
        "the launch is in the journal: {:?}",
        project.kept_instance_keys()
    );

    let next = Run::of(project.ssh_ec2(&cloud).arg("echo adopted"));
    next.assert_code(0);
    assert_eq!(next.stdout, "adopted\n", "{next}");
    assert!(next.stderr.contains("adopted i-"), "{next}");
    assert_eq!(
        cloud.outcomes("RunInstances"),
        ["held (forwarded 200)"],
        "the next run launched nothing"
    );
    assert_eq!(cloud.instances().len(), 1, "{next}");
    assert_nothing_left(&cloud, &project, &next);
    cloud.assert_no_bed_errors();
}

#[test]
fn throttling_bursts_on_lookups_launch_and_teardown_do_not_fail_the_run() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let burst = |action: &str, times: usize| json!({"action": action, "error": "RequestLimitExceeded", "times": times});
    cloud.set_faults(json!([
        burst("DescribeInstances", 6),
        burst("RunInstances", 6),
        burst("TerminateInstances", 3),
        burst("DeleteSecurityGroup", 3),
    ]));

    let run = Run::of(project.ssh_ec2(&cloud).arg("echo through"));
    run.assert_code(0);
    assert_eq!(run.stdout, "through\n", "{run}");
    for (action, times) in [
        ("DescribeInstances", 6),
        ("RunInstances", 6),
        ("TerminateInstances", 3),
        ("DeleteSecurityGroup", 3),
    ] {
        let outcomes = cloud.outcomes(action);
        assert_eq!(
            outcomes[..=times].last().map(String::as_str),
            Some("forwarded 200"),
            "{action} went through after {times} throttles: {outcomes:?}"
        );
        assert_eq!(count(&outcomes, "error RequestLimitExceeded"), times);
    }
    assert_eq!(cloud.instances().len(), 1, "{run}");
    assert_nothing_left(&cloud, &project, &run);
}

#[test]
fn a_failed_poll_does_not_end_the_wait_and_aws_max_attempts_is_honoured() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(
        json!([{"action": "DescribeInstances", "after": "RunInstances",
                             "error": "RequestLimitExceeded", "times": 3}]),
    );

    // One attempt per request: each throttled poll fails, and the wait goes on.
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("AWS_MAX_ATTEMPTS", "1")
            .arg("true"),
    );
    run.assert_code(0);
    let polls = cloud.outcomes("DescribeInstances");
    assert_eq!(count(&polls, "error RequestLimitExceeded"), 3, "{polls:?}");
    assert_nothing_left(&cloud, &project, &run);
}

#[test]
fn no_capacity_moves_to_another_zone_then_to_the_fallback_types() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let zones = default_subnets(&cloud);
    let no_capacity = |params: serde_json::Value| json!({"action": "RunInstances", "params": params, "error": "InsufficientInstanceCapacity"});
    // Neither where EC2 places it, nor in the first zone.
    cloud.set_faults(json!([
        no_capacity(json!({"SubnetId": null})),
        no_capacity(json!({"SubnetId": zones[0].1})),
    ]));

    let moved = Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    moved.assert_code(0);
    assert_eq!(
        cloud.instances()[0].subnet_id(),
        Some(zones[1].1.as_str()),
        "{moved}"
    );
    assert_eq!(
        moved.stderr.matches("no capacity for g4dn.xlarge").count(),
        2,
        "one line per move\n{moved}"
    );
    assert!(moved.stderr.contains(&zones[1].0), "{moved}");
    assert_eq!(
        cloud.outcomes("RunInstances"),
        [
            "error InsufficientInstanceCapacity",
            "error InsufficientInstanceCapacity",
            "forwarded 200"
        ],
        "no retry in a zone without capacity"
    );
    assert_nothing_left(&cloud, &project, &moved);

    // No g4dn.xlarge anywhere.
    cloud.set_faults(json!([no_capacity(json!({"InstanceType": "g4dn.xlarge"}))]));
    let fallback = Run::of(project.ssh_ec2(&cloud).args([
        "--fallback-types",
        "t3.micro",
        "--no-rsync",
        "true",
    ]));
    fallback.assert_code(0);
    assert!(
        fallback
            .stderr
            .contains("no capacity for g4dn.xlarge in eu-central-1: trying t3.micro"),
        "{fallback}"
    );
    let types: Vec<_> = cloud
        .instances()
        .iter()
        .map(|i| i.instance_type().unwrap().as_str().to_string())
        .collect();
    assert_eq!(types, ["g4dn.xlarge", "t3.micro"], "{fallback}");
    assert_nothing_left(&cloud, &project, &fallback);

    // Nothing anywhere: the run fails, and what the launch made is gone.
    cloud.set_faults(json!([no_capacity(json!({}))]));
    let none = Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    none.assert_code(255);
    assert!(none.stderr.contains("--fallback-types"), "{none}");
    assert_eq!(cloud.instances().len(), 2, "{none}");
    assert_nothing_left(&cloud, &project, &none);
    cloud.assert_no_bed_errors();
}

#[test]
fn not_found_right_after_a_creation_is_not_taken_as_gone() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(json!([
        {"action": "AuthorizeSecurityGroupIngress", "error": "InvalidGroup.NotFound", "times": 2},
        {"action": "DescribeInstances", "after": "RunInstances",
         "error": "InvalidInstanceID.NotFound", "times": 3},
        {"action": "TerminateInstances", "error": "InvalidInstanceID.NotFound", "times": 1},
    ]));

    let run = Run::of(project.ssh_ec2(&cloud).arg("echo visible"));
    run.assert_code(0);
    assert_eq!(run.stdout, "visible\n", "{run}");
    assert_eq!(
        count(&cloud.outcomes("TerminateInstances"), "forwarded 200"),
        1,
        "{run}"
    );
    assert_nothing_left(&cloud, &project, &run);
}

#[test]
fn a_group_still_in_use_four_times_is_deleted_all_the_same() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(
        json!([{"action": "DeleteSecurityGroup", "error": "DependencyViolation",
                             "times": 4}]),
    );

    let run = Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    run.assert_code(0);
    // The run tried once; the helper it left tries until AWS lets go.
    wait_until("the helper to delete the group", || {
        cloud.run_security_groups().is_empty() && helpers_of(&project).is_empty()
    });
    assert_eq!(
        cloud.outcomes("DeleteSecurityGroup"),
        [
            "error DependencyViolation",
            "error DependencyViolation",
            "error DependencyViolation",
            "error DependencyViolation",
            "forwarded 200"
        ]
    );
    assert_nothing_left(&cloud, &project, &run);
}

#[test]
fn quotas_and_refused_rights_fail_at_once_with_the_next_step() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(
        json!([{"action": "RunInstances", "error": "VcpuLimitExceeded",
                             "message": "You have requested more vCPU capacity than allowed"}]),
    );

    let quota = Run::of(project.ssh_ec2(&cloud).arg("true"));
    quota.assert_code(255);
    assert!(
        quota
            .stderr
            .contains("\"Running On-Demand G and VT instances\""),
        "names the quota to raise\n{quota}"
    );
    assert_eq!(cloud.outcomes("RunInstances").len(), 1, "{quota}");
    assert!(cloud.instances().is_empty());
    assert_nothing_left(&cloud, &project, &quota);

    // Not allowed to create the group, nor to decode why.
    let refused = "You are not authorized to perform this operation. Encoded authorization \
                   failure message: ENCODED-REASON";
    cloud.set_faults(json!([
        {"action": "CreateSecurityGroup", "error": "UnauthorizedOperation", "message": refused},
        {"action": "DecodeAuthorizationMessage", "error": "AccessDenied"},
    ]));
    let denied = Run::of(project.ssh_ec2(&cloud).arg("true"));
    denied.assert_code(255);
    assert!(
        denied.stderr.contains("UnauthorizedOperation")
            && denied.stderr.contains("policies/ssh-ec2-user.json")
            && denied
                .stderr
                .contains("aws sts decode-authorization-message --encoded-message ENCODED-REASON"),
        "{denied}"
    );
    assert_eq!(
        count(
            &cloud.outcomes("CreateSecurityGroup"),
            "error UnauthorizedOperation"
        ),
        1,
        "not retried\n{denied}"
    );
    assert_eq!(
        cloud.outcomes("RunInstances").len(),
        1,
        "no launch\n{denied}"
    );
    assert_nothing_left(&cloud, &project, &denied);

    // Not allowed to launch; allowed to decode why.
    let decoded = r#"{"allowed":false,"explicitDeny":true,"context":{"action":"ec2:RunInstances","resource":"arn:aws:ec2:eu-central-1:123456789012:instance/*"}}"#;
    let answer = format!(
        "<DecodeAuthorizationMessageResponse><DecodeAuthorizationMessageResult>\
         <DecodedMessage>{decoded}</DecodedMessage>\
         </DecodeAuthorizationMessageResult></DecodeAuthorizationMessageResponse>"
    );
    cloud.set_faults(json!([
        {"action": "RunInstances", "error": "UnauthorizedOperation", "message": refused},
        {"action": "DecodeAuthorizationMessage", "params": {"EncodedMessage": "ENCODED-REASON"},
         "answer": answer},
    ]));
    let explained = Run::of(project.ssh_ec2(&cloud).arg("true"));
    explained.assert_code(255);
    assert!(
        explained.stderr.contains(
            "AWS refused ec2:RunInstances on arn:aws:ec2:eu-central-1:123456789012:instance/*: \
             a policy denies it explicitly"
        ) && !explained.stderr.contains("ENCODED-REASON"),
        "{explained}"
    );
    assert_eq!(cloud.outcomes("DecodeAuthorizationMessage").len(), 2);
    assert_nothing_left(&cloud, &project, &explained);

    // Not allowed to let this machine in, which is asked while the instance is launched: the
    // instance is ended.
    cloud.set_faults(json!([
        {"action": "AuthorizeSecurityGroupIngress", "error": "UnauthorizedOperation",
         "message": refused},
        {"action": "DecodeAuthorizationMessage", "error": "AccessDenied"},
    ]));
    let shut_out = Run::of(project.ssh_ec2(&cloud).arg("true"));
    shut_out.assert_code(255);
    assert!(
        shut_out.stderr.contains("UnauthorizedOperation")
            && shut_out
                .stderr
                .contains("terminated: it could not be reached"),
        "{shut_out}"
    );
    assert_eq!(
        cloud.outcomes("RunInstances").len(),
        3,
        "launched\n{shut_out}"
    );
    assert_nothing_left(&cloud, &project, &shut_out);
    // Refused again: asked first now, no instance launched for it.
    let again = Run::of(project.ssh_ec2(&cloud).arg("true"));
    again.assert_code(255);
    assert!(again.stderr.contains("UnauthorizedOperation"), "{again}");
    let launched = cloud.outcomes("RunInstances").len();
    assert_eq!(launched, 3, "not launched\n{again}");
    assert_nothing_left(&cloud, &project, &again);
}

#[test]
fn no_capacity_in_the_first_of_subnet_ids_moves_to_the_next() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let subnets: Vec<String> = default_subnets(&cloud)
        .into_iter()
        .take(2)
        .map(|(_, subnet)| subnet)
        .collect();
    project.write(
        ".ssh-ec2.toml",
        &format!("subnet_ids = [\"{}\", \"{}\"]\n", subnets[0], subnets[1]),
    );
    cloud.set_faults(json!([{"action": "RunInstances", "params": {"SubnetId": subnets[0]}, "error": "InsufficientInstanceCapacity"}]));

    let moved = Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    moved.assert_code(0);
    assert_eq!(
        cloud.instances()[0].subnet_id(),
        Some(subnets[1].as_str()),
        "{moved}"
    );
    assert!(
        moved.stderr.contains(&format!(
            "no capacity for g4dn.xlarge in {}: trying {}",
            subnets[0], subnets[1]
        )),
        "{moved}"
    );
    let tried: Vec<Value> = cloud
        .calls("RunInstances")
        .into_iter()
        .map(|call| call["params"]["SubnetId"].clone())
        .collect();
    assert_eq!(
        tried,
        [json!(subnets[0]), json!(subnets[1])],
        "in order, nowhere else"
    );
    assert_nothing_left(&cloud, &project, &moved);

    // A subnet of another VPC: the security group could not serve both.
    let ec2 = cloud.ec2();
    let vpc = cloud
        .block_on(ec2.create_vpc().cidr_block("10.9.0.0/16").send())
        .unwrap();
    let elsewhere = cloud
        .block_on(
            ec2.create_subnet()
                .vpc_id(vpc.vpc().unwrap().vpc_id().unwrap())
                .cidr_block("10.9.1.0/24")
                .send(),
        )
        .unwrap();
    let elsewhere = elsewhere.subnet().unwrap().subnet_id().unwrap();
    project.write(
        ".ssh-ec2.toml",
        &format!("subnet_ids = [\"{}\", \"{elsewhere}\"]\n", subnets[0]),
    );
    let refused = Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    refused.assert_code(255);
    assert!(
        refused.stderr.contains("list subnets of one VPC"),
        "{refused}"
    );
    assert_eq!(
        cloud.instances().len(),
        1,
        "nothing more launched\n{refused}"
    );
    assert_nothing_left(&cloud, &project, &refused);
}
