//! What is refused before any AWS call, and what AWS problems look like.

use crate::common;

use common::{Project, Run, TestCloud, Tripwire};

/// Runs ssh-ec2 in `project` with AWS and checkip aimed at a tripwire, as `setup` sets it up:
/// it must fail (255) saying each of `expected`, without any AWS call.
pub fn refused(
    project: &Project,
    setup: impl FnOnce(&mut std::process::Command),
    expected: &[&str],
) -> Run {
    let aws = Tripwire::new();
    let mut command = project.ssh_ec2_without_cloud();
    aws.aim(&mut command);
    setup(&mut command);
    let run = Run::of(&mut command);
    run.assert_code(255);
    for text in expected {
        assert!(
            run.stderr.contains(text),
            "the error should say `{text}`\n{run}"
        );
    }
    assert!(!aws.was_called(), "refused input must not reach AWS\n{run}");
    run
}

/// A `refused` setup that gives ssh-ec2 `args`.
fn args(args: &'static [&'static str]) -> impl FnOnce(&mut std::process::Command) {
    move |c| {
        c.args(args);
    }
}

/// A `refused` setup that sets the environment variable `name` to `value`.
fn env(name: &'static str, value: &'static str) -> impl FnOnce(&mut std::process::Command) {
    move |c| {
        c.env(name, value);
    }
}

#[test]
fn bad_flags_are_refused_before_any_aws_call_with_what_to_write_instead() {
    let project = Project::new();
    refused(
        &project,
        args(&["--frobnicate", "true"]),
        &["unexpected argument '--frobnicate'"],
    );
    refused(
        &project,
        args(&["--volume-size", "lots", "true"]),
        &["invalid value 'lots'", "--volume-size"],
    );
    refused(
        &project,
        args(&["--volume-size", "0", "true"]),
        &["1 to 16384 GiB"],
    );
    refused(
        &project,
        args(&["--connect", "nowhere", "true"]),
        &["HOST:PORT"],
    );
    refused(
        &project,
        args(&["--ssh-cidr", "300.1.2.3/32", "true"]),
        &["invalid value '300.1.2.3/32'"],
    );
    refused(
        &project,
        args(&["--stop", "--leave", "true"]),
        &["cannot be used with"],
    );
    refused(
        &project,
        args(&["--boot-timeout", "0", "true"]),
        &["--boot-timeout", "cannot work"],
    );
    refused(&project, args(&["--tag", "aws:x=1", "true"]), &["reserved"]);
    refused(
        &project,
        args(&["-i", "/nonexistent/key.pem", "true"]),
        &["/nonexistent/key.pem does not exist"],
    );
    refused(&project, args(&["--attach", "ls"]), &["take no command"]);
    refused(&project, args(&["--detach"]), &["--detach needs a command"]);
    refused(
        &project,
        args(&["--detach", "--multi", "none", "make"]),
        &["drop --multi none"],
    );
}

#[test]
fn modes_given_together_are_refused_before_any_aws_call() {
    let project = Project::new();
    // One mode at a time: a --dry-run beside --down or --gc --yes must not do them.
    for modes in [
        &["--down", "--dry-run"][..],
        &["--gc", "--yes", "--dry-run"],
        &["--list", "--dry-run"],
        &["--setup", "--down"],
        &["--list", "--gc"],
        &["--down", "--ssh-config"],
        &["--show-config", "--attach"],
        // A mode that starts no command takes no environment for one.
        &["--attach", "-e", "EPOCHS=2"],
        &["--finish", "--env-file", "run.env"],
        &["--down", "-e", "EPOCHS=2"],
    ] {
        refused(&project, args(modes), &["cannot be used with"]);
    }
}

#[test]
fn bad_environment_values_are_refused_before_any_aws_call_with_what_to_write_instead() {
    let project = Project::new();
    refused(
        &project,
        env("AWS_FINAL_STATE", "explode"),
        &["AWS_FINAL_STATE=explode", "terminate, stop or leave"],
    );
    refused(
        &project,
        env("SSH_EC2_VOLUME_SIZE", "big"),
        &["SSH_EC2_VOLUME_SIZE=big"],
    );
    refused(
        &project,
        env("MULTIPLEX", "byobu"),
        &["MULTIPLEX=byobu", "tmux, screen or none"],
    );
    refused(
        &project,
        env("AWS_KEY_NAME", "team"),
        &["key pair `team`", "-i FILE"],
    );
    refused(
        &project,
        env("PATH", "/nonexistent"),
        &["rsync not found", "--no-rsync"],
    );
}

#[test]
fn the_home_directory_and_a_config_typo_are_refused_before_any_aws_call() {
    let project = Project::new();
    let home = project.home().to_path_buf();
    refused(
        &project,
        move |c| {
            c.current_dir(&home);
        },
        &[
            "with your credentials (~/.aws, ~/.ssh)",
            "run it from a project directory",
        ],
    );

    project.write(".ssh-ec2.toml", "instance_typo = \"g5.xlarge\"\n");
    refused(
        &project,
        args(&["true"]),
        &[".ssh-ec2.toml", "instance_typo"],
    );
}

