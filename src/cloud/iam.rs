//! The IAM side of `--setup`: a managed policy, a group carrying it, and roles with their
//! instance profiles, each created or brought up to date, and left alone when it already is.
//! With `apply` false nothing is written: only what would change is said.

use anyhow::{Context, Result};
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::types::PolicyScopeType;

use super::{AwsResultExt, Cloud};

/// A managed policy keeps at most this many versions.
const MAX_POLICY_VERSIONS: usize = 5;

/// What `--setup` did (or would do) to one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Unchanged,
}

impl Change {
    /// As printed: "created", or "would create" in a dry run.
    pub fn said(self, applied: bool) -> &'static str {
        match (self, applied) {
            (Change::Created, true) => "created",
            (Change::Created, false) => "would create",
            (Change::Updated, true) => "updated",
            (Change::Updated, false) => "would update",
            (Change::Unchanged, _) => "unchanged",
        }
    }
}

/// Two policy documents are the same policy when they are the same JSON, whatever the spacing.
/// IAM hands documents back URL-encoded.
fn same_policy(current_encoded: &str, wanted: &str) -> bool {
    let current = percent_encoding::percent_decode_str(current_encoded).decode_utf8_lossy();
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    match (parse(&current), parse(wanted)) {
        (Some(current), Some(wanted)) => current == wanted,
        _ => false,
    }
}

fn is_missing<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("NoSuchEntity")
}

/// Where a managed policy stands.
pub struct ManagedPolicy {
    /// `None` only when it does not exist yet and nothing was applied.
    pub arn: Option<String>,
    pub change: Change,
}

impl Cloud {
    /// The customer-managed policy `name` with `document` as its default version. An equal
    /// default version is left as it is; a different one gets a new default version, after
    /// the oldest other version is deleted if the policy already has as many as IAM allows.
    pub async fn ensure_managed_policy(
        &self,
        name: &str,
        description: &str,
        document: &str,
        apply: bool,
    ) -> Result<ManagedPolicy> {
        let Some(arn) = self.local_policy_arn(name).await? else {
            if !apply {
                return Ok(ManagedPolicy {
                    arn: None,
                    change: Change::Created,
                });
            }
            return Ok(ManagedPolicy {
                arn: Some(self.create_policy(name, description, document).await?),
                change: Change::Created,
            });
        };
        let versions = self
            .iam
            .list_policy_versions()
            .policy_arn(&arn)
            .send()
            .await
            .explain(format_args!("list the versions of the IAM policy {arn}"))?;
        let mut versions = versions.versions().to_vec();
        let default = versions
            .iter()
            .find(|v| v.is_default_version())
            .and_then(|v| v.version_id())
            .with_context(|| format!("the IAM policy {arn} has no default version"))?;
        let current = self
            .iam
            .get_policy_version()
            .policy_arn(&arn)
            .version_id(default)
            .send()
            .await
            .explain(format_args!("read the IAM policy {arn} ({default})"))?;
        let current = current.policy_version().and_then(|v| v.document());
        if current.is_some_and(|current| same_policy(current, document)) {
            return Ok(ManagedPolicy {
                arn: Some(arn),
                change: Change::Unchanged,
            });
        }
        if apply {
            if versions.len() >= MAX_POLICY_VERSIONS {
                versions.retain(|v| !v.is_default_version());
                versions.sort_by_key(|v| v.create_date().copied());
                if let Some(oldest) = versions.first().and_then(|v| v.version_id()) {
                    self.delete_policy_version(&arn, oldest).await?;
                }
            }
            self.iam
                .create_policy_version()
                .policy_arn(&arn)
                .policy_document(document)
                .set_as_default(true)
                .send()
                .await
                .explain(format_args!("update the IAM policy {arn}"))?;
        }
        Ok(ManagedPolicy {
            arn: Some(arn),
            change: Change::Updated,
        })
    }

    /// Creates the customer-managed policy `name`; its ARN.
    async fn create_policy(&self, name: &str, description: &str, document: &str) -> Result<String> {
        let created = self
            .iam
            .create_policy()
            .policy_name(name)
            .description(description)
            .policy_document(document)
            .send()
            .await
            .explain(format_args!("create the IAM policy {name}"))?;
        let arn = created
            .policy()
            .and_then(|p| p.arn())
            .with_context(|| format!("IAM created the policy {name} without an ARN"))?;
        Ok(arn.to_string())
    }

    /// Makes room for a new version of the policy `arn`, which holds as many as IAM allows.
    async fn delete_policy_version(&self, arn: &str, version: &str) -> Result<()> {
        self.iam
            .delete_policy_version()
            .policy_arn(arn)
            .version_id(version)
            .send()
            .await
            .explain(format_args!(
                "delete the oldest version ({version}) of the IAM policy {arn}, to make room \
                 for a new one"
            ))?;
        Ok(())
    }

    /// The ARN of this account's own managed policy `name`, if it exists.
    async fn local_policy_arn(&self, name: &str) -> Result<Option<String>> {
        let policies = self
            .iam
            .list_policies()
            .scope(PolicyScopeType::Local)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .explain(format_args!("list this account's IAM policies"))?;
        Ok(policies
            .iter()
            .find(|p| p.policy_name() == Some(name))
            .and_then(|p| p.arn())
            .map(str::to_string))
    }

