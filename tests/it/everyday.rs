//! Everyday use beside a run: `--dry-run` (and `--json`), the price before a launch and the
//! cost after it, `--ssh-config` used by the real OpenSSH client.

use crate::common;

use std::path::Path;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, instance_id, state_of};
use serde_json::{Value, json};

/// eu-central-1 in data/prices.toml, the test bed's region.
const G4DN_PRICE: &str = "$0.6580/hour";

#[test]
fn dry_run_creates_nothing_and_names_the_image_the_type_and_the_price() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("train.py", "print('hi')\n");
    project.write("data/set.csv", "a,b\n1,2\n");
    project.write("id_ed25519", "a private key: never synced\n");

    let run = Run::of(project.ssh_ec2(&cloud).args(["--dry-run", "make", "train"]));
    run.assert_code(0);
    let newest = &cloud.amis["ubuntu_new"];
    // What checkip answers: the laptop, as the instances see it.
    let caller = format!("{}/32", cloud.laptop.address);
    for expected in [
        "nothing was created",
        newest.as_str(),
        "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261015",
        "login user ubuntu",
        "g4dn.xlarge: 4 vCPUs",
        caller.as_str(),
        "make train",
        "end of life       terminate",
        "lifetime          it stops itself at ",
        "2 files",
        G4DN_PRICE,
        "yes (RunInstances with DryRun answered DryRunOperation)",
        "secrets elided (-v shows them)",
    ] {
        assert!(run.stdout.contains(expected), "`{expected}` missing\n{run}");
    }
    assert!(!run.stdout.contains("#cloud-config"), "only with -v\n{run}");
    let verbose = Run::of(project.ssh_ec2(&cloud).args(["--dry-run", "-v", "true"]));
    verbose.assert_code(0);
    for expected in [
        "#cloud-config",
        "(elided: the instance's ed25519 host private key",
    ] {
        assert!(verbose.stdout.contains(expected), "`{expected}`\n{verbose}");
    }
    assert!(!verbose.stdout.contains("PRIVATE KEY-----"), "{verbose}");

    let json = Run::of(project.ssh_ec2(&cloud).args(["--dry-run", "--json"]));
    json.assert_code(0);
    let report: Value = serde_json::from_str(&json.stdout).expect("--json prints JSON");
    let launch = &report["launch"];
    assert_eq!(launch["image_id"], newest.as_str(), "{json}");
    assert_eq!(launch["instance_type"]["name"], "g4dn.xlarge");
    assert!(
        launch["instance_type"]["vcpus"].as_i64() > Some(0),
        "{json}"
    );
    assert!(launch["instance_type"]["memory_mib"].as_i64() > Some(0));
    assert_eq!(launch["allowed"], true);
    assert_eq!(report["price"]["usd"], 0.658);
    assert!(
        report["lifetime"]
            .as_str()
            .is_some_and(|l| l.contains("(--max-lifetime 24h), or after 1h idle")),
        "{json}"
    );
    assert_eq!(report["sync"]["files"], 2, "the private key is held back");
    assert_eq!(report["sync"]["bytes"], 20);
    assert_eq!(report["region"], cloud.region.as_str());
    assert!(report["reuse"].is_null());

    assert!(cloud.instances().is_empty(), "nothing launched");
    assert!(cloud.run_security_groups().is_empty(), "no security group");
    assert!(project.kept_instance_keys().is_empty(), "no keys made");
    cloud.assert_no_bed_errors();
}

