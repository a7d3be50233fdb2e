//! What the syncs of a run found that the user must hear of before the instance is gone: the
//! conflicts (both versions kept), and what changed on the instance but stays there because a
//! rule holds it back. Said in the run's last lines, names escaped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::printer::{escape_path, format_bytes};

/// What pulls brought home: files (links counted as files) and their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pulled {
    pub files: usize,
    pub bytes: u64,
}

impl Pulled {
    pub fn add(&mut self, other: Pulled) {
        self.files += other.files;
        self.bytes += other.bytes;
    }

    /// "pulled 3 files (1.2 MiB)", or `nothing` when nothing came.
    pub fn describe(&self, nothing: &str) -> String {
        match self.files {
            0 => nothing.to_string(),
            1 => format!("pulled 1 file ({})", format_bytes(self.bytes)),
            n => format!("pulled {n} files ({})", format_bytes(self.bytes)),
        }
    }
}

/// A path changed on both sides (or of another kind on each): the instance's version was saved
/// beside it.
pub struct Conflict {
    pub path: PathBuf,
    pub saved_as: PathBuf,
}

/// Why something changed on the instance stays there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hold {
    VersionControl,
    Ignored,
    Secret,
    LinkOutside,
}

impl Hold {
    fn why(self) -> &'static str {
        match self {
            Hold::VersionControl => {
                "version-control metadata never comes home, so that the instance cannot change \
                 what git runs here; `+ .git/` in .rsyncignore brings it home"
            }
            Hold::Ignored => {
                "excluded by .rsyncignore; drop or narrow its rule to bring them home before \
                 the instance is gone"
            }
            Hold::Secret => {
                "credentials and private keys are never synced; `+ NAME` in .rsyncignore brings \
                 one home"
            }
            Hold::LinkOutside => {
                "links leading out of the directory are never synced; copy what they lead to \
                 into the directory to bring it home"
            }
        }
    }
}

/// How many names a line gives before it only counts.
const NAMED: usize = 5;

#[derive(Default)]
pub struct Report {
    pub conflicts: Vec<Conflict>,
    /// By path: a later pull of the run finds the same files again.
    held_back: BTreeMap<PathBuf, Hold>,
    /// Why what the rules keep there could not all be listed.
    unlisted: Option<String>,
}

impl Report {
    pub(super) fn hold(&mut self, path: PathBuf, why: Hold) {
        self.held_back.insert(path, why);
    }

    pub(super) fn unlisted(&mut self, why: String) {
        self.unlisted = Some(why);
    }

    /// The run's last lines (warnings): each conflict, then what stays on the instance, one
    /// line per reason, naming the first few.
    pub fn lines(&self) -> Vec<String> {
        let conflicts = self.conflicts.iter().map(|conflict| {
            format!(
                "{} changed both here and on the instance: kept yours, and saved the instance's \
                 as {}",
                escape_path(&conflict.path),
                escape_path(&conflict.saved_as)
            )
        });
        let mut by_reason: BTreeMap<Hold, Vec<String>> = BTreeMap::new();
        for (path, why) in &self.held_back {
            by_reason.entry(*why).or_default().push(escape_path(path));
        }
        let held = by_reason.into_iter().map(|(why, names)| {
            let count = match names.len() {
                1 => "1 file that differs".to_string(),
                n => format!("{n} files that differ"),
            };
            let more = match names.len().saturating_sub(NAMED) {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            format!(
                "held back on the instance, {count} from yours: {}{more} ({})",
                names[..names.len().min(NAMED)].join(", "),
                why.why()
            )
        });
        let unlisted = self.unlisted.iter().map(|why| {
            format!("could not list all that the rules keep on the instance, so more may stay there: {why}")
        });
        conflicts.chain(held).chain(unlisted).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_stays_on_the_instance_is_counted_and_the_first_few_named() {
        let mut report = Report::default();
        report.hold(".git/config".into(), Hold::VersionControl);
        report.hold(".git/hooks/post-checkout".into(), Hold::VersionControl);
        for n in 0..7 {
            report.hold(format!("out/{n}.bin").into(), Hold::Ignored);
        }
        report.hold("out/0.bin".into(), Hold::Ignored);
        report.hold("evil\x1b[2J".into(), Hold::LinkOutside);
        report.conflicts.push(Conflict {
            path: "a\nb".into(),
            saved_as: "a\nb.from-i-1".into(),
        });
        report.unlisted("rsync failed (exit status 23)".into());
        let lines = report.lines();
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines[4].starts_with("could not list all"), "{}", lines[4]);
        assert!(lines[0].starts_with("a\\nb changed both"), "{}", lines[0]);
        assert!(
            lines[1].starts_with(
                "held back on the instance, 2 files that differ from yours: .git/config, \
                 .git/hooks/post-checkout (version-control"
            ),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains(
                "7 files that differ from yours: out/0.bin, out/1.bin, out/2.bin, out/3.bin, \
                 out/4.bin and 2 more (excluded by .rsyncignore"
            ),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("1 file that differs from yours: evil\\x1b[2J ("),
            "{}",
            lines[3]
        );
    }
}
