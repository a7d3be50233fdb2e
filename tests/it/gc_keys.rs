//! `--gc --yes` removes an instance's keys (the only way into it) only once it has seen that
//! instance gone where it was launched: other credentials (another account, another region)
//! and an instance AWS does not list yet leave them alone, and the report says why.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{
    Project, Run, TestCloud, assert_nothing_left, instance_id, start_until_held, wait_or_kill,
};
use serde_json::json;

/// An instance launched here and stopped: its results wait on its disk, its keys here.
fn stopped_instance(cloud: &TestCloud, project: &Project) -> String {
    Run::of(project.ssh_ec2(cloud).args(["--stop", "true"])).assert_code(0);
    let id = instance_id(&cloud.instances()[0]);
    assert_eq!(project.kept_instance_keys(), [id.as_str()]);
    id
}

/// `--gc --yes`, which must leave the keys of `id` where they are.
fn gc_keeps_the_keys(project: &Project, command: &mut Command, id: &str) -> Run {
    let gc = Run::of(command.args(["--gc", "--yes"]));
    gc.assert_code(0);
    assert_eq!(project.kept_instance_keys(), [id], "{gc}");
    gc
}

/// Credentials of another AWS account, as moto hands them out for a role assumed there (moto
/// then serves their requests in that account).
fn other_account_credentials(cloud: &TestCloud) -> aws_sdk_sts::types::Credentials {
    let config = aws_sdk_sts::config::Builder::new()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .endpoint_url(&cloud.endpoint)
        .region(aws_config::Region::new(cloud.region.clone()))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    let sts = aws_sdk_sts::Client::from_conf(config);
    let assumed = cloud.block_on(
        sts.assume_role()
            .role_arn("arn:aws:iam::111111111111:role/elsewhere")
            .role_session_name("gc")
            .send(),
    );
    assumed.unwrap().credentials().unwrap().clone()
}

/// ssh-ec2 in `project` with the credentials of another AWS account.
fn in_other_account(cloud: &TestCloud, project: &Project) -> Command {
    let other = other_account_credentials(cloud);
    let mut command = project.ssh_ec2(cloud);
    command
        .env("AWS_ACCESS_KEY_ID", other.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", other.secret_access_key())
        .env("AWS_SESSION_TOKEN", other.session_token());
    command
}

#[test]
fn gc_with_another_account_or_region_leaves_the_keys_of_a_stopped_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let id = stopped_instance(&cloud, &project);

    let gc = gc_keeps_the_keys(&project, &mut in_other_account(&cloud, &project), &id);
    assert!(
        gc.stdout.contains(&format!("left alone: keys of {id}")),
        "{gc}"
    );
    assert!(
        gc.stdout.contains("AWS account 123456789012")
            && gc.stdout.contains("account 111111111111's"),
        "says whose credentials see it\n{gc}"
    );

    let mut other_region = project.ssh_ec2(&cloud);
    other_region.env("AWS_REGION", "us-west-2");
    gc_keeps_the_keys(&project, &mut other_region, &id);

    // With its own credentials and region, the stopped instance comes home and ends.
    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_nothing_left(&cloud, &project, &down);
}

#[test]
fn gc_leaves_the_keys_of_an_instance_aws_does_not_list_yet() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let id = stopped_instance(&cloud, &project);
    // Moments after a launch, AWS may list neither the instance nor its group.
    cloud.set_faults(json!([
        {"action": "DescribeInstances", "answer":
            "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>0</requestId><reservationSet/></DescribeInstancesResponse>"},
        {"action": "DescribeSecurityGroups", "answer":
            "<DescribeSecurityGroupsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>0</requestId><securityGroupInfo/></DescribeSecurityGroupsResponse>"},
    ]));
    let gc = gc_keeps_the_keys(&project, &mut project.ssh_ec2(&cloud), &id);
    assert!(
        gc.stdout.contains(&format!("left alone: keys of {id}"))
            && gc.stdout.contains("may not list"),
        "{gc}"
    );

    cloud.set_faults(json!([]));
    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_nothing_left(&cloud, &project, &down);
}

#[test]
fn gc_with_another_account_leaves_an_unfinished_launch_to_that_account() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // A run killed while its launch's security group was being made: the launch is recorded.
    cloud.set_faults(json!([{"action": "CreateSecurityGroup", "hold": true}]));
    let mut run = project.ssh_ec2(&cloud);
    let mut child = start_until_held(&cloud, run.arg("true"), "CreateSecurityGroup");
    child.kill().unwrap();
    wait_or_kill(child, Duration::from_secs(10)).expect("SIGKILL ends it");
    cloud.set_faults(json!([]));
    let pending = project.kept_instance_keys();
    assert!(pending[0].starts_with("pending-"), "{pending:?}");

    let gc = Run::of(in_other_account(&cloud, &project).args(["--gc", "--yes"]));
    gc.assert_code(0);
    assert_eq!(project.kept_instance_keys(), pending, "{gc}");
    assert!(
        gc.stdout
            .contains("made with the credentials of AWS account 123456789012"),
        "{gc}"
    );

    // Its own account's --gc settles it: the group goes, and the record with it.
    let own = Run::of(project.ssh_ec2(&cloud).args(["--gc", "--yes"]));
    own.assert_code(0);
    assert_nothing_left(&cloud, &project, &own);
}
