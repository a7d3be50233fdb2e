//! For the admin: `--setup` (a dry run changes nothing, a second run changes nothing, drift is
//! repaired), the user policy of policies/ under moto's IAM enforcement (what a user holding it
//! can do, and that each of its EC2 actions is needed), and `--security-group` for accounts
//! whose users may not create security groups.
//!
//! One module a theme; the helpers they share (the user policy, IAM users, runs as one) are here.

mod security_group;
mod setup;
mod user_policy;

use crate::common;

use std::process::Command;

use common::{CloudOptions, Project, Run, TestCloud};
use serde_json::Value;

const USER_POLICY: &str = include_str!("../../../policies/ssh-ec2-user.json");

/// An IAM user's access key.
struct User {
    key_id: String,
    secret: String,
}

fn iam_cloud() -> TestCloud {
    TestCloud::start_with(CloudOptions {
        iam: true,
        ..Default::default()
    })
}

/// The user policy as moto can check it. moto authorizes the action only: it checks an EC2
/// request against the resource `*`, so a statement limited to ARNs never matches it, and it
/// ignores the tag conditions. Each statement's resources are widened to `*` (conditions are
/// kept; moto does not evaluate them): what is proven is the list of actions, not the resource
/// and tag limits (policies/README.md says so).
fn as_moto_checks_it(policy: &str) -> Value {
    let mut policy: Value = serde_json::from_str(policy).unwrap();
    for statement in policy["Statement"].as_array_mut().unwrap() {
        statement["Resource"] = Value::from("*");
    }
    policy
}

fn actions(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(action) => vec![action.clone()],
        Value::Array(actions) => actions
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect(),
        other => panic!("unexpected Action {other}"),
    }
}

/// The policy without `action`, in every statement (a statement left with none goes).
fn without(policy: &Value, action: &str) -> Value {
    let mut policy = policy.clone();
    let statements = policy["Statement"].as_array_mut().unwrap();
    for statement in statements.iter_mut() {
        let left: Vec<String> = actions(statement)
            .into_iter()
            .filter(|a| a != action)
            .collect();
        statement["Action"] = Value::from(left);
    }
    statements.retain(|s| !s["Action"].as_array().unwrap().is_empty());
    policy
}

/// A new IAM user holding only `policy` (inline), with an access key.
fn create_user(cloud: &TestCloud, name: &str, policy: &Value) -> User {
    let iam = cloud.iam();
    cloud.block_on(async {
        iam.create_user().user_name(name).send().await.unwrap();
        iam.put_user_policy()
            .user_name(name)
            .policy_name("ssh-ec2")
            .policy_document(policy.to_string())
            .send()
            .await
            .unwrap();
        let key = iam
            .create_access_key()
            .user_name(name)
            .send()
            .await
            .unwrap();
        let key = key.access_key().unwrap();
        User {
            key_id: key.access_key_id().to_string(),
            secret: key.secret_access_key().to_string(),
        }
    })
}

/// ssh-ec2 in `project` as `user`.
fn as_user(project: &Project, cloud: &TestCloud, user: &User) -> Command {
    let mut command = project.ssh_ec2(cloud);
    command
        .env("AWS_ACCESS_KEY_ID", &user.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &user.secret);
    command
}

/// Asserts that `run` failed and that its error names `action`.
fn assert_refused(run: &Run, action: &str) {
    assert_eq!(
        run.code,
        Some(255),
        "expected a failure naming {action}\n{run}"
    );
    assert!(
        run.stderr.contains(action),
        "the error does not name {action}\n{run}"
    );
}
