//! What a pull's rules keep on the instance, found so that it is never dropped in silence: the
//! files under each root the filters hid (listed again without filters, and kept when the
//! instance changed them since the last sync, or made them), and the links `--safe-links`
//! skipped (unless this side has the same link).

use std::path::Path;

use anyhow::Result;

use super::itemize::Kind;
use super::manifest::Manifest;
use super::options::{Options, TEMP_DIR, VERSION_CONTROL, secret_patterns};
use super::report::{Hold, Report};
use super::{LISTING, Outcome, Rsync};

impl Rsync<'_> {
    /// Adds to `report` what `listed` (a pull's listing) held back that the instance changed,
    /// or that it could not all be listed (what comes home does not depend on it).
    pub(super) async fn find_held_back(
        &self,
        listed: &Outcome,
        manifest: &Manifest,
        report: &mut Report,
    ) -> Result<()> {
        for (path, target) in &listed.unsafe_links {
            if std::fs::read_link(self.local_dir.join(path)).ok().as_ref() != Some(target) {
                report.hold(path.clone(), Hold::LinkOutside);
            }
        }
        let roots: Vec<(&Path, Hold)> = (listed.hidden.iter())
            .filter_map(|(path, pattern)| Some((path.as_path(), hold_of(pattern, self.options)?)))
            .collect();
        if roots.is_empty() {
            return Ok(());
        }
        let list = super::nul_separated(roots.iter().map(|(path, _)| *path));
        let mut rsync = self.command(None);
        rsync
            .args(["--recursive", "--times", "--links"])
            .args(LISTING)
            .args(["-i", "--files-from=-", "--from0"])
            .arg(self.remote_root(Path::new("")))
            .arg(self.local_root());
        let detail = self.invoke(rsync, Some(list)).await?;
        for item in detail.items.iter().filter(|item| item.transferred()) {
            let synced = manifest.get(&item.path);
            let changed_there =
                synced.is_none_or(|entry| !entry.stamp.matches_listing(item.size, &item.mtime));
            let root = roots.iter().find(|(root, _)| item.path.starts_with(root));
            if let (Kind::File | Kind::Link, true, Some((_, why))) =
                (item.kind, changed_there, root)
            {
                report.hold(item.path.clone(), *why);
            }
        }
        if let Some(failure) = detail.failure {
            report.unlisted(failure);
        }
        Ok(())
    }
}

/// Which rule hid a path, by the pattern rsync names; `None` for rsync's own temporary files.
pub(super) fn hold_of(pattern: &str, options: &Options) -> Option<Hold> {
    if pattern == format!("/{TEMP_DIR}/") {
        return None;
    }
    Some(match pattern {
        _ if VERSION_CONTROL.contains(&pattern) => Hold::VersionControl,
        _ if secret_patterns(options).iter().any(|p| p == pattern) => Hold::Secret,
        _ => Hold::Ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_that_hid_a_path_says_why() {
        let options = Options::plain();
        assert_eq!(hold_of(".git", &options), Some(Hold::VersionControl));
        assert_eq!(hold_of(".aws/", &options), Some(Hold::Secret));
        assert_eq!(hold_of("outputs/", &options), Some(Hold::Ignored));
        assert_eq!(hold_of("/.ssh-ec2-tmp/", &options), None);
    }
}
