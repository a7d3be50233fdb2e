//! `--security-group` for accounts whose users may not create security groups: an admin-made
//! group, used as it is.

use crate::common;

use aws_sdk_ec2::types::{IpPermission, IpRange};
use common::{Project, Run, TestCloud};
use serde_json::Value;

use super::{
    USER_POLICY, User, as_moto_checks_it, as_user, assert_refused, create_user, iam_cloud, without,
};

/// The admin's group: its id, and its rules as text (to see that they never change).
fn admin_group(cloud: &TestCloud, name: &str) -> Option<(String, String)> {
    let found = cloud
        .block_on(
            cloud
                .ec2()
                .describe_security_groups()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("group-name")
                        .values(name)
                        .build(),
                )
                .send(),
        )
        .unwrap();
    let group = found.security_groups().first()?;
    Some((
        group.group_id().unwrap().to_string(),
        format!("{:?}", group.ip_permissions()),
    ))
}

#[test]
fn an_admin_made_security_group_is_used_as_it_is_and_outlives_the_instance() {
    let cloud = iam_cloud();
    let project = Project::new();
    let group_id = make_admin_group(&cloud, "team-ssh");
    let (_, rules) = admin_group(&cloud, "team-ssh").unwrap();
    let user = create_user(&cloud, "locked-down", &locked_down_policy());
    let run_as_user = |args: &[&str]| Run::of(as_user(&project, &cloud, &user).args(args));

    let own_group = run_as_user(&["true"]);
    assert_refused(&own_group, "ec2:CreateSecurityGroup");

    // By name, from the environment (the original's AWS_SECURITY_GROUP); stopped.
    let stop = Run::of(
        as_user(&project, &cloud, &user)
            .env("AWS_SECURITY_GROUP", "team-ssh")
            .args(["--stop", "echo", "one"]),
    );
    stop.assert_code(0);
    assert_eq!(stop.stdout, "one\n", "{stop}");
    let instances = cloud.live_instances();
    assert_eq!(instances.len(), 1, "{stop}");
    let groups: Vec<_> = instances[0]
        .security_groups()
        .iter()
        .map(|g| g.group_id().unwrap())
        .collect();
    assert_eq!(groups, [group_id.as_str()], "{stop}");
    assert!(
        !instances[0]
            .tags()
            .iter()
            .any(|t| t.key() == Some("ssh-ec2:security-group")),
        "the group is not the instance's own: {:?}",
        instances[0].tags()
    );

    // Reused (nothing to say about the group), then terminated: the group stays as it was.
    let reuse = run_as_user(&["echo", "two"]);
    reuse.assert_code(0);
    assert_eq!(reuse.stdout, "two\n", "{reuse}");
    assert!(cloud.live_instances().is_empty(), "{reuse}");
    assert_eq!(
        admin_group(&cloud, "team-ssh"),
        Some((group_id.clone(), rules.clone())),
        "the admin's group survives unchanged\n{reuse}"
    );

    // By id, with the flag; terminated at once.
    let by_id = run_as_user(&["--security-group", &group_id, "echo", "three"]);
    by_id.assert_code(0);
    assert_eq!(by_id.stdout, "three\n", "{by_id}");
    assert!(cloud.live_instances().is_empty(), "{by_id}");
    assert_eq!(
        admin_group(&cloud, "team-ssh"),
        Some((group_id.clone(), rules.clone())),
        "{by_id}"
    );

    dry_run_shows_the_admin_group(&cloud, &project, &user, &group_id);

    let unknown = run_as_user(&["--security-group", "no-such-group", "true"]);
    assert_eq!(unknown.code, Some(255), "{unknown}");
    assert!(
        unknown
            .stderr
            .contains("there is no security group no-such-group in"),
        "{unknown}"
    );
    assert_eq!(cloud.instances().len(), 2, "nothing launched\n{unknown}");
    assert_eq!(cloud.run_security_groups().len(), 1, "only the admin's");
    cloud.assert_no_bed_errors();
}

/// Makes, as an admin would, a security group `name` in the default VPC that opens tcp/22 to
/// 172.31.0.0/16; returns its id.
fn make_admin_group(cloud: &TestCloud, name: &str) -> String {
    let ec2 = cloud.ec2();
    let vpc = cloud.block_on(async {
        let vpcs = ec2
            .describe_vpcs()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("is-default")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        vpcs.vpcs()[0].vpc_id().unwrap().to_string()
    });
    cloud.block_on(async {
        let created = ec2
            .create_security_group()
            .group_name(name)
            .description("SSH from the office")
            .vpc_id(&vpc)
            .send()
            .await
            .unwrap();
        let id = created.group_id().unwrap().to_string();
        ec2.authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(22)
                    .to_port(22)
                    .ip_ranges(IpRange::builder().cidr_ip("172.31.0.0/16").build())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        id
    })
}

/// A locked-down account's user policy: users may not make, open or delete security groups.
fn locked_down_policy() -> Value {
    let mut policy = as_moto_checks_it(USER_POLICY);
    for action in [
        "ec2:CreateSecurityGroup",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:DeleteSecurityGroup",
    ] {
        policy = without(&policy, action);
    }
    policy
}

/// A dry run shows the admin's group a launch would use, and asks no checkip (a run does
/// not); an unknown group is refused.
fn dry_run_shows_the_admin_group(
    cloud: &TestCloud,
    project: &Project,
    user: &User,
    group_id: &str,
) {
    let checkip = common::Tripwire::on(&cloud.laptop);
    let dry_run = Run::of(
        as_user(project, cloud, user)
            .env("SSH_EC2_CHECKIP_URL", checkip.url())
            .args(["--security-group", "team-ssh", "--dry-run", "true"]),
    );
    dry_run.assert_code(0);
    assert!(
        dry_run
            .stdout
            .contains(&format!("{group_id} (admin-made, used as it is)")),
        "{dry_run}"
    );
    assert!(
        dry_run.stdout.contains("its security group's own rules"),
        "{dry_run}"
    );
    assert!(!checkip.was_called(), "{dry_run}");
    let unknown_dry_run = Run::of(as_user(project, cloud, user).args([
        "--security-group",
        "no-such-group",
        "--dry-run",
        "true",
    ]));
    assert_eq!(unknown_dry_run.code, Some(255), "{unknown_dry_run}");
    assert!(
        unknown_dry_run
            .stderr
            .contains("there is no security group no-such-group in"),
        "{unknown_dry_run}"
    );
}
