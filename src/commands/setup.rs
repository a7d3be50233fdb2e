//! `ssh-ec2 --setup`, for an AWS admin: the IAM policy, group, roles and instance profiles of
//! policies/, created or brought up to date; `--dry-run` only says what would change. What it
//! applies is exactly the files of policies/, embedded at build time.

use anyhow::Result;

use crate::cloud::{Account, Change, Cloud};
use crate::printer::Printer;
use crate::settings::Values;
use crate::status::ExitStatus;

/// The managed policy every user of ssh-ec2 needs.
const USER_POLICY: &str = "SshEc2Access";
const USER_POLICY_DOCUMENT: &str = include_str!("../../policies/ssh-ec2-user.json");
/// The group that carries it: users are added to it.
const GROUP: &str = "SshEc2";
const TRUST_POLICY: &str = include_str!("../../policies/ec2-instance-trust.json");

/// An instance role, with its instance profile of the same name. The user policy lets users
/// pass only roles and profiles whose names start with `ssh-ec2-`.
struct InstanceRole {
    name: &'static str,
    /// Its inline policy's name, and the policy.
    policy: &'static str,
    document: &'static str,
    description: &'static str,
}

const ROLES: &[InstanceRole] = &[
    InstanceRole {
        name: "ssh-ec2-s3-read-only",
        policy: "s3-read-only",
        document: include_str!("../../policies/instance-s3-read-only.json"),
        description: "ssh-ec2 instances: read the account's S3 buckets named ssh-ec2-*",
    },
    InstanceRole {
        name: "ssh-ec2-s3-read-write",
        policy: "s3-read-write",
        document: include_str!("../../policies/instance-s3-read-write.json"),
        description: "ssh-ec2 instances: read and write the account's S3 buckets named ssh-ec2-*",
    },
];

pub async fn setup(values: &Values, dry_run: bool, printer: &Printer) -> Result<ExitStatus> {
    // Only the region and profile matter here; IAM itself is global.
    let account = Account {
        region: values.region.clone(),
        profile: values.aws_profile.clone(),
    };
    let cloud = Cloud::connect(&account).await;
    apply(&cloud, !dry_run, printer).await.map_err(|e| {
        e.context(
            "--setup stopped (what it printed above is done): it needs an AWS admin's \
             credentials, allowed to manage IAM policies, groups, roles and instance profiles",
        )
    })
}

async fn apply(cloud: &Cloud, apply: bool, printer: &Printer) -> Result<ExitStatus> {
    let say_line = |line: &str| printer.out(format!("{line}\n"));
    let say = |what: String, change: Change| say_line(&format!("{what}: {}", change.said(apply)));
    if !apply {
        say_line("dry run: nothing is changed")?;
    }
    let policy = cloud
        .ensure_managed_policy(
            USER_POLICY,
            "ssh-ec2 users: launch, reach and end their own tagged instances",
            USER_POLICY_DOCUMENT,
            apply,
        )
        .await?;
    let known = policy
        .arn
        .as_deref()
        .map_or(String::new(), |arn| format!(" ({arn})"));
    say(format!("policy {USER_POLICY}{known}"), policy.change)?;
    let group = cloud.ensure_group(GROUP, apply).await?;
    say(format!("group {GROUP}"), group)?;
    let attached = cloud
        .ensure_group_policy(GROUP, &policy, group, apply)
        .await?;
    say(
        format!("policy {USER_POLICY} attached to group {GROUP}"),
        attached,
    )?;
    for role in ROLES {
        let name = role.name;
        let created = cloud
            .ensure_role(name, role.description, TRUST_POLICY, apply)
            .await?;
        say(format!("role {name} (trusted by EC2)"), created)?;
        let policy = match (created, apply) {
            // A dry run cannot read the policies of a role that does not exist yet.
            (Change::Created, false) => Change::Created,
            _ => {
                cloud
                    .ensure_role_policy(name, role.policy, role.document, apply)
                    .await?
            }
        };
        say(format!("policy {} of role {name}", role.policy), policy)?;
        let profile = cloud.ensure_instance_profile(name, name, apply).await?;
        say(
            format!("instance profile {name} (holding role {name})"),
            profile,
        )?;
    }
    say_line(&format!(
        "Users of ssh-ec2 join the group: aws iam add-user-to-group --group-name {GROUP} \
         --user-name NAME. They pick a role with --instance-profile {}.",
        ROLES[0].name
    ))?;
    Ok(ExitStatus::Success)
}
