//! The main run, end to end: launch. Its locked-down shape, region, login user, instance
//! profile, subnet and VPC.

use crate::common;

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use common::{CloudOptions, Project, Run, TestCloud, instance_id};

#[test]
fn launch_shape_is_locked_down() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(
        ".ssh-ec2.toml",
        "instance_type = \"t3.micro\"\n[tags]\nproject = \"demo\"\n",
    );

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("AWS_NAME_INSTANCE", "training-box")
            .env("AWS_USER_DATA", "echo 'from the user' > /tmp/boot.txt")
            .args(["--leave", "--volume-size", "80", "true"]),
    );
    run.assert_code(0);
    let instance = &cloud.instances_in(InstanceStateName::Running)[0];
    assert_instance_locked_down(&cloud, &project, instance);
    assert_ssh_open_to_the_caller_only(&cloud);

    let user_data = cloud.user_data(&instance_id(instance));
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    assert!(
        !user_data.contains("AWS_SECRET") && !user_data.contains("testing"),
        "no credentials"
    );

    // End it, so the test leaves nothing behind.
    Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--terminate", "--no-rsync", "true"]),
    )
    .assert_code(0);
    assert!(cloud.instances_in(InstanceStateName::Running).is_empty());
}

/// The instance: the newest DL AMI, the project's type and tags, IMDSv2 only, stopped (not
/// terminated) when shut down from inside, its volumes deleted with it.
fn assert_instance_locked_down(cloud: &TestCloud, project: &Project, instance: &Instance) {
    let id = instance_id(instance);
    assert_eq!(
        instance.image_id(),
        Some(cloud.amis["ubuntu_new"].as_str()),
        "the newest DL AMI"
    );
    assert_eq!(
        instance.instance_type().unwrap().as_str(),
        "t3.micro",
        "project config applies"
    );
    let options = instance.metadata_options().unwrap();
    assert_eq!(
        options.http_tokens().unwrap().as_str(),
        "required",
        "IMDSv2 only"
    );
    let tag = |key: &str| common::tag(instance, key);
    assert_eq!(tag("Name").as_deref(), Some("training-box"));
    assert_eq!(tag("project").as_deref(), Some("demo"));
    assert_eq!(tag("ssh-ec2:owner").as_deref(), Some("tester"));
    assert_eq!(
        tag("ssh-ec2:dir"),
        Some(project.path().canonicalize().unwrap().display().to_string())
    );

    assert_eq!(
        cloud.shutdown_behavior(&id).as_deref(),
        Some("stop"),
        "a left instance stops, not terminates, when shut down from inside"
    );
    let volumes = instance.block_device_mappings();
    assert!(
        volumes
            .iter()
            .all(|v| v.ebs().and_then(|e| e.delete_on_termination()) == Some(true))
    );
}

/// One security group, tagged at creation, opens tcp/22 to the caller's /32 only, which came
/// from the checkip URL.
fn assert_ssh_open_to_the_caller_only(cloud: &TestCloud) {
    let groups = cloud.run_security_groups();
    assert_eq!(groups.len(), 1);
    assert!(
        groups[0]
            .tags()
            .iter()
            .any(|t| t.key() == Some("ssh-ec2:owner")),
        "tagged at creation"
    );
    let rules = groups[0].ip_permissions();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        (rules[0].from_port(), rules[0].to_port()),
        (Some(22), Some(22))
    );
    let ranges: Vec<_> = rules[0]
        .ip_ranges()
        .iter()
        .filter_map(|r| r.cidr_ip())
        .collect();
    let caller = format!("{}/32", cloud.laptop.address);
    assert_eq!(ranges, [caller], "SSH from the caller's /32 only");
    assert_eq!(
        cloud.count_events("checkip"),
        1,
        "the caller's IP came from the checkip URL"
    );
}

#[test]
fn region_falls_back_to_eu_central_1() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env_remove("AWS_REGION")
            .args(["--no-rsync", "true"]),
    );
    run.assert_code(0);
    assert!(run.stderr.contains("eu-central-1"), "{run}");
    assert_eq!(
        cloud.instances().len(),
        1,
        "launched in eu-central-1\n{run}"
    );
}

#[test]
fn the_login_user_is_guessed_from_the_image_name() {
    let cloud = TestCloud::start_with(CloudOptions {
        user: Some("ec2-user"),
        ..Default::default()
    });
    let project = Project::new();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--image-name", "al2023-ami-*", "whoami"]),
    );
    run.assert_code(0);
    assert_eq!(run.stdout, "ec2-user\n", "{run}");
    assert_eq!(
        cloud.instances()[0].image_id(),
        Some(cloud.amis["al2023"].as_str())
    );
}

