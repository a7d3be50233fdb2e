//! Where settings come from (config files, presets, `.env`, the environment, flags), as
//! `--show-config` tells it and as a run uses it; and what `--generate` prints. Only the
//! profile test reaches the (simulated) cloud; everything else must make no AWS call.

use crate::common;

use std::process::Command;

use common::{Project, Run, TestCloud, Tripwire};

/// ssh-ec2 in `project` with AWS behind a tripwire, set up by `setup`; asserts no AWS call.
fn local(project: &Project, setup: impl FnOnce(&mut Command)) -> Run {
    let aws = Tripwire::new();
    let mut command = project.ssh_ec2_without_cloud();
    aws.aim(&mut command);
    setup(&mut command);
    let run = Run::of(&mut command);
    assert!(!aws.was_called(), "ssh-ec2 must not reach AWS\n{run}");
    run
}

/// `ssh-ec2 --show-config ARGS`, which must succeed.
fn show_config(project: &Project, setup: impl FnOnce(&mut Command)) -> Run {
    let run = local(project, |c| {
        c.arg("--show-config");
        setup(c);
    });
    run.assert_code(0);
    run
}

/// The FROM and VALUE columns of `setting` in `--show-config`'s table.
fn row(run: &Run, setting: &str) -> (String, String) {
    let mut lines = run.stdout.lines().skip_while(|l| !l.starts_with("SETTING"));
    let header = lines.next().unwrap_or_else(|| panic!("no table\n{run}"));
    let (from, value) = (header.find("FROM").unwrap(), header.find("VALUE").unwrap());
    let line = lines
        .find(|l| l.split_whitespace().next() == Some(setting))
        .unwrap_or_else(|| panic!("--show-config does not list {setting}\n{run}"));
    (
        line[from..value].trim().to_string(),
        line[value..].to_string(),
    )
}

