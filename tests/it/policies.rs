//! The IAM policies of policies/, read as AWS would evaluate them, which moto cannot do (it
//! ignores conditions: see admin/user_policy.rs): each identity policy passes a real IAM linter
//! (parliament, from PyPI, in the test bed's venv), and the conditions that keep one user from
//! undoing another's ownership are present: tag keys must be named to write or delete tags (an
//! empty `aws:TagKeys` satisfies any `ForAllValues`), instances are launched with IMDSv2
//! required, the S3 roles reach only the account's own buckets, and the per-user variant that
//! policies/README.md describes ties the owner tag to `${aws:username}`.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

const USER_POLICY: &str = include_str!("../../policies/ssh-ec2-user.json");
const S3_POLICIES: [&str; 2] = [
    include_str!("../../policies/instance-s3-read-only.json"),
    include_str!("../../policies/instance-s3-read-write.json"),
];
const OWNER_TAGS: [&str; 2] = [
    "aws:RequestTag/ssh-ec2:owner",
    "aws:ResourceTag/ssh-ec2:owner",
];

fn statements(policy: &Value) -> &Vec<Value> {
    policy["Statement"].as_array().expect("a Statement list")
}

/// A string or a list of strings, as a list.
fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn allows(statement: &Value, action: &str) -> bool {
    strings(&statement["Action"]).contains(&action)
}

fn on(statement: &Value, resource_type: &str) -> bool {
    let kind = format!(":{resource_type}/");
    strings(&statement["Resource"])
        .iter()
        .any(|r| r.contains(&kind))
}

/// The value a statement's condition `operator` requires of `key`.
fn condition<'a>(statement: &'a Value, operator: &str, key: &str) -> &'a Value {
    &statement["Condition"][operator][key]
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a policy is JSON")
}

/// The user policy with each owner condition turned, as policies/README.md tells an admin,
/// from "the tag is there" into "the tag is the caller's IAM user name".
fn owner_is_the_iam_user(policy: &Value) -> Value {
    let mut policy = policy.clone();
    for statement in policy["Statement"].as_array_mut().unwrap() {
        let Some(conditions) = statement
            .get_mut("Condition")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for key in OWNER_TAGS {
            let null = conditions.get_mut("Null").and_then(Value::as_object_mut);
            if null.and_then(|null| null.remove(key)).is_none() {
                continue;
            }
            let equals = conditions.entry("StringEquals").or_insert(json!({}));
            equals[key] = json!("${aws:username}");
        }
        conditions.retain(|_, tests| tests.as_object().is_none_or(|t| !t.is_empty()));
    }
    policy
}

/// What parliament finds in `policy`: each finding's issue, and its detail and location (where
/// parliament puts the actions and the kind of escalation).
fn lint(policy: &Value) -> Vec<(String, Value)> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/.venv/bin/python");
    let script = "import json, sys\n\
                  from parliament import analyze_policy_string\n\
                  found = analyze_policy_string(sys.stdin.read(), include_community_auditors=True)\n\
                  print(json.dumps([[f.issue, {'detail': f.detail, 'location': f.location}] \
                      for f in found.findings]))";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run tests/testbed/install",
                python.display()
            )
        });
    let document = policy.to_string();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), document.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parliament did not run (tests/testbed/install installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<(String, Value)> = serde_json::from_slice(&out.stdout).unwrap();
    findings
}

/// A finding that is the policy's design, not a flaw: passing `ssh-ec2-*` roles to EC2 is
/// what instance profiles are for, and RunInstances and CreateSecurityGroup authorize each
/// resource type apart, so their statements split the types to put a condition on each.
fn by_design(issue: &str, finding: &Value) -> bool {
    let split_by_resource_type = || {
        finding["detail"].as_array().is_some_and(|missing| {
            missing.iter().all(|m| {
                ["ec2:RunInstances", "ec2:CreateSecurityGroup"]
                    .contains(&m["action"].as_str().unwrap_or(""))
            })
        })
    };
    match issue {
        "PERMISSIONS_MANAGEMENT_ACTIONS" => {
            finding["location"]["actions"] == json!(["iam:passrole"])
        }
        "PRIVILEGE_ESCALATION" => finding["location"]["type"] == "CreateEC2WithExistingIP",
        "RESOURCE_MISMATCH" => split_by_resource_type(),
        _ => false,
    }
}

#[test]
fn every_identity_policy_passes_an_iam_linter() {
    let user = parse(USER_POLICY);
    let policies = [("ssh-ec2-user.json", user.clone())]
        .into_iter()
        .chain([("its per-user variant", owner_is_the_iam_user(&user))])
        .chain(S3_POLICIES.map(|text| ("an S3 role's policy", parse(text))));
    for (name, policy) in policies {
        let findings = lint(&policy);
        let flaws: Vec<_> = findings.iter().filter(|(i, d)| !by_design(i, d)).collect();
        assert!(flaws.is_empty(), "parliament finds in {name}: {flaws:#?}");
    }
    // The linter did read the user policy: it sees the role passing the policy exists for.
    let seen: Vec<String> = lint(&user).into_iter().map(|(issue, _)| issue).collect();
    assert!(
        seen.contains(&"PRIVILEGE_ESCALATION".to_string()),
        "{seen:?}"
    );
}

