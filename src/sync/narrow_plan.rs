//! What a narrowed pull (`narrow`) decides as a whole pull would, from the instance's answer
//! rather than rsync's listing of the tree: which of the changed files the rules keep there
//! (asked of a local rsync over an empty copy of their names: the rules look at names and
//! kinds only; a name this side's file system does not keep as it is, one differing only in
//! case on a file system that ignores it, is for a whole pull), then the pull's plan for the
//! others (`pull_plan`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::held::hold_of;
use super::itemize::{Item, Kind, rsync_time};
use super::options::Way;
use super::pull_plan::{Plan, kind_of, plan};
use super::report::Hold;
use super::{LISTING, Manifest, Rsync, contents_of};
use crate::remote::changes::Change;

/// More changes than this are for rsync's listing, which is then as quick.
pub(super) const DECIDED_AT_MOST: usize = 2000;

/// A narrowed pull's decisions on the changed files that are neither logs nor as the last sync
/// left them.
#[derive(Default)]
pub(super) struct Decided {
    /// As a listing would give them, for the plan and what brings them home.
    pub items: Vec<Item>,
    /// Kept there by a rule, and why.
    pub held: Vec<(PathBuf, Hold)>,
}

impl Decided {
    /// The plan for the items, which all changed there.
    pub fn plan(&self, rsync: &Rsync<'_>, manifest: &Manifest) -> Plan<'_> {
        plan(
            &self.items,
            |path| kind_of(&rsync.local_dir.join(path)),
            |item| rsync.unchanged_here(item, manifest),
            |_| false,
        )
    }
}

impl Rsync<'_> {
    /// What the rules keep there among the changed files `changes` (one under a directory they
    /// hide, too), and the others as listed items; `None` when a name did not come out of
    /// rsync as it went in. The rules' verdict comes from a local rsync's dry run over their
    /// names in `temp`, with the pull's filters.
    pub(super) async fn decide(&self, changes: &[&Change], temp: &Path) -> Result<Option<Decided>> {
        if changes.is_empty() {
            return Ok(Some(Decided::default()));
        }
        let names = temp.join("names");
        for change in changes {
            let path = names.join(&change.path);
            let made = (path.parent().map_or(Ok(()), std::fs::create_dir_all))
                .and_then(|()| std::fs::File::create(&path).map(drop));
            made.with_context(|| format!("cannot write in {}", names.display()))?;
        }
        let mut rsync = self.command(Some(Way::Pull));
        rsync
            .args(["--recursive", "--links", "-i", "--debug=FILTER1"])
            .args(LISTING)
            .arg(contents_of(&names))
            .arg(super::nowhere());
        let listed = self.invoke(rsync, None).await?;
        let _ = std::fs::remove_dir_all(&names);
        if let Some(failure) = listed.failure {
            anyhow::bail!("cannot apply the rules to the changed names: {failure}");
        }
        let hidden_by = |path: &Path| {
            (listed.hidden.iter())
                .find(|(hidden, _)| path.starts_with(hidden))
                .map(|(_, pattern)| pattern.as_str())
        };
        let seen: HashSet<&Path> = (listed.items.iter())
            .map(|item| item.path.as_path())
            .collect();
        let mut decided = Decided {
            items: Vec::new(),
            held: Vec::new(),
        };
        for change in changes {
            match hidden_by(&change.path) {
                Some(pattern) => {
                    let why = hold_of(pattern, self.options);
                    decided
                        .held
                        .extend(why.map(|why| (change.path.clone(), why)));
                }
                None if !seen.contains(change.path.as_path()) => return Ok(None),
                None => decided.items.push(Item::changed_there(
                    Kind::File,
                    change.size,
                    rsync_time(change.mtime.0),
                    change.path.clone(),
                )),
            }
        }
        Ok(Some(decided))
    }
}
