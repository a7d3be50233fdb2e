//! How ssh-ec2 marks what it creates: the tags that say whose an instance (or a group) is and
//! what a run needs to know of it later, and EC2 filters that match them exactly.

use aws_sdk_ec2::types::{Filter, ResourceType, TagSpecification};

pub(super) const TAG_OWNER: &str = "ssh-ec2:owner";
/// This machine's id (src/machine.rs); instances of the first version have none.
pub(super) const TAG_MACHINE: &str = "ssh-ec2:machine";
/// The host name: for people reading the tags, and what the first version went by.
pub(super) const TAG_HOST: &str = "ssh-ec2:host";
pub(super) const TAG_DIR: &str = "ssh-ec2:dir";
/// The security group made for this instance, deleted once it is terminated (an admin-made
/// group is not tagged, so it is never changed nor deleted).
pub(super) const TAG_SECURITY_GROUP: &str = "ssh-ec2:security-group";
/// The login user, so a later run need not guess it again.
pub(super) const TAG_USER: &str = "ssh-ec2:user";
/// The launch that made the instance (see fleet::journal): found by it after a lost answer.
pub(super) const TAG_LAUNCH: &str = "ssh-ec2:launch";
/// When the instance stops itself (its dead-man switch, see `remote::watchdog`), ISO 8601 UTC;
/// kept current by every run, shown by --list, acted on by --gc.
pub(super) const TAG_EXPIRES_AT: &str = "ssh-ec2:expires-at";

/// Whose instances: an owner's, launched from this machine (known by its id, and by its host
/// name for the first version's instances).
#[derive(Debug, Clone)]
pub struct Owner {
    pub name: String,
    pub machine: String,
    pub host: String,
}

impl Owner {
    /// Carries exactly this owner's tag (EC2's tag filters match by pattern).
    pub(super) fn same_owner(&self, tags: &[aws_sdk_ec2::types::Tag]) -> bool {
        tag_of(tags, TAG_OWNER) == Some(&self.name)
    }

    /// Launched from this machine (whatever the owner and directory). An instance without a
    /// machine tag was launched by the first version, which went by the host name.
    pub(super) fn same_machine(&self, tags: &[aws_sdk_ec2::types::Tag]) -> bool {
        match tag_of(tags, TAG_MACHINE) {
            Some(machine) => machine == self.machine,
            None => tag_of(tags, TAG_HOST) == Some(&self.host),
        }
    }
}

/// Who and what an instance belongs to: a directory on a machine, for an owner.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub owner: Owner,
    pub dir: String,
}

impl Ownership {
    /// The tags that mark a resource as this directory's.
    pub fn tags(&self) -> Vec<(String, String)> {
        vec![
            (TAG_OWNER.into(), self.owner.name.clone()),
            (TAG_MACHINE.into(), self.owner.machine.clone()),
            (TAG_HOST.into(), self.owner.host.clone()),
            (TAG_DIR.into(), self.dir.clone()),
        ]
    }

    /// Compares the tags exactly (EC2 filters treat `*` and `?` as wildcards).
    pub(super) fn owns(&self, tags: &[aws_sdk_ec2::types::Tag]) -> bool {
        self.owner.same_owner(tags)
            && tag_of(tags, TAG_DIR) == Some(&self.dir)
            && self.owner.same_machine(tags)
    }
}

pub(super) fn tag_of<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The EC2 filter on tag `key` that matches `value` only.
pub(super) fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(filter_value(value))
        .build()
}

/// An EC2 filter value that matches `text` only: `*` and `?` are wildcards there, and `\`
/// escapes them (and itself).
fn filter_value(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub(super) fn tag_specification(kind: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    let tags = tags
        .iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tags.collect()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Tag;

    fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
        pairs
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
            .collect()
    }

    #[test]
    fn an_instance_is_ours_by_exact_tags_and_machine_id_else_by_host_name() {
        let ours = Ownership {
            owner: Owner {
                name: "ppr".into(),
                machine: "0123abcd".into(),
                host: "laptop".into(),
            },
            dir: "/w/exp?".into(),
        };
        let launched: Vec<Tag> = ours
            .tags()
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        assert!(ours.owns(&launched));
        let renamed = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_MACHINE, "0123abcd"),
            (TAG_HOST, "laptop.vpn"),
            (TAG_DIR, "/w/exp?"),
        ]);
        assert!(
            ours.owns(&renamed),
            "the host name changed, not the machine"
        );
        let legacy = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_HOST, "laptop"),
            (TAG_DIR, "/w/exp?"),
        ]);
        assert!(ours.owns(&legacy), "launched by the first version");
        let other_machine = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_MACHINE, "ffff0000"),
            (TAG_HOST, "laptop"),
            (TAG_DIR, "/w/exp?"),
        ]);
        assert!(
            !ours.owns(&other_machine),
            "same host name, another machine"
        );
        let wildcard_match = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_MACHINE, "0123abcd"),
            (TAG_DIR, "/w/exp1"),
        ]);
        assert!(!ours.owns(&wildcard_match));
        assert_eq!(filter_value(r"/w/a*b?c\d"), r"/w/a\*b\?c\\d");
    }
}
