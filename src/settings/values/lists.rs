//! Tags, and the comma lists of instance types and subnets.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

/// A user tag `KEY=VALUE` for the instance and the resources of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl FromStr for Tag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{}` is not a tag: write KEY=VALUE", s.escape_debug()))?;
        check_tag(key, value)?;
        Ok(Self {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

fn check_tag(key: &str, value: &str) -> Result<(), String> {
    let shown = || format!("{}={}", key.escape_debug(), value.escape_debug());
    if key.is_empty() || key.len() > 128 || value.len() > 256 {
        return Err(format!(
            "tag `{}`: keys are 1-128 characters and values at most 256",
            shown()
        ));
    }
    // Tags are printed (--list) and may reach a remote command line: nothing there may drive a
    // terminal or end a line.
    if key.chars().chain(value.chars()).any(char::is_control) {
        return Err(format!(
            "tag `{}`: control characters (newlines, tabs, escapes) are refused",
            shown()
        ));
    }
    if key.starts_with("aws:") || key.starts_with("ssh-ec2:") || key == "Name" {
        return Err(format!(
            "tag key `{key}` is reserved: aws:* belongs to AWS, ssh-ec2:* to this tool, Name to --name"
        ));
    }
    Ok(())
}

/// User tags, merged key by key across layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Tags(pub BTreeMap<String, String>);

impl TryFrom<BTreeMap<String, String>> for Tags {
    type Error = String;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, String> {
        map.iter().try_for_each(|(k, v)| check_tag(k, v))?;
        Ok(Self(map))
    }
}

impl FromStr for Tags {
    type Err = String;
    /// `KEY=VALUE,KEY=VALUE`, the form of the SSH_EC2_TAGS variable.
    fn from_str(s: &str) -> Result<Self, String> {
        let tags = s
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().parse::<Tag>().map(|t| (t.key, t.value)))
            .collect::<Result<_, _>>()?;
        Ok(Self(tags))
    }
}

impl FromIterator<Tag> for Tags {
    fn from_iter<I: IntoIterator<Item = Tag>>(tags: I) -> Self {
        Self(tags.into_iter().map(|t| (t.key, t.value)).collect())
    }
}

/// Instance types to fall back on, in order (`T1,T2` in a flag or variable, a list in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct InstanceTypes(pub Vec<String>);

impl FromStr for InstanceTypes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_list(s, "instance types", "g5.xlarge,g6.xlarge").map(Self)
    }
}

/// Subnets to launch in, in order, moving on when one has no capacity (`S1,S2` in a flag or
/// variable, a list in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SubnetIds(pub Vec<String>);

impl FromStr for SubnetIds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_list(s, "subnet ids", "subnet-0a1b,subnet-2c3d").map(Self)
    }
}

/// `A,B` (spaces around items ignored), none of them empty.
fn comma_list(s: &str, what: &str, example: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = s.split(',').map(|t| t.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(format!(
            "`{s}` is not a list of {what}: write e.g. {example}"
        ));
    }
    Ok(items)
}