#[test]
fn dry_run_shows_what_aws_refuses_and_why() {
    // The refusal AWS gives a user without ec2:RunInstances, and its decoding by STS.
    let cloud = TestCloud::start();
    let project = Project::new();
    let decoded = r#"{"allowed":false,"explicitDeny":false,"context":{"action":"ec2:RunInstances","resource":"arn:aws:ec2:eu-central-1:123456789012:instance/*"}}"#;
    cloud.set_faults(json!([
        {"action": "RunInstances", "params": {"DryRun": "true"}, "error": "UnauthorizedOperation",
         "message": "You are not authorized to perform this operation. Encoded authorization \
                     failure message: ENCODED-REASON"},
        {"action": "DecodeAuthorizationMessage", "params": {"EncodedMessage": "ENCODED-REASON"},
         "answer": format!(
             "<DecodeAuthorizationMessageResponse><DecodeAuthorizationMessageResult>\
              <DecodedMessage>{decoded}</DecodedMessage>\
              </DecodeAuthorizationMessageResult></DecodeAuthorizationMessageResponse>")},
    ]));

    let run = Run::of(project.ssh_ec2(&cloud).arg("--dry-run"));
    run.assert_code(1);
    let verdict = run
        .stdout
        .split_once("AWS allows it     NO\n")
        .unwrap_or_else(|| panic!("{run}"))
        .1;
    assert!(
        verdict.contains("UnauthorizedOperation")
            && verdict.contains(
                "AWS refused ec2:RunInstances on arn:aws:ec2:eu-central-1:123456789012:\
                 instance/*: no policy allows it"
            ),
        "{run}"
    );
    let json = Run::of(project.ssh_ec2(&cloud).args(["--dry-run", "--json"]));
    json.assert_code(1);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["launch"]["allowed"], false, "{json}");
    assert!(
        report["launch"]["refusal"]
            .as_str()
            .unwrap()
            .contains("AWS refused ec2:RunInstances")
    );
    let asked = cloud.calls("RunInstances");
    assert_eq!(asked.len(), 2, "one DryRun request per dry run");
    assert!(asked.iter().all(|c| c["params"]["DryRun"] == "true"));
    assert!(cloud.instances().is_empty());

    // Throttled until the (user's) retries run out: no verdict, so not "refused" either.
    cloud.set_faults(json!([
        {"action": "RunInstances", "params": {"DryRun": "true"}, "error": "RequestLimitExceeded"},
    ]));
    let throttled = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("AWS_MAX_ATTEMPTS", "1")
            .arg("--dry-run"),
    );
    throttled.assert_code(255);
    assert!(
        throttled
            .stderr
            .contains("AWS gave no verdict on the launch")
            && throttled.stderr.contains("RequestLimitExceeded"),
        "{throttled}"
    );
}

#[test]
fn dry_run_says_which_instance_it_would_reuse() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let stopped = Run::of(project.ssh_ec2(&cloud).args(["--stop", "true"]));
    stopped.assert_code(0);
    // 15 GiB at eu-central-1's gp3 price of the shipped table, $0.0952 per GiB-month.
    assert!(
        stopped
            .stderr
            .contains("while stopped, its 15 GiB volume costs about $1.43/month"),
        "{stopped}"
    );
    let id = instance_id(&cloud.instances()[0]);

    let run = Run::of(project.ssh_ec2(&cloud).args(["--dry-run", "--json"]));
    run.assert_code(0);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["reuse"]["id"], id.as_str(), "{run}");
    assert_eq!(report["reuse"]["state"], "stopped");
    assert!(report["launch"].is_null());
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Stopped,
        "left as it was"
    );
    let ended = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--terminate", "--no-rsync", "true"]),
    );
    ended.assert_code(0);
    assert!(
        ended.stderr.contains("for its 15 GiB volume"),
        "a reused instance's volume is priced from its launch\n{ended}"
    );
}

#[test]
fn a_launch_says_its_price_first_and_the_run_its_cost_last() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let run = Run::of(project.ssh_ec2(&cloud).arg("true"));
    run.assert_code(0);
    let price_line = format!("g4dn.xlarge in {}: {G4DN_PRICE} (on demand", cloud.region);
    let price_at = run
        .stderr
        .find(&price_line)
        .unwrap_or_else(|| panic!("{run}"));
    let launch_at = run
        .stderr
        .find("launched i-")
        .unwrap_or_else(|| panic!("{run}"));
    assert!(
        price_at < launch_at,
        "the price comes before the launch\n{run}"
    );
    let summary = run
        .stderr
        .lines()
        .find(|l| l.contains("terminated, "))
        .unwrap_or_else(|| panic!("{run}"));
    assert!(
        summary.contains(", about $")
            && summary.contains("instance at $0.6580/hour + $")
            && summary.contains("for its 15 GiB volume"),
        "the image's root volume is priced too\n{run}"
    );

    let unknown = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--instance-type", "t2.nano", "true"]),
    );
    unknown.assert_code(0);
    assert!(
        unknown
            .stderr
            .contains("t2.nano in eu-central-1: price unknown"),
        "{unknown}"
    );
    assert!(unknown.stderr.contains("cost unknown"), "{unknown}");
}

/// The OpenSSH client on the laptop, with only `config`.
fn ssh(cloud: &TestCloud, config: &Path, alias: &str, command: &str) -> std::process::Output {
    cloud
        .laptop
        .command("/usr/bin/ssh")
        .arg("-F")
        .arg(config)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=30",
            alias,
            command,
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the OpenSSH client `ssh` is needed: run tests/testbed/install")
}

