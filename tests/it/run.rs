//! The main run, end to end: launch, sync, run, pull back, terminate.

use crate::common;

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use common::{CloudOptions, Project, Run, TestCloud, end, instance_id, state_of};

#[test]
fn seed_usage_runs_the_words_as_one_command_and_terminates() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("hello.txt", "hi\n");

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "echo",
        "I",
        "am",
        "$(whoami)",
        "in",
        "$(pwd)",
        "with",
        "$(cat",
        "hello.txt)",
    ]));
    run.assert_code(0);
    let name = project.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(
        run.stdout.trim(),
        format!("I am ubuntu in /home/ubuntu/{name} with hi"),
        "the words run as one command in the synced directory\n{run}"
    );

    let run = Run::of(project.ssh_ec2(&cloud).args(["who", "am", "i"]));
    run.assert_code(0);

    let instances = cloud.instances();
    assert_eq!(instances.len(), 2, "one instance per run");
    assert!(
        instances
            .iter()
            .all(|i| state_of(i) == InstanceStateName::Terminated)
    );
    assert!(
        run.stderr.contains("terminated"),
        "a summary line says what happened\n{run}"
    );
}

#[test]
fn exit_status_comes_back_and_results_come_home_when_the_command_fails() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(
        "train.sh",
        "mkdir -p out\necho model > out/model.txt\necho 'epoch 1 failed' >&2\nexit 3\n",
    );

    let run = Run::of(project.ssh_ec2(&cloud).args(["sh", "train.sh"]));
    run.assert_code(3);
    assert_eq!(
        project.read("out/model.txt").as_deref(),
        Some("model\n"),
        "pulled back\n{run}"
    );
    assert!(
        run.stderr.contains("epoch 1 failed"),
        "remote stderr streams to stderr\n{run}"
    );
    assert!(
        !run.stdout.contains("epoch 1 failed"),
        "and not to stdout\n{run}"
    );
    assert_eq!(
        cloud.instances_in(InstanceStateName::Terminated).len(),
        1,
        "{run}"
    );
}

#[test]
fn pull_back_brings_every_change_home_whatever_its_timestamp_and_deletes_nothing() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("notes.txt", "local notes\n");
    project.write("config.txt", "v1\n");
    project.write("draft.txt", "old draft\n");

    // Results written with old timestamps (`tar x`, `cp -p`, `unzip`) are results all the same;
    // one rewritten at the same size within the same second too.
    let script = "echo v2 > config.txt; echo remote > new.txt; rm notes.txt; \
                  echo remote draft > draft.txt; touch -d 2000-01-01 draft.txt; \
                  mkdir -p old && echo archived > old/result.txt && touch -d 1999-12-31 old/result.txt; \
                  exit 1";
    let run = Run::of(project.ssh_ec2(&cloud).arg(script));
    run.assert_code(1);
    assert_eq!(
        project.read("config.txt").as_deref(),
        Some("v2\n"),
        "changed file pulled\n{run}"
    );
    assert_eq!(
        project.read("new.txt").as_deref(),
        Some("remote\n"),
        "new file pulled\n{run}"
    );
    assert_eq!(
        project.read("notes.txt").as_deref(),
        Some("local notes\n"),
        "never deletes locally"
    );
    assert_eq!(
        project.read("draft.txt").as_deref(),
        Some("remote draft\n"),
        "an older timestamp does not hide a change\n{run}"
    );
    assert_eq!(
        project.read("old/result.txt").as_deref(),
        Some("archived\n"),
        "{run}"
    );
    assert_eq!(
        cloud.instances_in(InstanceStateName::Terminated).len(),
        1,
        "terminated once everything was home\n{run}"
    );
}

