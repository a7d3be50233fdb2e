//! What the transfer rules make of some names, without listing the tree: a local rsync's dry
//! run, with the rules of one way, over an empty copy of the names (the rules look at names and
//! kinds only, and every name is taken for a file).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::options::Way;
use super::{LISTING, Rsync, contents_of};

/// rsync's verdict on names.
pub(super) struct Judged {
    /// Let through, as rsync gave them back.
    seen: HashSet<PathBuf>,
    /// Held back (files or directories), with the rule's pattern.
    hidden: Vec<(PathBuf, String)>,
}

impl Judged {
    /// The pattern of the rule that holds `path` back, itself or a directory above it.
    pub fn hidden_by(&self, path: &Path) -> Option<&str> {
        (self.hidden.iter())
            .find(|(hidden, _)| path.starts_with(hidden))
            .map(|(_, pattern)| pattern.as_str())
    }

    /// Whether rsync gave `path` back as it went in.
    pub fn seen(&self, path: &Path) -> bool {
        self.seen.contains(path)
    }
}

impl Rsync<'_> {
    /// The rules of `way` on `names` (relative paths), judged over a copy made in `temp`.
    pub(super) async fn judge(&self, names: &[&Path], way: Way, temp: &Path) -> Result<Judged> {
        let copy = temp.join("names");
        for name in names {
            let path = copy.join(name);
            let made = (path.parent().map_or(Ok(()), std::fs::create_dir_all))
                .and_then(|()| std::fs::File::create(&path).map(drop));
            made.with_context(|| format!("cannot write in {}", copy.display()))?;
        }
        let mut rsync = self.command(Some(way));
        rsync
            .args(["--recursive", "--links", "-i", "--debug=FILTER1"])
            .args(LISTING)
            .arg(contents_of(&copy))
            .arg(super::nowhere());
        let listed = self.invoke(rsync, None).await?;
        let _ = std::fs::remove_dir_all(&copy);
        if let Some(failure) = listed.failure {
            anyhow::bail!("cannot apply the rules to the names: {failure}");
        }
        Ok(Judged {
            seen: listed.items.into_iter().map(|item| item.path).collect(),
            hidden: listed.hidden,
        })
    }
}
