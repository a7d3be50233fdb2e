//! For the admin: `--setup` (a dry run changes nothing, a second run changes nothing, drift is
//! repaired).

use crate::common;

use std::collections::BTreeMap;

use common::{Project, Run, TestCloud};
use serde_json::Value;

use super::USER_POLICY;

/// What `--setup` manages, as text: the account's own policies (default document and number
/// of versions), groups and their policies, roles (trust and inline policies), and instance
/// profiles with their roles.
fn iam_state(cloud: &TestCloud) -> String {
    let iam = cloud.iam();
    cloud.block_on(async {
        let mut state = BTreeMap::new();
        policies_state(&iam, &mut state).await;
        for group in iam.list_groups().send().await.unwrap().groups() {
            let name = group.group_name();
            let attached = iam
                .list_attached_group_policies()
                .group_name(name)
                .send()
                .await
                .unwrap();
            let arns: Vec<_> = attached
                .attached_policies()
                .iter()
                .map(|p| p.policy_arn())
                .collect();
            state.insert(format!("group {name}"), format!("{arns:?}"));
        }
        roles_state(&iam, &mut state).await;
        let profiles = iam.list_instance_profiles().send().await.unwrap();
        for profile in profiles.instance_profiles() {
            let roles: Vec<_> = profile.roles().iter().map(|r| r.role_name()).collect();
            state.insert(
                format!("profile {}", profile.instance_profile_name()),
                format!("{roles:?}"),
            );
        }
        state
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

/// A policy document as IAM hands it back (URL-encoded), as JSON (or the text, if not JSON).
fn decode(doc: &str) -> Value {
    let text = percent_encoding::percent_decode_str(doc)
        .decode_utf8_lossy()
        .into_owned();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The account's own policies: their versions and default document.
async fn policies_state(iam: &aws_sdk_iam::Client, state: &mut BTreeMap<String, String>) {
    let policies = iam
        .list_policies()
        .scope(aws_sdk_iam::types::PolicyScopeType::Local)
        .send()
        .await
        .unwrap();
    for policy in policies.policies() {
        let arn = policy.arn().unwrap();
        let versions = iam
            .list_policy_versions()
            .policy_arn(arn)
            .send()
            .await
            .unwrap();
        let default = versions
            .versions()
            .iter()
            .find(|v| v.is_default_version())
            .unwrap();
        let document = iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(default.version_id().unwrap())
            .send()
            .await
            .unwrap();
        let ids: Vec<_> = versions.versions().iter().map(|v| v.version_id()).collect();
        state.insert(
            format!("policy {arn}"),
            format!(
                "versions {ids:?}, default {:?}: {}",
                default.version_id(),
                decode(document.policy_version().unwrap().document().unwrap())
            ),
        );
    }
}

/// The roles: their trust and inline policies.
async fn roles_state(iam: &aws_sdk_iam::Client, state: &mut BTreeMap<String, String>) {
    for role in iam.list_roles().send().await.unwrap().roles() {
        let name = role.role_name();
        let full = iam.get_role().role_name(name).send().await.unwrap();
        let trust = decode(full.role().unwrap().assume_role_policy_document().unwrap());
        let mut inline = Vec::new();
        let names = iam
            .list_role_policies()
            .role_name(name)
            .send()
            .await
            .unwrap();
        for policy in names.policy_names() {
            let found = iam
                .get_role_policy()
                .role_name(name)
                .policy_name(policy)
                .send()
                .await
                .unwrap();
            inline.push(format!("{policy}: {}", decode(found.policy_document())));
        }
        state.insert(format!("role {name}"), format!("trust {trust}; {inline:?}"));
    }
}

/// The lines of a `--setup` output that report a change (or a would-be change).
fn changes(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.contains(": ") && !l.ends_with(": unchanged"))
        .filter(|l| !l.starts_with("dry run") && !l.starts_with("Users of"))
        .map(str::to_string)
        .collect()
}

#[test]
fn setup_dry_run_changes_nothing_a_second_setup_changes_nothing_and_drift_is_repaired() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let empty = iam_state(&cloud);

    let dry = Run::of(project.ssh_ec2(&cloud).args(["--setup", "--dry-run"]));
    dry.assert_code(0);
    assert_eq!(iam_state(&cloud), empty, "a dry run changed IAM\n{dry}");
    let expected = [
        "policy SshEc2Access",
        "group SshEc2",
        "policy SshEc2Access attached to group SshEc2",
        "role ssh-ec2-s3-read-only (trusted by EC2)",
        "policy s3-read-only of role ssh-ec2-s3-read-only",
        "instance profile ssh-ec2-s3-read-only (holding role ssh-ec2-s3-read-only)",
        "role ssh-ec2-s3-read-write (trusted by EC2)",
        "policy s3-read-write of role ssh-ec2-s3-read-write",
        "instance profile ssh-ec2-s3-read-write (holding role ssh-ec2-s3-read-write)",
    ];
    let would: Vec<String> = expected
        .iter()
        .map(|what| format!("{what}: would create"))
        .collect();
    assert_eq!(changes(&dry), would, "{dry}");

    let first = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    first.assert_code(0);
    assert_eq!(changes(&first).len(), expected.len(), "{first}");
    assert!(
        changes(&first).iter().all(|l| l.ends_with(": created")),
        "{first}"
    );
    let set_up = iam_state(&cloud);
    assert!(
        set_up.contains("profile ssh-ec2-s3-read-write = [\"ssh-ec2-s3-read-write\"]"),
        "{set_up}"
    );
    let user_policy: Value = serde_json::from_str(USER_POLICY).unwrap();
    assert!(
        set_up.contains(&format!("default Some(\"v1\"): {user_policy}")),
        "the policy is the file's\n{set_up}"
    );

    let second = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    second.assert_code(0);
    assert_eq!(changes(&second), Vec::<String>::new(), "{second}");
    assert_eq!(iam_state(&cloud), set_up, "a second --setup changed IAM");

    drift(&cloud);
    let drifted = iam_state(&cloud);
    let dry = Run::of(project.ssh_ec2(&cloud).args(["--setup", "--dry-run"]));
    dry.assert_code(0);
    assert_eq!(iam_state(&cloud), drifted, "a dry run changed IAM\n{dry}");
    let repairs = [
        "policy SshEc2Access (arn:aws:iam::123456789012:policy/SshEc2Access): would update",
        "role ssh-ec2-s3-read-only (trusted by EC2): would update",
        "policy s3-read-write of role ssh-ec2-s3-read-write: would create",
        "instance profile ssh-ec2-s3-read-write (holding role ssh-ec2-s3-read-write): would update",
    ];
    assert_eq!(changes(&dry), repairs, "{dry}");

    let repair = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    repair.assert_code(0);
    assert_eq!(changes(&repair), done(&repairs), "{repair}");
    let repaired = iam_state(&cloud);
    // Five versions still: the oldest (v1) made room for v6, the file's again.
    assert!(
        repaired.contains(&format!(
            "versions [Some(\"v2\"), Some(\"v3\"), Some(\"v4\"), Some(\"v5\"), Some(\"v6\")], \
             default Some(\"v6\"): {user_policy}"
        )),
        "{repaired}"
    );
    assert_eq!(
        without_policies(&repaired),
        without_policies(&set_up),
        "roles, profiles and group are as --setup made them"
    );
    let again = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    assert_eq!(changes(&again), Vec::<String>::new(), "{again}");
    assert_eq!(iam_state(&cloud), repaired);
}

/// What someone does behind --setup's back: edits the policy four times (IAM keeps five
/// versions at most), the trust of a role, and removes the other role's permissions and
/// profile's role.
fn drift(cloud: &TestCloud) {
    let iam = cloud.iam();
    cloud.block_on(async {
        let arn = "arn:aws:iam::123456789012:policy/SshEc2Access";
        for n in 0..4 {
            let edited = format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"ec2:DescribeRegions","Resource":"*","Sid":"Edit{n}"}}]}}"#
            );
            iam.create_policy_version()
                .policy_arn(arn)
                .policy_document(edited)
                .set_as_default(true)
                .send()
                .await
                .unwrap();
        }
        iam.update_assume_role_policy()
            .role_name("ssh-ec2-s3-read-only")
            .policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
            )
            .send()
            .await
            .unwrap();
        iam.delete_role_policy()
            .role_name("ssh-ec2-s3-read-write")
            .policy_name("s3-read-write")
            .send()
            .await
            .unwrap();
        iam.remove_role_from_instance_profile()
            .instance_profile_name("ssh-ec2-s3-read-write")
            .role_name("ssh-ec2-s3-read-write")
            .send()
            .await
            .unwrap();
    });
}

/// The lines --setup prints having made `would` (its dry run's lines) happen.
fn done(would: &[&str]) -> Vec<String> {
    (would.iter())
        .map(|l| {
            l.replace("would ", "")
                .replace(": update", ": updated")
                .replace(": create", ": created")
        })
        .collect()
}

/// An `iam_state` without its policies (and their versions).
fn without_policies(state: &str) -> String {
    state
        .lines()
        .filter(|l| !l.starts_with("policy "))
        .collect::<Vec<_>>()
        .join("\n")
}
