//! The instance is untrusted: what it writes into version-control metadata stays there, names it
//! makes cannot drive the terminal, what the rules keep there is named before it is gone, and no
//! AWS key goes up, whatever its depth or form.

use crate::common;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, start_until_ready, state_of};

/// The run's stderr says `needle`.
fn says(run: &Run, needle: &str) {
    assert!(
        run.stderr.contains(needle),
        "the run does not say `{needle}`\n{run}"
    );
}

fn assert_terminated(cloud: &TestCloud, run: &Run) {
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
}

#[test]
fn version_control_metadata_changed_on_the_instance_stays_there_and_is_named() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let config = "[core]\n\trepositoryformatversion = 0\n";
    project.write(".git/config", config);
    project.write(".git/HEAD", "ref: refs/heads/main\n");
    project.write("vendor/lib/.git", "gitdir: ../../.git/modules/lib\n");
    project.write("train.py", "print(1)\n");

    // What a compromised package on the instance would do: the laptop's next `git status` (many
    // shell prompts run one) would run these.
    let run = Run::of(project.ssh_ec2(&cloud).arg(
        "test -f .git/HEAD || exit 9; \
         printf '\\tfsmonitor = touch /tmp/pwned\\n' >> .git/config; \
         mkdir -p .git/hooks && printf '#!/bin/sh\\ntouch pwned\\n' > .git/hooks/post-checkout; \
         chmod +x .git/hooks/post-checkout; \
         echo 'gitdir: ../../evil' > vendor/lib/.git; \
         mkdir -p .hg && echo '[hooks]' > .hg/hgrc; \
         echo result > result.txt",
    ));
    run.assert_code(0);
    assert_eq!(
        project.read(".git/config").as_deref(),
        Some(config),
        "{run}"
    );
    assert!(
        !project.path().join(".git/hooks/post-checkout").exists(),
        "{run}"
    );
    assert_eq!(
        project.read("vendor/lib/.git").as_deref(),
        Some("gitdir: ../../.git/modules/lib\n"),
        "{run}"
    );
    assert!(!project.path().join(".hg").exists(), "{run}");
    assert_eq!(
        project.read("result.txt").as_deref(),
        Some("result\n"),
        "results still come home\n{run}"
    );
    says(&run, "held back on the instance");
    for name in [
        ".git/config",
        ".git/hooks/post-checkout",
        "vendor/lib/.git",
        ".hg/hgrc",
    ] {
        says(&run, name);
    }
    assert_terminated(&cloud, &run);
}

#[test]
fn names_made_on_the_instance_are_printed_with_control_characters_escaped() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // \033]0;…\007 retitles the terminal, \033[2J clears it, a newline fakes a line of ours.
    let conflicted = "c\x1b[31mred.txt";
    project.write(conflicted, "v1\n");
    project.write(".rsyncignore", "out/\n");
    let child = start_until_ready(project.ssh_ec2(&cloud).args([
        "-v",
        "printf x > \"$(printf 'a\\033]0;pwned\\007b\\033[2J.txt')\"; \
         printf x > \"$(printf 'new\\nssh-ec2: fake line')\"; \
         mkdir -p out && printf x > \"$(printf 'out/\\033[5mblink')\"; \
         echo remote > \"$(printf 'c\\033[31mred.txt')\"; \
         echo ready; while [ ! -e edited ]; do sleep 0.05; done",
    ]));
    project.write(conflicted, "local edit\n");
    std::fs::write(cloud.remote(&project).join("edited"), "").unwrap();
    let run = Run::collect(child);
    run.assert_code(0);
    assert!(
        !run.stderr.contains('\x1b') && !run.stderr.contains('\x07'),
        "a control character reached the terminal\n{run:?}",
        run = run.stderr
    );
    says(&run, r"a\x1b]0;pwned\x07b\x1b[2J.txt");
    says(&run, r"new\nssh-ec2: fake line");
    says(&run, r"out/\x1b[5mblink");
    says(
        &run,
        r"c\x1b[31mred.txt changed both here and on the instance",
    );
    assert!(
        !run.stderr
            .lines()
            .any(|l| l.starts_with("ssh-ec2: fake line")),
        "{run}"
    );
    assert_eq!(
        std::fs::read_to_string(project.path().join("new\nssh-ec2: fake line"))
            .ok()
            .as_deref(),
        Some("x"),
        "the file itself came home, its name verbatim\n{run}"
    );
}

#[test]
fn outputs_written_where_the_rules_keep_them_are_named_before_the_instance_is_gone() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(".rsyncignore", "outputs/\n*.tmp\n");
    project.write("train.py", "print(1)\n");
    let outside = tempfile::tempdir().unwrap();

    let run = Run::of(project.ssh_ec2(&cloud).arg(format!(
        "mkdir -p outputs && for i in 1 2 3 4 5 6 7; do echo $i > outputs/model-$i.bin; done; \
         echo x > cache.tmp; mkdir -p .aws && echo k > .aws/credentials; \
         ln -s {} scratch; echo fine > fine.txt",
        outside.path().display()
    )));
    run.assert_code(0);
    assert_eq!(project.read("fine.txt").as_deref(), Some("fine\n"), "{run}");
    assert!(!project.path().join("outputs").exists(), "{run}");
    says(
        &run,
        "held back on the instance, 8 files that differ from yours: cache.tmp, \
         outputs/model-1.bin, outputs/model-2.bin, outputs/model-3.bin, outputs/model-4.bin \
         and 3 more (excluded by .rsyncignore",
    );
    says(
        &run,
        "held back on the instance, 1 file that differs from yours: .aws/credentials \
         (credentials",
    );
    says(
        &run,
        "held back on the instance, 1 file that differs from yours: scratch (links leading out",
    );
    assert_terminated(&cloud, &run);
}

#[test]
fn aws_keys_stay_home_at_any_depth_and_what_cannot_be_checked_stays_too() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let held_back = [
        ("sub/deep/.env", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"),
        (
            "deploy/credentials",
            "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
        ),
        (
            "alice_accessKeys.csv",
            "Access key ID,Secret access key\nAKIAIOSFODNN7EXAMPLE,CANARY\n",
        ),
        ("services/api/.env.prod", "TOKEN_ID=ASIAY34FZKBOKMUTVV7A\n"),
        ("config/broken.env", "A=\"a quote never closed\n"),
    ];
    for (path, text) in held_back {
        project.write(path, text);
    }
    project.write(".env.local", "WANDB_API_KEY=for-the-job\n");
    project.write("sub/deep/settings.env", "BATCH=32\n");
    project.write("data/credentials.txt", "not a key file\n");

    // Left running, to look at what it holds.
    let run = Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"]));
    run.assert_code(0);
    for (path, _) in held_back {
        assert!(
            !cloud.remote(&project).join(path).exists(),
            "{path} reached the instance\n{run}"
        );
        says(&run, path);
    }
    says(&run, "config/broken.env (not checked for AWS keys");
    for synced in [
        ".env.local",
        "sub/deep/settings.env",
        "data/credentials.txt",
    ] {
        assert!(
            cloud.remote(&project).join(synced).exists(),
            "{synced} holds no key: it is synced\n{run}"
        );
    }
    let end = Run::of(project.ssh_ec2(&cloud).arg("true"));
    end.assert_code(0);
    assert_terminated(&cloud, &end);
}