#[test]
fn tags_are_only_written_or_deleted_by_name() {
    let policy = parse(USER_POLICY);
    let tagging: Vec<&Value> = statements(&policy)
        .iter()
        .filter(|s| allows(s, "ec2:CreateTags") || allows(s, "ec2:DeleteTags"))
        .collect();
    assert!(!tagging.is_empty());
    for statement in &tagging {
        // Without it, a request naming no keys (DeleteTags without Tags deletes them all)
        // passes every ForAllValues test.
        assert_eq!(
            condition(statement, "Null", "aws:TagKeys"),
            "false",
            "tag keys must be named: {statement:#}"
        );
    }
    let deleting = tagging
        .iter()
        .find(|s| allows(s, "ec2:DeleteTags"))
        .unwrap();
    assert_eq!(
        condition(deleting, "ForAllValues:StringEquals", "aws:TagKeys"),
        &json!(["ssh-ec2:expires-at"]),
        "only the expiry tag may be deleted"
    );
    assert_eq!(
        condition(deleting, "Null", "aws:ResourceTag/ssh-ec2:owner"),
        "false"
    );
}

#[test]
fn instances_are_launched_tagged_and_with_imds_v2_required() {
    let policy = parse(USER_POLICY);
    let launching = |resource_type: &str| -> Vec<&Value> {
        (statements(&policy).iter())
            .filter(|s| allows(s, "ec2:RunInstances") && on(s, resource_type))
            .collect()
    };
    let instances = launching("instance");
    assert_eq!(instances.len(), 1, "one statement launches instances");
    let instance = instances[0];
    assert_eq!(
        condition(instance, "StringEquals", "ec2:MetadataHttpTokens"),
        "required",
        "{instance:#}"
    );
    assert_eq!(
        condition(instance, "Null", "aws:RequestTag/ssh-ec2:owner"),
        "false"
    );
    // Volumes have no metadata options: a shared statement would refuse every launch.
    for volume in launching("volume") {
        assert!(!on(volume, "instance"), "{volume:#}");
        assert_eq!(
            condition(volume, "Null", "aws:RequestTag/ssh-ec2:owner"),
            "false"
        );
    }
}

#[test]
fn every_change_to_an_instance_or_group_needs_the_owner_tag() {
    let policy = parse(USER_POLICY);
    let changes = [
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:TerminateInstances",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:DeleteSecurityGroup",
        "ec2:DeleteTags",
        // A cluster's: its placement group, and the head moved into the run's SSH group.
        "ec2:DeletePlacementGroup",
        "ec2:ModifyInstanceAttribute",
    ];
    for action in changes {
        let granting: Vec<&Value> = (statements(&policy).iter())
            .filter(|s| allows(s, action))
            .collect();
        assert!(!granting.is_empty(), "{action} is granted");
        for statement in granting {
            assert_eq!(
                condition(statement, "Null", "aws:ResourceTag/ssh-ec2:owner"),
                "false",
                "{action} without the owner tag: {statement:#}"
            );
        }
    }
    // policies/README.md's variant: each user changes only what carries their name.
    let own = owner_is_the_iam_user(&policy);
    let text = own.to_string();
    for key in OWNER_TAGS {
        assert!(
            !text.contains(&format!("\"{key}\":\"false\"")),
            "{key} left as Null"
        );
    }
    for action in changes {
        for statement in statements(&own).iter().filter(|s| allows(s, action)) {
            assert_eq!(
                condition(statement, "StringEquals", "aws:ResourceTag/ssh-ec2:owner"),
                "${aws:username}",
                "{statement:#}"
            );
        }
    }
}

#[test]
fn the_s3_roles_reach_only_the_account_s_own_buckets() {
    for text in S3_POLICIES {
        let policy = parse(text);
        for statement in statements(&policy) {
            // Bucket names are global: another account's `ssh-ec2-…` bucket that lets anyone
            // write would otherwise take the instance's data.
            assert_eq!(
                condition(statement, "StringEquals", "s3:ResourceAccount"),
                "${aws:PrincipalAccount}",
                "{statement:#}"
            );
        }
    }
}

#[test]
fn a_cluster_s_placement_groups_are_made_tagged_and_launched_into_only_when_tagged() {
    let policy = parse(USER_POLICY);
    let on_groups = |action: &str| -> Vec<&Value> {
        (statements(&policy).iter())
            .filter(|s| allows(s, action) && on(s, "placement-group"))
            .collect()
    };
    let creating = on_groups("ec2:CreatePlacementGroup");
    assert!(!creating.is_empty(), "CreatePlacementGroup is granted");
    for statement in creating {
        assert_eq!(
            condition(statement, "Null", "aws:RequestTag/ssh-ec2:owner"),
            "false",
            "{statement:#}"
        );
    }
    let launching = on_groups("ec2:RunInstances");
    assert!(!launching.is_empty(), "launching into a placement group");
    for statement in launching {
        assert_eq!(
            condition(statement, "Null", "aws:ResourceTag/ssh-ec2:owner"),
            "false",
            "{statement:#}"
        );
    }
}