#[test]
fn credential_directories_and_an_rsync_too_old_for_verbatim_names_are_refused_before_aws() {
    let project = Project::new();
    for credentials in [".aws", ".ssh/keys"] {
        let inside = project.home().join(credentials);
        std::fs::create_dir_all(&inside).unwrap();
        refused(
            &project,
            move |c| {
                c.current_dir(&inside);
            },
            &["with your credentials", "run it from a project directory"],
        );
    }

    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("rsync");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'rsync  version 3.0.9  protocol version 30'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = bin.path().to_path_buf();
    refused(
        &project,
        move |c| {
            c.env("PATH", &path).arg("true");
        },
        &["rsync 3.0.9", "needs 3.1.3 or newer", "brew install rsync"],
    );
}

#[test]
fn remote_dirs_that_would_sync_a_home_or_system_directory_are_refused_before_aws() {
    let project = Project::new();
    let remote_dir = |dir: &'static str| {
        move |c: &mut std::process::Command| {
            c.args(["--remote-dir", dir, "true"]);
        }
    };
    refused(
        &project,
        remote_dir("~/../.."),
        &["`..` is not allowed", "e.g. ~/project"],
    );
    for home in ["~", "~/", ".", "/home/ubuntu", "/root"] {
        refused(
            &project,
            remote_dir(home),
            &["whole home directory", "e.g. ~/project"],
        );
    }
    for system in ["/", "/etc", "/usr", "/home", "/tmp", "/var", "/opt", "/bin"] {
        refused(&project, remote_dir(system), &["e.g. /data/project"]);
    }
    for inside in [
        "/proc/1/x",
        "/sys/x",
        "/dev/x",
        "/boot/x",
        "/etc/x",
        "/usr/local/x",
    ] {
        refused(
            &project,
            remote_dir(inside),
            &["belongs to the system", "e.g. /data/project"],
        );
    }
    for secret in ["~/.ssh", "~/.aws"] {
        refused(&project, remote_dir(secret), &["could lock the login out"]);
    }
    // The same check for the environment variable and the config file.
    refused(
        &project,
        |c| {
            c.env("AWS_RSYNC_DIR", "/").arg("true");
        },
        &["remote directory `/`"],
    );
    project.write(".ssh-ec2.toml", "remote_dir = \"~\"\n");
    refused(
        &project,
        |c| {
            c.arg("true");
        },
        &["remote directory `~`"],
    );
}

#[test]
fn help_and_version_exit_zero() {
    let project = Project::new();
    let help = Run::of(project.ssh_ec2_without_cloud().arg("--help"));
    help.assert_code(0);
    for option in [
        "--terminate",
        "--stop",
        "--leave",
        "--no-rsync",
        "--connect",
        "COMMAND",
    ] {
        assert!(
            help.stdout.contains(option),
            "--help lists {option}\n{help}"
        );
    }
    let version = Run::of(project.ssh_ec2_without_cloud().arg("--version"));
    version.assert_code(0);
    assert!(version.stdout.starts_with("ssh-ec2 "), "{version}");
}

#[test]
fn missing_credentials_say_how_to_provide_them() {
    let project = Project::new();
    let aws = Tripwire::new();
    let run = Run::of(
        project
            .ssh_ec2_without_cloud()
            .env("AWS_ENDPOINT_URL", aws.url())
            .env("AWS_REGION", "eu-central-1")
            .arg("true"),
    );
    run.assert_code(255);
    assert!(run.stderr.contains("no AWS credentials"), "{run}");
    assert!(run.stderr.contains("aws configure"), "{run}");
    assert!(!aws.was_called(), "{run}");
}

#[test]
fn unreachable_aws_says_what_to_check() {
    let project = Project::new();
    // A port nobody listens on: bound, then closed.
    let url = Tripwire::new().url();
    let run = Run::of(
        project
            .ssh_ec2_without_cloud()
            .env("AWS_ENDPOINT_URL", &url)
            .env("AWS_REGION", "eu-central-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .arg("true"),
    );
    run.assert_code(255);
    // Said at the first refusal (AWS's endpoints never refuse), not after a minute of retries.
    assert!(
        run.stderr
            .contains("cannot reach the AWS API (Connection refused"),
        "{run}"
    );
    assert!(run.stderr.contains("AWS_ENDPOINT_URL"), "{run}");
}

#[test]
fn instance_types_are_checked_and_images_must_fit_them() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let bogus = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--instance-type", "g9.bogus", "true"]),
    );
    bogus.assert_code(255);
    assert!(
        bogus.stderr.contains("g9.bogus") && bogus.stderr.contains("check --instance-type"),
        "{bogus}"
    );
    assert!(
        !bogus.stderr.contains("launching") && !bogus.stderr.contains("/hour"),
        "refused before any launch step or price\n{bogus}"
    );
    // Graviton: the only images are x86_64 ones.
    let arm = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--instance-type", "g5g.xlarge", "true"]),
    );
    arm.assert_code(255);
    assert!(arm.stderr.contains("for a g5g.xlarge"), "{arm}");
    let image = cloud.amis["ubuntu_new"].clone();
    let by_id = Run::of(project.ssh_ec2(&cloud).args([
        "--instance-type",
        "g5g.xlarge",
        "--image-id",
        &image,
        "true",
    ]));
    by_id.assert_code(255);
    assert!(
        by_id
            .stderr
            .contains("is built for x86_64, but a g5g.xlarge runs arm64"),
        "{by_id}"
    );
    assert!(cloud.instances().is_empty() && cloud.run_security_groups().is_empty());
}