fn assert_row(run: &Run, setting: &str, from: &str, value: &str) {
    assert_eq!(
        row(run, setting),
        (from.to_string(), value.to_string()),
        "{setting}\n{run}"
    );
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn show_config_says_where_every_setting_came_from() {
    let project = Project::new();
    every_source_is_named(&project);
    defaults_say_how_they_are_computed(&project);
}

/// A user file (under XDG_CONFIG_HOME) with a preset, a project file, `.env`, the environment
/// and flags: each setting is shown with its source; the project's own `.env` keys are not.
fn every_source_is_named(project: &Project) {
    let xdg = project.home().join("xdg");
    write(
        &xdg.join("ssh-ec2/config.toml"),
        "name = \"user-name\"\ntrigram = \"abc\"\n[preset.big]\nvolume_size = 200\n",
    );
    project.write(
        ".ssh-ec2.toml",
        "subnet_id = \"subnet-project\"\n[tags]\nteam = \"ml\"\n",
    );
    project.write(
        ".env",
        "AWS_IMAGE_NAME=\"from-dotenv*\"\nDATABASE_URL=postgres://secret\n",
    );
    let run = show_config(project, |c| {
        c.env("XDG_CONFIG_HOME", &xdg)
            .env("AWS_INSTANCE_TYPE", "g5.xlarge")
            .env("AWS_USER_DATA", "apt-get update\napt-get install -y htop")
            .args(["--preset", "big", "--remote-dir", "~/elsewhere", "--stop"]);
    });
    assert_row(&run, "region", "environment AWS_REGION", "eu-central-1");
    assert_row(
        &run,
        "instance_type",
        "environment AWS_INSTANCE_TYPE",
        "g5.xlarge",
    );
    assert_row(&run, "image_name", ".env AWS_IMAGE_NAME", "from-dotenv*");
    assert_row(&run, "name", "user file", "user-name");
    assert_row(&run, "trigram", "user file", "abc");
    assert_row(&run, "subnet_id", "project file", "subnet-project");
    assert_row(&run, "tags.team", "project file", "ml");
    assert_row(&run, "volume_size", "preset big (user file)", "200");
    assert_row(&run, "remote_dir", "flag", "~/elsewhere");
    assert_row(&run, "final_state", "flag", "stop");
    assert_row(
        &run,
        "user_data",
        "environment AWS_USER_DATA",
        "apt-get update\\napt-get install -y htop",
    );
    assert_row(&run, "boot_timeout", "default", "600");
    assert_row(
        &run,
        "user",
        "default",
        "ec2-user  (guessed from the image name)",
    );
    assert_row(&run, "image_id", "default", "(none)");
    let user_file = format!(
        "user file     {}",
        xdg.join("ssh-ec2/config.toml").display()
    );
    assert!(run.stdout.contains(&user_file), "{run}");
    assert!(run.stdout.contains("big, chosen by flag"), "{run}");
    assert!(
        !run.stdout.contains("DATABASE_URL") && !run.stdout.contains("postgres"),
        "the project's own .env keys are not ssh-ec2's\n{run}"
    );
}

/// Then, without XDG_CONFIG_HOME, the user file is under HOME; computed defaults say how,
/// and what they come to here.
fn defaults_say_how_they_are_computed(project: &Project) {
    write(
        &project.home().join(".config/ssh-ec2/config.toml"),
        "instance_type = \"from-home\"\n",
    );
    std::fs::remove_file(project.path().join(".env")).unwrap();
    let run = show_config(project, |c| {
        c.env_remove("AWS_REGION");
    });
    assert_row(&run, "instance_type", "user file", "from-home");
    assert_row(
        &run,
        "region",
        "default",
        "(the AWS profile's, else eu-central-1)",
    );
    assert_row(
        &run,
        "trigram",
        "default",
        "($USER, else the account's name)",
    );
    // What they come to here, before the rule.
    let dir = project.path().file_name().unwrap().to_str().unwrap();
    let resolved = format!("~/{dir}  (~/<directory name>)");
    assert_row(&run, "remote_dir", "default", &resolved);
    assert_row(
        &run,
        "user",
        "default",
        "ubuntu  (guessed from the image name)",
    );
    assert_row(
        &run,
        "image_name",
        "default",
        "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*",
    );
    assert!(run.stdout.contains("(absent)"), ".env is gone\n{run}");
}

#[test]
fn dot_env_sits_below_the_environment_and_above_the_files_and_keeps_to_its_own_keys() {
    let project = Project::new();
    project.write(
        ".ssh-ec2.toml",
        "instance_type = \"from-file\"\nregion = \"file-region\"\nuser = \"file-user\"\n",
    );
    project.write(
        ".env",
        "# the project's settings, and ours\n\
         export AWS_INSTANCE_TYPE=\"from-dotenv\"\n\
         AWS_REGION='dotenv-region' # ours, but the environment has one\n\
         AWS_ACCESS_KEY_ID=from-dotenv\n\
         AWS_SECRET_ACCESS_KEY=from-dotenv\n\
         GREETING=\"hello\" world\n",
    );
    let run = show_config(&project, |_| {});
    assert_row(
        &run,
        "instance_type",
        ".env AWS_INSTANCE_TYPE",
        "from-dotenv",
    );
    assert_row(&run, "region", "environment AWS_REGION", "eu-central-1");
    assert_row(&run, "user", "project file", "file-user");

    // The AWS credentials in .env are the project's business, not ssh-ec2's nor the SDK's.
    let run = local(&project, |c| {
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .arg("true");
    });
    run.assert_code(255);
    assert!(run.stderr.contains("no AWS credentials"), "{run}");

    // ssh-ec2's own keys are checked like the environment's, and the error names the file.
    project.write(".env", "AWS_FINAL_STATE=explode\n");
    let run = local(&project, |c| {
        c.arg("true");
    });
    run.assert_code(255);
    assert!(
        run.stderr.contains(".env") && run.stderr.contains("AWS_FINAL_STATE=explode"),
        "{run}"
    );
    project.write(".env", "A=1\nMULTIPLEX=\"tmux\" screen\n");
    let run = local(&project, |c| {
        c.arg("--show-config");
    });
    run.assert_code(255);
    assert!(
        run.stderr.contains(".env, line 2: MULTIPLEX") && run.stderr.contains("`screen`"),
        "{run}"
    );
}

#[test]
fn presets_are_chosen_by_flag_or_variable_and_an_unknown_one_is_refused() {
    let project = Project::new();
    write(
        &project.home().join(".config/ssh-ec2/config.toml"),
        "[preset.gpu]\ninstance_type = \"g5.xlarge\"\n",
    );
    project.write(
        ".ssh-ec2.toml",
        "instance_type = \"t3.micro\"\n[preset.cpu]\ninstance_type = \"c7i.large\"\n",
    );
    let run = show_config(&project, |_| {});
    assert_row(&run, "instance_type", "project file", "t3.micro");
    assert!(run.stdout.contains("none (--preset NAME"), "{run}");

    let run = show_config(&project, |c| {
        c.args(["--preset", "gpu"]);
    });
    assert_row(&run, "instance_type", "preset gpu (user file)", "g5.xlarge");

    let run = show_config(&project, |c| {
        c.env("SSH_EC2_PRESET", "cpu");
    });
    assert_row(
        &run,
        "instance_type",
        "preset cpu (project file)",
        "c7i.large",
    );
    assert!(
        run.stdout
            .contains("cpu, chosen by environment SSH_EC2_PRESET"),
        "{run}"
    );

    project.write(".env", "SSH_EC2_PRESET=gpu\n");
    let run = show_config(&project, |_| {});
    assert_row(&run, "instance_type", "preset gpu (user file)", "g5.xlarge");
    assert!(
        run.stdout.contains("chosen by .env SSH_EC2_PRESET"),
        "{run}"
    );
    let run = show_config(&project, |c| {
        c.env("SSH_EC2_PRESET", "cpu").args(["--preset", "gpu"]);
    });
    assert_row(&run, "instance_type", "preset gpu (user file)", "g5.xlarge");
    let run = show_config(&project, |c| {
        c.env("AWS_INSTANCE_TYPE", "m7i.large");
    });
    assert_row(
        &run,
        "instance_type",
        "environment AWS_INSTANCE_TYPE",
        "m7i.large",
    );
    std::fs::remove_file(project.path().join(".env")).unwrap();

    for mode in [&["true"][..], &["--show-config"]] {
        let run = local(&project, |c| {
            c.args(["--preset", "nope"]).args(mode);
        });
        run.assert_code(255);
        assert!(
            run.stderr.contains("no preset `nope` (flag)")
                && run.stderr.contains("define cpu, gpu"),
            "{run}"
        );
    }

    project.write(
        ".ssh-ec2.toml",
        "[preset.cpu]\ninstance_typo = \"c7i.large\"\n",
    );
    let run = local(&project, |c| {
        c.args(["--show-config"]);
    });
    run.assert_code(255);
    assert!(
        run.stderr.contains(".ssh-ec2.toml") && run.stderr.contains("instance_typo"),
        "{run}"
    );

    let run = local(&project, |c| {
        c.args(["--show-config", "make", "train"]);
    });
    run.assert_code(255);
    assert!(run.stderr.contains("cannot be used with"), "{run}");
}

#[test]
fn aws_profile_in_dot_env_picks_the_profile_s_region_and_credentials() {
    let cloud = TestCloud::start();
    let project = Project::new();
    write(
        &project.home().join(".aws/config"),
        "[profile work]\nregion = eu-west-3\n",
    );
    write(
        &project.home().join(".aws/credentials"),
        "[work]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    );
    let finish = || {
        let mut command = project.ssh_ec2(&cloud);
        command
            .env_remove("AWS_REGION")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .arg("--finish");
        Run::of(&mut command)
    };
    let run = finish();
    run.assert_code(255);
    assert!(run.stderr.contains("no AWS credentials"), "{run}");

    project.write(".env", "AWS_PROFILE=work\n");
    let run = finish();
    run.assert_code(255);
    assert!(
        run.stderr
            .contains("this directory has no instance in eu-west-3"),
        "the SDK used the profile's credentials and region\n{run}"
    );
}

#[test]
fn completions_and_the_man_page_cover_the_flags_and_need_no_settings_nor_rsync() {
    let project = Project::new();
    // Run from the home directory, with an unreadable user config and no rsync in PATH.
    write(
        &project.home().join(".config/ssh-ec2/config.toml"),
        "not = [valid\n",
    );
    let no_programs = tempfile::tempdir().unwrap();
    let generate = |what: &str| {
        let run = local(&project, |c| {
            c.current_dir(project.home())
                .env("PATH", no_programs.path())
                .args(["--generate", what]);
        });
        run.assert_code(0);
        run
    };
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let run = generate(&format!("complete-{shell}"));
        for flag in ["detach", "remote-dir", "finish", "show-config", "preset"] {
            // fish spells long options `-l NAME`.
            let spelled = match shell {
                "fish" => format!("-l {flag}"),
                _ => format!("--{flag}"),
            };
            assert!(
                run.stdout.contains(&spelled),
                "{shell} completes {spelled}\n{run}"
            );
        }
    }
    let man = generate("man");
    assert!(man.stdout.contains(".TH ssh-ec2 1"), "{man}");
    for flag in ["finish", "remote\\-dir", "show\\-config"] {
        // roff writes a literal dash as `\-`.
        assert!(
            man.stdout.contains(&format!("\\-\\-{flag}")),
            "{flag}\n{man}"
        );
    }
}
