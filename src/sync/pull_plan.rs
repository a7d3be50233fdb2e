//! What a pull does with each path the instance lists differently from here, decided from what
//! each side holds there and whether each is what the last sync left: pure, given those.

use std::path::Path;

use super::itemize::{Item, Kind};
use crate::remote::logs::is_log;

/// What a pull does with one path the instance lists differently from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Fetch,
    KeepLocal,
    /// The instance's version is saved beside the local one.
    KeepBoth,
    /// A directory there, something else here: the directory comes home whole, beside.
    KeepBothTree,
}

/// `there` and `here` (`None`: nothing) are what each side holds at the path; whether each is
/// what the last sync left. A change of kind on either side is a change. A log of the
/// instance's (`remote::logs`) that it changed replaces this side's copy: only the instance
/// writes it, and a new instance's log is the latest, not a conflict with an older one's.
fn decide(
    there: Kind,
    here: Option<Kind>,
    here_unchanged: bool,
    there_unchanged: bool,
    log: bool,
) -> Decision {
    use Decision::*;
    match (there, here) {
        (Kind::Dir, None | Some(Kind::Dir)) => Fetch,
        (Kind::Dir, Some(_)) => KeepBothTree,
        // Deleted here since the last sync, and untouched there: stays deleted.
        (_, None) if there_unchanged => KeepLocal,
        (_, None) => Fetch,
        (_, Some(here)) if here != there && there_unchanged => KeepLocal,
        (_, Some(here)) if here != there => KeepBoth,
        _ if here_unchanged || (log && !there_unchanged) => Fetch,
        _ if there_unchanged => KeepLocal,
        _ => KeepBoth,
    }
}

/// A pull's listing, sorted by what it does.
#[derive(Default)]
pub(super) struct Plan<'a> {
    pub fetch: Vec<&'a Item>,
    pub both: Vec<&'a Item>,
    /// Each a directory of the instance's where this side has something else, then everything
    /// under it: never looked up here, where a link could lead anywhere.
    pub trees: Vec<Vec<&'a Item>>,
}

pub(super) fn plan<'a>(
    items: &'a [Item],
    here: impl Fn(&Path) -> Option<Kind>,
    here_unchanged: impl Fn(&Item) -> bool,
    there_unchanged: impl Fn(&Item) -> bool,
) -> Plan<'a> {
    let mut plan = Plan::default();
    // The top itself: named in a list, it would bring all it holds.
    let listed = items.iter().filter(|item| item.path != Path::new("."));
    for item in listed.filter(|item| item.transferred()) {
        if let Some(tree) =
            (plan.trees.iter_mut()).find(|tree| item.path.starts_with(&tree[0].path))
        {
            tree.push(item);
            continue;
        }
        if item.kind == Kind::Other {
            continue;
        }
        let kind = here(&item.path);
        let same = kind == Some(item.kind);
        match decide(
            item.kind,
            kind,
            same && here_unchanged(item),
            there_unchanged(item),
            is_log(&item.path),
        ) {
            Decision::Fetch => plan.fetch.push(item),
            Decision::KeepBoth => plan.both.push(item),
            Decision::KeepBothTree => plan.trees.push(vec![item]),
            Decision::KeepLocal => {}
        }
    }
    // Saved beside last time, and not changed there since: already home.
    plan.trees
        .retain(|tree| !tree.iter().all(|item| there_unchanged(item)));
    plan
}

/// What this side holds at `path` (a link itself, not what it leads to).
pub(super) fn kind_of(path: &Path) -> Option<Kind> {
    let kind = path.symlink_metadata().ok()?.file_type();
    Some(match kind {
        _ if kind.is_dir() => Kind::Dir,
        _ if kind.is_symlink() => Kind::Link,
        _ if kind.is_file() => Kind::File,
        _ => Kind::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::super::itemize::item;
    use super::*;
    use Decision::*;
    use Kind::{Dir, File, Link};
    use std::path::PathBuf;

    /// There, here, here unchanged, there unchanged; the decision for a file, then for a log.
    type Row = (Kind, Option<Kind>, bool, bool, Decision, Decision);

    fn check(table: &[Row]) {
        for &(there, here, here_unchanged, there_unchanged, file, log) in table {
            for (is_log, expected) in [(false, file), (true, log)] {
                assert_eq!(
                    decide(there, here, here_unchanged, there_unchanged, is_log),
                    expected,
                    "{there:?} there, {here:?} here, {here_unchanged} {there_unchanged}, log \
                     {is_log}"
                );
            }
        }
    }

    #[test]
    fn a_change_of_kind_keeps_both_sides_and_a_log_the_instance_changed_comes_home() {
        #[rustfmt::skip]
        check(&[
            // there, here, here unchanged, there unchanged: a file's decision, a log's
            (File, Some(File), true, false, Fetch, Fetch),
            (File, Some(File), false, true, KeepLocal, KeepLocal),
            // A log is the instance's: never a conflict.
            (File, Some(File), false, false, KeepBoth, Fetch),
            (File, None, false, false, Fetch, Fetch),
            (File, None, false, true, KeepLocal, KeepLocal),
            (Dir, Some(Dir), false, false, Fetch, Fetch),
            (Dir, None, false, false, Fetch, Fetch),
            (Dir, Some(Link), true, false, KeepBothTree, KeepBothTree),
            (Dir, Some(File), true, true, KeepBothTree, KeepBothTree),
            (File, Some(Dir), false, false, KeepBoth, KeepBoth),
            (Link, Some(File), false, false, KeepBoth, KeepBoth),
            (File, Some(Link), false, false, KeepBoth, KeepBoth),
            (File, Some(Dir), false, true, KeepLocal, KeepLocal),
        ]);
    }

    #[test]
    fn nothing_under_a_directory_of_the_instance_is_looked_up_through_a_link_here() {
        let items = [
            item("cd+++++++++\t4096\tT\tckpt/"),
            item(">f+++++++++\t9\tT\tnotes.txt"),
            item("cd+++++++++\t4096\tT\tckpt/deep/"),
            item(">f+++++++++\t1\tT\tckpt/deep/e1.pt"),
            item(">f+++++++++\t1\tT\tckptx"),
        ];
        let here = |path: &Path| match path.to_str() {
            Some("ckpt") => Some(Link),
            Some(p) if p.starts_with("ckpt/") => panic!("looked up {p} through the link"),
            _ => None,
        };
        let plan = plan(&items, here, |_| false, |_| false);
        let paths =
            |items: &[&Item]| -> Vec<PathBuf> { items.iter().map(|i| i.path.clone()).collect() };
        assert_eq!(plan.trees.len(), 1);
        assert_eq!(
            paths(&plan.trees[0]),
            ["ckpt", "ckpt/deep", "ckpt/deep/e1.pt"].map(PathBuf::from)
        );
        assert_eq!(
            paths(&plan.fetch),
            ["notes.txt", "ckptx"].map(PathBuf::from)
        );

        let saved_before = plan_saved(&items);
        assert!(
            saved_before.trees.is_empty(),
            "unchanged since it was saved"
        );
    }

    fn plan_saved(items: &[Item]) -> Plan<'_> {
        plan(
            items,
            |path| (path == Path::new("ckpt")).then_some(Link),
            |_| false,
            |item| item.path.starts_with("ckpt"),
        )
    }
}