#[test]
fn the_instance_profile_is_passed_and_an_unknown_one_is_refused_before_launch() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let unknown =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--instance-profile", "NoSuchProfile", "true"]),
        );
    unknown.assert_code(255);
    assert!(
        unknown.stderr.contains("NoSuchProfile") && unknown.stderr.contains("NoSuchEntity"),
        "{unknown}"
    );
    assert!(
        unknown.stderr.contains("admin"),
        "the hint says who can fix it\n{unknown}"
    );
    assert!(
        cloud.instances().is_empty() && cloud.run_security_groups().is_empty(),
        "{unknown}"
    );

    let iam = cloud.iam();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    cloud
        .block_on(
            iam.create_role()
                .role_name("S3Reader")
                .assume_role_policy_document(trust)
                .send(),
        )
        .unwrap();
    cloud
        .block_on(
            iam.create_instance_profile()
                .instance_profile_name("S3Reader")
                .send(),
        )
        .unwrap();
    cloud
        .block_on(
            iam.add_role_to_instance_profile()
                .instance_profile_name("S3Reader")
                .role_name("S3Reader")
                .send(),
        )
        .unwrap();

    // Left running: terminating an instance dissociates its profile.
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("AWS_IAM_INSTANCE_PROFILE", "S3Reader")
            .args(["--leave", "true"]),
    );
    run.assert_code(0);
    let profile = cloud.instances()[0]
        .iam_instance_profile()
        .and_then(|p| p.arn())
        .unwrap_or_default()
        .to_string();
    assert!(
        profile.ends_with("instance-profile/S3Reader"),
        "{profile}\n{run}"
    );
    Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"])).assert_code(0);
}

#[test]
fn a_subnet_can_be_chosen_and_an_unknown_one_is_named() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let subnets = cloud
        .block_on(cloud.ec2().describe_subnets().send())
        .unwrap();
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--subnet-id", &subnet, "--no-rsync", "true"]),
    );
    run.assert_code(0);
    assert_eq!(
        cloud.instances()[0].subnet_id(),
        Some(subnet.as_str()),
        "{run}"
    );

    let unknown =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--subnet-id", "subnet-0000000000", "true"]),
        );
    unknown.assert_code(255);
    assert!(
        unknown.stderr.contains("subnet-0000000000") && unknown.stderr.contains("--subnet-id"),
        "{unknown}"
    );
}

#[test]
fn without_a_default_vpc_the_error_says_to_pass_a_subnet() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let ec2 = cloud.ec2();
    let is_default = aws_sdk_ec2::types::Filter::builder()
        .name("is-default")
        .values("true")
        .build();
    let vpcs = cloud
        .block_on(ec2.describe_vpcs().filters(is_default).send())
        .unwrap();
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
    let in_vpc = |name: &str| {
        aws_sdk_ec2::types::Filter::builder()
            .name(name)
            .values(&vpc)
            .build()
    };
    let subnets = cloud
        .block_on(ec2.describe_subnets().filters(in_vpc("vpc-id")).send())
        .unwrap();
    for subnet in subnets.subnets() {
        cloud
            .block_on(
                ec2.delete_subnet()
                    .subnet_id(subnet.subnet_id().unwrap())
                    .send(),
            )
            .unwrap();
    }
    let gateways = cloud
        .block_on(
            ec2.describe_internet_gateways()
                .filters(in_vpc("attachment.vpc-id"))
                .send(),
        )
        .unwrap();
    for gateway in gateways.internet_gateways() {
        let id = gateway.internet_gateway_id().unwrap();
        cloud
            .block_on(
                ec2.detach_internet_gateway()
                    .internet_gateway_id(id)
                    .vpc_id(&vpc)
                    .send(),
            )
            .unwrap();
        cloud
            .block_on(ec2.delete_internet_gateway().internet_gateway_id(id).send())
            .unwrap();
    }
    cloud
        .block_on(ec2.delete_vpc().vpc_id(&vpc).send())
        .unwrap();

    let run = Run::of(project.ssh_ec2(&cloud).arg("true"));
    run.assert_code(255);
    assert!(
        run.stderr
            .contains("no default VPC in eu-central-1: pass --subnet-id"),
        "{run}"
    );
    assert!(cloud.instances().is_empty(), "{run}");
    assert!(
        project.kept_instance_keys().is_empty(),
        "keys of a launch that never happened are dropped"
    );
}
