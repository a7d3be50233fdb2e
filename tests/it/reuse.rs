//! An instance belongs to its directory: a stopped or left one is reused by the next run there.

use crate::common;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, instance_id, state_of};

#[test]
fn stop_then_a_second_run_restarts_the_same_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let first = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--stop", "echo kept on disk > state.txt"]),
    );
    first.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Stopped,
        "{first}"
    );
    cloud.wait_for_events("sshd-stopped", 1);

    let second = Run::of(project.ssh_ec2(&cloud).arg("cat state.txt"));
    second.assert_code(0);
    assert_eq!(
        second.stdout, "kept on disk\n",
        "same machine, same disk\n{second}"
    );
    let instances = cloud.instances();
    assert_eq!(
        instances.len(),
        1,
        "no second instance was launched\n{second}"
    );
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Terminated,
        "{second}"
    );
    cloud.wait_for_events("sshd-started", 2);
    assert!(cloud.run_security_groups().is_empty(), "{second}");
    cloud.assert_no_bed_errors();
}

#[test]
fn leave_then_a_second_run_reuses_the_running_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();

    // Launched to let in a whole network (the laptop's among them).
    let first =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--leave", "--ssh-cidr", "172.31.0.0/16", "true"]),
        );
    first.assert_code(0);
    let running = cloud.instances_in(InstanceStateName::Running);
    assert_eq!(running.len(), 1, "{first}");
    assert!(first.stderr.contains("left running"), "{first}");

    // What changed there since is brought home before the push, and said.
    std::fs::write(cloud.remote(&project).join("k9.txt"), "from before\n").unwrap();
    let second = Run::of(project.ssh_ec2(&cloud).args(["-l", "echo again"]));
    second.assert_code(0);
    assert_eq!(second.stdout, "again\n");
    assert_eq!(project.read("k9.txt").as_deref(), Some("from before\n"));
    assert!(
        second.stderr.contains("pulled 1 file (12 bytes)"),
        "{second}"
    );
    assert!(
        !second.stderr.contains("waiting for"),
        "found running: no wait for it to run\n{second}"
    );
    let still = cloud.instances_in(InstanceStateName::Running);
    assert_eq!(still.len(), 1);
    assert_eq!(
        instance_id(&still[0]),
        instance_id(&running[0]),
        "the same instance\n{second}"
    );
    cloud.wait_for_events("sshd-started", 1);
    let rules: Vec<String> = cloud.run_security_groups()[0]
        .ip_permissions()
        .iter()
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip().map(str::to_string))
        .collect();
    assert_eq!(
        rules,
        [format!("{}/32", cloud.laptop.address)],
        "only the current caller may connect\n{second}"
    );

    let key_file = keygen(&project, "other.pem", &["-t", "ed25519"]);
    let wrong_key = Run::of(project.ssh_ec2(&cloud).arg("-i").arg(&key_file).arg("true"));
    wrong_key.assert_code(255);
    assert!(
        wrong_key.stderr.contains("launched with a key of its own"),
        "{wrong_key}"
    );

    // AWS_FINAL_STATE=destroy is the original tool's spelling of terminate.
    let last = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("AWS_FINAL_STATE", "destroy")
            .arg("true"),
    );
    last.assert_code(0);
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{last}"
    );
}

#[test]
fn another_directory_gets_its_own_instance() {
    let cloud = TestCloud::start();
    let first = Project::new();
    let second = Project::new();

    Run::of(first.ssh_ec2(&cloud).args(["--stop", "true"])).assert_code(0);
    let run = Run::of(second.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    run.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 2, "{run}");
    assert_eq!(
        instances
            .iter()
            .filter(|i| state_of(i) == InstanceStateName::Stopped)
            .count(),
        1,
        "the first directory's instance was left alone\n{run}"
    );
    // Clean up the stopped one through its own directory.
    Run::of(first.ssh_ec2(&cloud).args(["--no-rsync", "true"])).assert_code(0);
}

#[test]
fn a_named_rsa_key_pair_and_its_pem_key_replace_the_per_run_key() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // What EC2 hands out: an RSA key in PEM form ("BEGIN RSA PRIVATE KEY").
    let key_file = keygen(
        &project,
        "team.pem",
        &["-t", "rsa", "-b", "2048", "-m", "PEM"],
    );
    let public = std::fs::read(key_file.with_extension("pem.pub")).unwrap();
    cloud
        .block_on(
            cloud
                .ec2()
                .import_key_pair()
                .key_name("team")
                .public_key_material(aws_sdk_ec2::primitives::Blob::new(public))
                .send(),
        )
        .unwrap();

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("AWS_KEY_NAME", "team")
            .arg("-i")
            .arg(&key_file)
            .args(["--leave", "echo in"]),
    );
    run.assert_code(0);
    assert_eq!(run.stdout, "in\n", "{run}");
    let instance = &cloud.instances()[0];
    assert_eq!(instance.key_name(), Some("team"));
    let user_data = cloud.user_data(&instance_id(instance));
    assert!(
        !user_data.contains("ssh_authorized_keys"),
        "no per-run key\n{user_data}"
    );
    assert_eq!(
        cloud.key_pair_names(),
        ["team"],
        "the user's key pair is left alone"
    );

    // Reusing it without the key pair is refused at once, not after a boot timeout of retries.
    let without = Run::of(project.ssh_ec2(&cloud).arg("true"));
    without.assert_code(255);
    assert!(
        without
            .stderr
            .contains("launched with the EC2 key pair `team`"),
        "{without}"
    );
    let with = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("AWS_KEY_NAME", "team")
            .env("AWS_PEM", &key_file)
            .arg("true"),
    );
    with.assert_code(0);
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{with}"
    );
}