    /// The IAM group `name`.
    pub async fn ensure_group(&self, name: &str, apply: bool) -> Result<Change> {
        match self.iam.get_group().group_name(name).send().await {
            Ok(_) => return Ok(Change::Unchanged),
            Err(e) if is_missing(&e) => {}
            Err(e) => Err(e).explain(format_args!("look up the IAM group {name}"))?,
        }
        if apply {
            self.iam
                .create_group()
                .group_name(name)
                .send()
                .await
                .explain(format_args!("create the IAM group {name}"))?;
        }
        Ok(Change::Created)
    }

    /// The managed policy `policy` attached to the group `group`. With `policy` unknown (a dry
    /// run, before the policy exists), it would be attached.
    pub async fn ensure_group_policy(
        &self,
        group: &str,
        policy: &ManagedPolicy,
        group_change: Change,
        apply: bool,
    ) -> Result<Change> {
        let Some(arn) = &policy.arn else {
            return Ok(Change::Created);
        };
        if !apply && group_change == Change::Created {
            // The group does not exist yet: nothing can be attached to it.
            return Ok(Change::Created);
        }
        let attached = self
            .iam
            .list_attached_group_policies()
            .group_name(group)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .explain(format_args!("list the policies of the IAM group {group}"))?;
        if attached.iter().any(|p| p.policy_arn() == Some(arn)) {
            return Ok(Change::Unchanged);
        }
        if apply {
            self.iam
                .attach_group_policy()
                .group_name(group)
                .policy_arn(arn)
                .send()
                .await
                .explain(format_args!("attach {arn} to the IAM group {group}"))?;
        }
        Ok(Change::Created)
    }

    /// The IAM role `name`, trusting whom `trust` says.
    pub async fn ensure_role(
        &self,
        name: &str,
        description: &str,
        trust: &str,
        apply: bool,
    ) -> Result<Change> {
        let current = match self.iam.get_role().role_name(name).send().await {
            Ok(found) => found
                .role()
                .and_then(|r| r.assume_role_policy_document())
                .map(str::to_string),
            Err(e) if is_missing(&e) => {
                if apply {
                    self.iam
                        .create_role()
                        .role_name(name)
                        .description(description)
                        .assume_role_policy_document(trust)
                        .send()
                        .await
                        .explain(format_args!("create the IAM role {name}"))?;
                }
                return Ok(Change::Created);
            }
            Err(e) => Err(e).explain(format_args!("look up the IAM role {name}"))?,
        };
        if current.is_some_and(|current| same_policy(&current, trust)) {
            return Ok(Change::Unchanged);
        }
        if apply {
            self.iam
                .update_assume_role_policy()
                .role_name(name)
                .policy_document(trust)
                .send()
                .await
                .explain(format_args!(
                    "update the trust policy of the IAM role {name}"
                ))?;
        }
        Ok(Change::Updated)
    }

    /// The inline policy `policy` of the role `role`, as `document`.
    pub async fn ensure_role_policy(
        &self,
        role: &str,
        policy: &str,
        document: &str,
        apply: bool,
    ) -> Result<Change> {
        let found = self
            .iam
            .get_role_policy()
            .role_name(role)
            .policy_name(policy)
            .send()
            .await;
        let change = match found {
            Ok(found) if same_policy(found.policy_document(), document) => {
                return Ok(Change::Unchanged);
            }
            Ok(_) => Change::Updated,
            Err(e) if is_missing(&e) => Change::Created,
            Err(e) => Err(e).explain(format_args!(
                "read the policy {policy} of the IAM role {role}"
            ))?,
        };
        if apply {
            self.iam
                .put_role_policy()
                .role_name(role)
                .policy_name(policy)
                .policy_document(document)
                .send()
                .await
                .explain(format_args!(
                    "write the policy {policy} of the IAM role {role}"
                ))?;
        }
        Ok(change)
    }

    /// The instance profile `name`, holding the role `role` and no other (a profile holds one
    /// role at most).
    pub async fn ensure_instance_profile(
        &self,
        name: &str,
        role: &str,
        apply: bool,
    ) -> Result<Change> {
        let found = self
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await;
        let (change, held) = match found {
            Ok(found) => {
                let held: Vec<String> = found
                    .instance_profile()
                    .map(|p| p.roles())
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.role_name().to_string())
                    .collect();
                if held == [role] {
                    return Ok(Change::Unchanged);
                }
                (Change::Updated, held)
            }
            Err(e) if is_missing(&e) => (Change::Created, Vec::new()),
            Err(e) => Err(e).explain(format_args!("look up the instance profile {name}"))?,
        };
        if !apply {
            return Ok(change);
        }
        if change == Change::Created {
            self.iam
                .create_instance_profile()
                .instance_profile_name(name)
                .send()
                .await
                .explain(format_args!("create the instance profile {name}"))?;
        }
        for other in held.iter().filter(|r| *r != role) {
            self.iam
                .remove_role_from_instance_profile()
                .instance_profile_name(name)
                .role_name(other)
                .send()
                .await
                .explain(format_args!(
                    "remove the role {other} from the instance profile {name}"
                ))?;
        }
        if !held.iter().any(|r| r == role) {
            self.iam
                .add_role_to_instance_profile()
                .instance_profile_name(name)
                .role_name(role)
                .send()
                .await
                .explain(format_args!(
                    "put the role {role} in the instance profile {name}"
                ))?;
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests;