#[test]
fn rsyncignore_is_honoured_both_ways_and_links_out_of_the_tree_are_not_followed() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(".rsyncignore", "data/\n*.tmp\n");
    project.write("data/big.bin", "huge\n");
    project.write("code.py", "print(1)\n");
    let outside = project.home().join("outside.txt");
    std::fs::write(&outside, "private\n").unwrap();
    std::os::unix::fs::symlink(&outside, project.path().join("escape")).unwrap();

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--leave",
        "echo scratch > scratch.tmp; echo kept > kept.txt; ln -s kept.txt near; \
         ln -s /etc/hostname away",
    ]));
    run.assert_code(0);
    let remote = cloud.remote(&project);
    assert_eq!(
        cloud.read_remote(&project, "code.py").as_deref(),
        Some("print(1)\n")
    );
    assert!(
        remote.join("escape").symlink_metadata().is_err(),
        "a link out of the tree is not sent\n{run}"
    );
    assert_eq!(
        std::fs::read_link(project.path().join("near")).ok(),
        Some(std::path::PathBuf::from("kept.txt")),
        "a link within the tree comes home as a link\n{run}"
    );
    assert!(
        project.path().join("away").symlink_metadata().is_err(),
        "a link out of the tree does not come home\n{run}"
    );
    assert!(
        !remote.join("data").exists(),
        "ignored on the way up\n{run}"
    );
    assert_eq!(project.read("kept.txt").as_deref(), Some("kept\n"));
    assert_eq!(
        project.read("scratch.tmp"),
        None,
        "ignored on the way back\n{run}"
    );
    end(&cloud, &mut project.ssh_ec2(&cloud));
}

#[test]
fn no_rsync_neither_syncs_up_nor_pulls_back() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("local.txt", "x\n");

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--no-rsync",
        "--leave",
        "echo made > made.txt; ls",
    ]));
    run.assert_code(0);
    assert!(
        !run.stdout.contains("local.txt"),
        "nothing synced up\n{run}"
    );
    assert_eq!(
        cloud.read_remote(&project, "made.txt").as_deref(),
        Some("made\n"),
        "ran in the remote dir"
    );
    assert_eq!(project.read("made.txt"), None, "nothing pulled back\n{run}");
    end(&cloud, &mut project.ssh_ec2(&cloud));
}

#[test]
fn stdin_is_forwarded_to_the_remote_command() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let run = Run::with_stdin(
        project
            .ssh_ec2(&cloud)
            .args(["--no-rsync", "tr", "a-z", "A-Z"]),
        "hello\nworld\n",
    );
    run.assert_code(0);
    assert_eq!(run.stdout, "HELLO\nWORLD\n", "{run}");
}

#[test]
fn terminate_leaves_no_instance_security_group_key_pair_or_keys() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let run = Run::of(project.ssh_ec2(&cloud).args(["--terminate", "true"]));
    run.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
    assert!(
        cloud.run_security_groups().is_empty(),
        "the run's security group is deleted\n{run}"
    );
    assert!(
        cloud.key_pair_names().is_empty(),
        "no EC2 key pair is ever made\n{run}"
    );
    assert!(
        project.kept_instance_keys().is_empty(),
        "its local keys are forgotten\n{run}"
    );
    cloud.wait_for_events("sshd-stopped", 1);
}

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

    let shutdown = cloud
        .block_on(
            cloud
                .ec2()
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(
                    aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior,
                )
                .send(),
        )
        .unwrap();
    assert_eq!(
        shutdown
            .instance_initiated_shutdown_behavior()
            .and_then(|v| v.value()),
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
fn waits_for_a_slow_boot_without_fixed_sleeps() {
    let cloud = TestCloud::start_with(CloudOptions {
        boot_delay: Some(3.0),
        ..Default::default()
    });
    let project = Project::new();

    let run = Run::of(project.ssh_ec2(&cloud).arg("echo up"));
    run.assert_code(0);
    assert_eq!(run.stdout, "up\n", "{run}");
}

#[test]
fn a_host_key_other_than_the_injected_one_is_refused_before_anything_is_sent() {
    let cloud = TestCloud::start_with(CloudOptions {
        wrong_host_key: true,
        ..Default::default()
    });
    let project = Project::new();
    project.write("secret.txt", "do not send\n");

    let run = Run::of(project.ssh_ec2(&cloud).arg("cat secret.txt"));
    run.assert_code(255);
    assert!(run.stderr.contains("presented host key SHA256:"), "{run}");
    assert!(run.stderr.contains("refusing to connect"), "{run}");
    assert!(!run.stdout.contains("do not send"));
    let instances = cloud.instances();
    let console = cloud.console(&instance_id(&instances[0]));
    assert!(
        console.contains("Connection from") && !console.contains("Accepted publickey"),
        "it was dialled, and no one logged in: nothing was synced\n{console}\n{run}"
    );
    // Nothing of the user's is on it: the failed run still cleans up.
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
    assert!(cloud.run_security_groups().is_empty(), "{run}");
}

#[test]
fn a_command_killed_by_a_signal_exits_255_like_ssh_and_still_pulls_back() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .arg("echo partial > partial.txt; kill -9 $$"),
    );
    run.assert_code(255);
    assert!(run.stderr.contains("killed by signal KILL"), "{run}");
    assert_eq!(
        project.read("partial.txt").as_deref(),
        Some("partial\n"),
        "{run}"
    );
}