fn keygen(project: &Project, name: &str, kind: &[&str]) -> std::path::PathBuf {
    let key_file = project.home().join(name);
    let generated = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&key_file)
        .args(kind)
        .status()
        .expect("ssh-keygen (openssh-client) is needed: run tests/testbed/install");
    assert!(generated.success());
    key_file
}

#[test]
fn a_wildcard_in_the_directory_name_does_not_take_another_directorys_instance() {
    let cloud = TestCloud::start();
    // Two directories whose names differ only by `?`, a wildcard in EC2 filter values.
    let stem = format!("sshec2-exp-{}-", std::process::id());
    let exp1 = Project::named(&format!("{stem}1"));
    let wild = Project::named(&format!("{stem}?"));

    Run::of(exp1.ssh_ec2(&cloud).args(["--stop", "true"])).assert_code(0);
    let stopped = instance_id(&cloud.instances()[0]);
    cloud.wait_for_events("sshd-stopped", 1);

    // Same user, same machine: the same state directory.
    let run = Run::of(wild.ssh_ec2(&cloud).env("HOME", exp1.home()).arg("true"));
    run.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 2, "`?` launched its own instance\n{run}");
    for instance in &instances {
        let expected = match instance_id(instance) == stopped {
            true => InstanceStateName::Stopped,
            false => InstanceStateName::Terminated,
        };
        assert_eq!(state_of(instance), expected, "{run}");
    }
    let started: Vec<_> = cloud
        .events()
        .into_iter()
        .filter(|e| e["event"] == "sshd-started" && e["instance"] == stopped.as_str())
        .collect();
    assert_eq!(
        started.len(),
        1,
        "exp1's instance was never started again\n{run}"
    );

    Run::of(exp1.ssh_ec2(&cloud).args(["--no-rsync", "true"])).assert_code(0);
    assert!(
        cloud
            .instances()
            .iter()
            .all(|i| state_of(i) == InstanceStateName::Terminated)
    );
}

/// `command` (ssh-ec2 in a project) run under the host name `name`, in a UTS namespace of its
/// own: what a DHCP or VPN rename of the laptop looks like to ssh-ec2.
fn under_host_name(command: &std::process::Command, name: &str) -> std::process::Command {
    let unshare = std::process::Command::new("unshare")
        .args(["--uts", "true"])
        .status();
    assert!(
        unshare.is_ok_and(|s| s.success()),
        "`unshare --uts` must work to test a host rename: install util-linux (apt install \
         util-linux) and run the tests as root"
    );
    let mut wrapped = std::process::Command::new("unshare");
    wrapped.env_clear();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            wrapped.env(key, value);
        }
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
        .args(["--uts", "sh", "-c", r#"hostname "$0" && exec "$@""#, name])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

#[test]
fn a_host_rename_still_finds_the_stopped_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let mut first = project.ssh_ec2(&cloud);
    first.args(["--stop", "echo before the rename > result.txt"]);
    let first = Run::of(&mut under_host_name(&first, "laptop-home"));
    first.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "{first}");
    let host_tag = common::tag(&instances[0], "ssh-ec2:host");
    assert_eq!(
        host_tag.as_deref(),
        Some("laptop-home"),
        "still a readable tag\n{first}"
    );
    cloud.wait_for_events("sshd-stopped", 1);

    let mut second = project.ssh_ec2(&cloud);
    second.arg("cat result.txt");
    let second = Run::of(&mut under_host_name(&second, "laptop-vpn"));
    second.assert_code(0);
    assert_eq!(second.stdout, "before the rename\n", "{second}");
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "no second instance\n{second}");
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Terminated,
        "{second}"
    );
}

#[test]
fn an_instance_of_the_first_version_without_a_machine_tag_is_still_found() {
    let cloud = TestCloud::start();
    let project = Project::new();

    Run::of(project.ssh_ec2(&cloud).args(["--stop", "true"])).assert_code(0);
    let id = instance_id(&cloud.instances()[0]);
    // The first version tagged owner, host name and directory only.
    cloud
        .block_on(
            cloud
                .ec2()
                .delete_tags()
                .resources(&id)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("ssh-ec2:machine")
                        .build(),
                )
                .send(),
        )
        .unwrap();
    assert!(
        cloud.instances()[0]
            .tags()
            .iter()
            .all(|t| t.key() != Some("ssh-ec2:machine")),
        "the machine tag is gone"
    );
    cloud.wait_for_events("sshd-stopped", 1);

    let run = Run::of(project.ssh_ec2(&cloud).arg("true"));
    run.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "it was reused\n{run}");
    assert_eq!(instance_id(&instances[0]), id);
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
}

#[test]
fn a_shutdown_from_inside_stops_the_instance_even_when_the_policy_is_terminate() {
    let cloud = TestCloud::start();
    let project = Project::new();

    // The default end of life: terminate, by ssh-ec2 itself once the results are home.
    let run = Run::of(project.ssh_ec2(&cloud).arg("true"));
    run.assert_code(0);
    let id = instance_id(&cloud.instances()[0]);
    assert_eq!(
        cloud.shutdown_behavior(&id).as_deref(),
        Some("stop"),
        "a `shutdown` in the command must not destroy results that are not home yet\n{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
}
