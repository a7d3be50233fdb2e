//! What a narrowed pull (`narrow`) decides as a whole pull would, from the instance's answer
//! rather than rsync's listing of the tree: which of the changed paths the rules keep there
//! (asked of a local rsync over an empty copy of their names: the rules look at names and
//! kinds only), then the pull's plan for the others (`pull_plan`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::held::hold_of;
use super::itemize::{Item, Kind, rsync_time};
use super::manifest::Stamp;
use super::options::Way;
use super::pull_plan::{Plan, kind_of, plan};
use super::report::Hold;
use super::{LISTING, Manifest, Rsync, contents_of};
use crate::remote::changes::Change;

/// More changes than this are for rsync's listing, which is then as quick.
pub(super) const DECIDED_AT_MOST: usize = 2000;

/// A narrowed pull's decisions on the changes that are neither logs nor as the last sync left
/// them.
pub(super) struct Decided {
    /// As a listing would give them, for the plan and what brings them home.
    pub items: Vec<Item>,
    /// Kept there by a rule, and why.
    pub held: Vec<(PathBuf, Hold)>,
}

impl Decided {
    /// The plan for the items; `None` when it needs a listing after all: a directory there
    /// where this side has something else comes home whole, and only a listing names all it
    /// holds.
    pub fn plan(&self, rsync: &Rsync<'_>, manifest: &Manifest) -> Option<Plan<'_>> {
        let local = |path: &Path| rsync.local_dir.join(path);
        let planned = plan(
            &self.items,
            |path| kind_of(&local(path)),
            |item| {
                Stamp::of(&local(&item.path))
                    .is_some_and(|stamp| manifest.unchanged(&item.path, &stamp, &local(&item.path)))
            },
            |_| false,
        );
        planned.trees.is_empty().then_some(planned)
    }
}

impl Rsync<'_> {
    /// What the rules keep there among `changes` (a file under a directory they hide, too), and
    /// the others as listed items. The rules' verdict comes from a local rsync's dry run over
    /// their names in `temp`, with the pull's filters.
    pub(super) async fn decide(&self, changes: &[&Change], temp: &Path) -> Result<Decided> {
        let names = temp.join("names");
        for change in changes {
            let path = names.join(&change.path);
            let made = match change.kind {
                b'd' => std::fs::create_dir_all(&path),
                _ => path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::File::create(&path).map(drop)),
            };
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
        let mut decided = Decided {
            items: Vec::new(),
            held: Vec::new(),
        };
        for change in changes {
            let kind = match change.kind {
                b'd' => Kind::Dir,
                _ => Kind::File,
            };
            match hidden_by(&change.path) {
                Some(pattern) => {
                    let why = hold_of(pattern, self.options).filter(|_| kind == Kind::File);
                    decided
                        .held
                        .extend(why.map(|why| (change.path.clone(), why)));
                }
                None => decided.items.push(Item::changed_there(
                    kind,
                    change.size,
                    rsync_time(change.mtime.0),
                    change.path.clone(),
                )),
            }
        }
        Ok(decided)
    }
}