#[test]
fn quiet_prints_nothing_but_the_command_and_verbose_lists_synced_files() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("listed-file.txt", "x\n");

    // The first run may warn once about an old local rsync, and about a login user without
    // sudo (the host key from the user-data stays); warnings show even with -q.
    let first = Run::of(project.ssh_ec2(&cloud).args(["-q", "echo", "hi"]));
    first.assert_code(0);
    assert!(
        first.stderr.lines().all(|l| {
            l.starts_with("ssh-ec2: warning: your rsync is ") || l.contains("may not use sudo")
        }),
        "{first}"
    );
    let quiet = Run::of(project.ssh_ec2(&cloud).args(["-q", "echo", "hi"]));
    quiet.assert_code(0);
    assert_eq!(
        (quiet.stdout.as_str(), quiet.stderr.as_str()),
        ("hi\n", ""),
        "{quiet}"
    );

    project.write("listed-file.txt", "changed\n");
    let verbose = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-v", "echo made > made-remotely.txt"]),
    );
    verbose.assert_code(0);
    assert!(
        verbose.stderr.contains("listed-file.txt"),
        "pushed files listed\n{verbose}"
    );
    assert!(
        verbose.stderr.contains("made-remotely.txt"),
        "pulled files listed\n{verbose}"
    );
    assert!(
        !verbose.stdout.contains("listed-file.txt"),
        "stdout stays the command's\n{verbose}"
    );

    let debug = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--no-rsync", "true"]));
    debug.assert_code(0);
    assert!(
        debug.stderr.contains("DEBUG"),
        "-vv adds debug logs\n{debug}"
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
fn the_boot_timeout_gives_up_with_a_clear_error_and_cleans_up() {
    let cloud = TestCloud::start_with(CloudOptions {
        boot_delay: Some(60.0),
        ..Default::default()
    });
    let project = Project::new();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--boot-timeout", "2", "true"]),
    );
    run.assert_code(255);
    assert!(run.stderr.contains("before the boot timeout"), "{run}");
    assert!(
        run.stderr.contains("--boot-timeout"),
        "the error says what to change\n{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
    assert!(cloud.run_security_groups().is_empty(), "{run}");
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

#[test]
fn output_streams_live_while_the_command_runs() {
    use std::io::{BufRead, BufReader, Write};
    let cloud = TestCloud::start();
    let project = Project::new();
    // The command waits for a line that the test only sends once it has read the first output.
    let mut child = project
        .ssh_ec2(&cloud)
        .args(["--no-rsync", "echo first; read reply; echo second:$reply"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"pong\n").unwrap();
    drop(stdin);
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "second:pong\n");
    let status = common::wait_or_kill(child, common::RUN_TIMEOUT).expect("ssh-ec2 hung");
    assert_eq!(status.code(), Some(0));
}