#[test]
fn ssh_config_lets_openssh_in_with_the_pinned_host_key_only() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("note.txt", "from the laptop\n");
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let id = instance_id(&cloud.instances()[0]);

    let alias = format!(
        "ssh-ec2-{}",
        project.path().file_name().unwrap().to_str().unwrap()
    );
    printed_block_lets_openssh_in_with_the_pinned_host_key_only(&cloud, &project, &id, &alias);

    // --install: included by ~/.ssh/config (once, at its top), gone with the instance.
    let ssh_dir = project.home().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let user_config = ssh_dir.join("config");
    std::fs::write(&user_config, "Host elsewhere\n    User nobody\n").unwrap();
    for _ in 0..2 {
        Run::of(project.ssh_ec2(&cloud).args(["--ssh-config", "--install"])).assert_code(0);
    }
    let text = std::fs::read_to_string(&user_config).unwrap();
    let includes: Vec<_> = text.lines().filter(|l| l.starts_with("Include ")).collect();
    assert_eq!(includes.len(), 1, "{text}");
    let first_directive = text.lines().find(|l| !l.starts_with('#')).unwrap();
    assert!(first_directive.starts_with("Include "), "{text}");
    assert!(
        text.contains("Host elsewhere\n    User nobody\n"),
        "kept: {text}"
    );
    let entry = ssh_dir.join("ssh-ec2").join(format!("{id}.conf"));
    // An address gone stale (a stopped instance starts with a new one): the next run that
    // reaches the instance writes the one it reached.
    let installed = std::fs::read_to_string(&entry).unwrap();
    let address = cloud.instances()[0]
        .private_ip_address()
        .unwrap()
        .to_string();
    let stale = installed.replace(&format!("HostName {address}"), "HostName 192.0.2.1");
    assert_ne!(stale, installed);
    std::fs::write(&entry, stale).unwrap();
    Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--leave", "--no-rsync", "true"]),
    )
    .assert_code(0);
    assert_eq!(std::fs::read_to_string(&entry).unwrap(), installed);
    let out = ssh(&cloud, &user_config, &alias, "echo in");
    assert!(
        out.status.success(),
        "ssh through ~/.ssh/config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");

    Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--terminate", "--no-rsync", "true"]),
    )
    .assert_code(0);
    assert!(!entry.exists(), "the entry goes with the instance");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated
    );
    cloud.assert_no_bed_errors();
}

/// The printed block, in a config of its own: OpenSSH gets in with it, and refuses the host
/// key filed under another name.
fn printed_block_lets_openssh_in_with_the_pinned_host_key_only(
    cloud: &TestCloud,
    project: &Project,
    id: &str,
    alias: &str,
) {
    let printed = Run::of(project.ssh_ec2(cloud).arg("--ssh-config"));
    printed.assert_code(0);
    assert!(
        printed.stdout.contains(&format!("Host {alias}\n")),
        "{printed}"
    );
    assert!(printed.stdout.contains("StrictHostKeyChecking yes"));
    assert!(printed.stdout.contains(&format!("HostKeyAlias {id}")));
    let config = project.home().join("printed.conf");
    std::fs::write(&config, &printed.stdout).unwrap();
    let dir = project.path().file_name().unwrap().to_str().unwrap();
    let out = ssh(cloud, &config, alias, &format!("cat {dir}/note.txt"));
    assert!(
        out.status.success(),
        "ssh with the printed block: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the laptop\n");

    // The same block with the host key filed under another name: OpenSSH must refuse.
    let unpinned = printed.stdout.replace(
        &format!("HostKeyAlias {id}"),
        "HostKeyAlias not-the-instance",
    );
    std::fs::write(&config, unpinned).unwrap();
    let refused = ssh(cloud, &config, alias, "true");
    assert!(!refused.status.success(), "host-key checking is on");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("host key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn ssh_config_without_a_running_instance_says_how_to_get_one_and_flags_go_together() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let none = Run::of(project.ssh_ec2(&cloud).arg("--ssh-config"));
    none.assert_code(255);
    assert!(
        none.stderr.contains("has no instance") && none.stderr.contains("ssh-ec2 --leave true"),
        "{none}"
    );
    Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--stop", "--no-rsync", "true"]),
    )
    .assert_code(0);
    let stopped = Run::of(project.ssh_ec2(&cloud).args(["--ssh-config", "--install"]));
    stopped.assert_code(255);
    assert!(stopped.stderr.contains("is stopped"), "{stopped}");
    assert!(
        !project.home().join(".ssh").exists(),
        "nothing installed\n{stopped}"
    );

    for (flags, says) in [
        (&["--json"][..], "--dry-run"),
        (&["--install"][..], "--ssh-config"),
        (&["--ssh-config", "--dry-run"][..], "cannot be used with"),
        (&["--dry-run", "--finish"][..], "cannot be used with"),
    ] {
        let refused = Run::of(project.ssh_ec2_without_cloud().args(flags));
        refused.assert_code(255);
        assert!(refused.stderr.contains(says), "{flags:?}\n{refused}");
    }
    Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--terminate", "--no-rsync", "true"]),
    )
    .assert_code(0);
    assert!(
        cloud
            .instances()
            .iter()
            .all(|i| state_of(i) == InstanceStateName::Terminated)
    );
}
