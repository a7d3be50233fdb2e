//! What the instance changed since the last pull that brought everything home, told without
//! listing the tree through rsync (a dozen round trips on a slow link): each whole pull of a
//! lone instance stamps `~/.ssh-ec2/pulled/<directory's job name>/<token>` as its listing
//! starts (a push into a directory the run made, as it starts; each question, the next stamp
//! as it starts), and a later run asks `find -cnewer` of it, which names what changed since
//! (see `changes`). A file's change time (ctime) is the kernel's: no program can set it back, as
//! `touch` can a modification time. The kernel stamps files with a clock that ticks every few
//! milliseconds, so a file changed in the stamp's own tick has the stamp's time: the stamp is
//! set back one nanosecond, and such a file counts as changed (as does one changed just
//! before, in that tick: a pull that was not needed). The stamp holds the boot it was made in:
//! a restart may set the clock back, so a stamp from another boot proves nothing.

use super::RemoteDir;
use super::changes::END;
use super::logs::{LOG_DIR, LOG_SUFFIX};

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What the instance said changed since a stamp, and the stamp its answer made for the next
/// run (see `PullMark::changes_command`).
pub struct Checked {
    pub changes: super::changes::Changes,
    pub next: PullMark,
}

/// One pull's stamp on the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullMark {
    /// The directory the instance belongs to (a job name), so that directories never mix.
    scope: String,
    token: String,
}

impl PullMark {
    /// A stamp for a pull about to start.
    pub fn new(scope: &str) -> PullMark {
        PullMark::of(scope, &super::new_token())
    }

    /// The stamp an earlier pull made.
    pub fn of(scope: &str, token: &str) -> PullMark {
        PullMark {
            scope: scope.to_string(),
            token: token.to_string(),
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn dir(&self) -> String {
        format!("{}/{}", super::state_dir("pulled"), self.scope)
    }

    fn path(&self) -> String {
        format!("{}/{}", self.dir(), self.token)
    }

    /// What rsync runs on the instance for a whole pull's listing, or a push into a directory
    /// it made (its `--rsync-path`): the stamp, in place of the earlier ones, then rsync itself,
    /// whether the stamp could be made or not (a full disk, tools that are not GNU's): without
    /// one, the next run only lists again.
    pub fn stamp_then_rsync(&self) -> String {
        format!("{}; rsync", self.stamp_alone())
    }

    /// The stamp, in place of the earlier ones: what `stamp_then_rsync` runs before rsync.
    pub fn stamp_alone(&self) -> String {
        self.stamp(&format!("rm -f {}/*", self.dir()))
    }

    /// Makes the stamp, once `clear` dealt with the others; says nothing, whatever happens.
    fn stamp(&self, clear: &str) -> String {
        format!(
            "{{ mkdir -p {dir} && {clear} && cat {BOOT_ID} > {path}.new && \
             t=$(($(date -r {path}.new +%s%N) - 1)) && s=${{t%?????????}} && \
             touch -d \"@$s.${{t#\"$s\"}}\" {path}.new && mv {path}.new {path}; }} \
             >/dev/null 2>&1",
            dir = self.dir(),
            path = self.path()
        )
    }

    /// Prints, when this stamp was made in this boot, what in `dir` (or `dir` itself) changed
    /// since, then the logs among them up to `INLINE_UP_TO` bytes (see `Changes`); else
    /// nothing. A `find` that could not look everywhere, or an answer cut at `ANSWER_LIMIT`
    /// before the list's end, lacks its end, and so proves nothing. `next` is stamped first,
    /// beside this one: once what changed is home, it is the next run's stamp.
    pub fn changes_command(&self, dir: &RemoteDir, next: &PullMark) -> String {
        let others = format!(
            "find {} -type f ! -name {} ! -name {} -delete",
            self.dir(),
            self.token,
            next.token
        );
        let dir = dir.for_shell();
        let logs = format!("{dir}/{LOG_DIR}");
        // Each log copied first: its size is then that of the bytes that follow.
        let log = "t=$(mktemp) && cat -- \"$1\" > \"$t\" && \
                   printf \"%s\\0%s\\0\" $(($(wc -c < \"$t\"))) \"${1##*/}\" && cat \"$t\"; \
                   rm -f \"$t\"";
        format!(
            "{stamp_next}; m={path}; [ -f \"$m\" ] && [ \"$(cat \"$m\")\" = \"$(cat {BOOT_ID})\" ] && \
             [ -d {dir} ] && {{ find \"$m\" -printf '%T@\\0' && \
             find -H {dir} -cnewer \"$m\" -printf '%y\\t%s\\t%T@\\t%P\\0' 2>/dev/null && \
             printf '{END}\\0' && {{ [ ! -d {logs} ] || find {logs} -maxdepth 1 \
             -name '*{LOG_SUFFIX}' -type f -cnewer \"$m\" -size -{inline}c \
             -exec sh -c '{log}' sh {{}} \\; 2>/dev/null; }} }} | head -c {ANSWER_LIMIT}; true",
            stamp_next = next.stamp(&others),
            path = self.path(),
            inline = INLINE_UP_TO + 1,
        )
    }
}

/// More changes than fit in this many bytes are for a whole pull to sort out; logs that do not
/// fit are fetched by rsync.
pub const ANSWER_LIMIT: usize = 1 << 20;
/// Logs up to this size come in the answer: a foreground run's, a job's so far.
const INLINE_UP_TO: usize = 256 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::changes::Changes;
    use std::path::Path;
    use std::process::Command;

    fn sh(home: &std::path::Path, script: &str) -> Vec<u8> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("HOME", home)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    /// The paths the answer to `check` names, if it proves anything.
    fn changed(home: &std::path::Path, check: &str) -> Option<Vec<String>> {
        let changes = Changes::parse(&sh(home, check))?;
        Some(
            (changes.list.iter())
                .map(|c| c.path.display().to_string())
                .collect(),
        )
    }

    fn sorted(mut paths: Vec<String>) -> Vec<String> {
        paths.sort();
        paths
    }

    /// The stamp, then a change: a new file, a removed one, a file's mode; a file whose
    /// modification time is set back is still a change.
    #[test]
    fn a_change_after_the_stamp_is_named_whatever_its_times_say() {
        let home = tempfile::tempdir().unwrap();
        let dir = RemoteDir::parse("~/proj").unwrap();
        std::fs::create_dir(home.path().join("proj")).unwrap();
        std::fs::write(home.path().join("proj/kept"), "x").unwrap();
        let mark = PullMark::new("ssh-ec2-proj");
        let next = PullMark::new("ssh-ec2-proj");
        let check = mark.changes_command(&dir, &next);
        assert_eq!(changed(home.path(), &check), None, "never stamped");

        // The stamp as the pull's rsync makes it, in a later tick of the kernel's file clock
        // than what was written before (a tick is at most 10 ms).
        let stamp = format!("{} --version >/dev/null", mark.stamp_then_rsync());
        let a_tick_later = || std::thread::sleep(std::time::Duration::from_millis(25));
        a_tick_later();
        sh(home.path(), &stamp);
        let nothing: Vec<String> = vec![];
        assert_eq!(changed(home.path(), &check), Some(nothing.clone()));
        let changes = [
            ("touch -d @0 proj/kept", &["kept"][..]),
            (
                "echo y > proj/new && touch -d @0 proj/new proj",
                &["", "new"],
            ),
            ("rm proj/new && touch -d @0 proj", &[""]),
            ("chmod 600 proj/kept", &["kept"]),
        ];
        for (change, named) in changes {
            sh(home.path(), &stamp);
            sh(home.path(), &format!("cd ~ && {change}"));
            let mut seen = changed(home.path(), &check).expect(change);
            seen.sort();
            assert_eq!(seen, named, "{change}");
        }
        // What `find` tells of a file: its kind, size and time.
        sh(
            home.path(),
            "cd ~ && printf 12345 > proj/kept && touch -d @7.5 proj/kept",
        );
        let answer = Changes::parse(&sh(home.path(), &check)).unwrap();
        let kept = &answer.list[0];
        assert_eq!(answer.list.len(), 1);
        assert_eq!(
            (kept.kind, kept.size, kept.mtime),
            (b'f', 5, (7, 500_000_000))
        );
        // A directory renamed over another: only it shows, its time from before the stamp.
        sh(
            home.path(),
            &format!(
                "cd ~ && mkdir -p proj/out proj/out.tmp && echo m > proj/out.tmp/m.pt && {stamp}"
            ),
        );
        a_tick_later();
        sh(
            home.path(),
            "cd ~ && rm -rf proj/out && mv proj/out.tmp proj/out",
        );
        let answer = Changes::parse(&sh(home.path(), &check)).unwrap();
        let out = (answer.list.iter())
            .find(|c| c.path == Path::new("out"))
            .unwrap();
        assert!(out.mtime < answer.since, "{answer:?}");
        assert!(!answer.list.iter().any(|c| c.path == Path::new("out/m.pt")));

        // A stamp that cannot be made leaves none (rsync runs all the same).
        let blocked = home.path().join(".ssh-ec2/pulled");
        std::fs::remove_dir_all(&blocked).unwrap();
        std::fs::write(&blocked, "not a directory").unwrap();
        assert_eq!(sh(home.path(), &stamp), b"");
        assert_eq!(changed(home.path(), &check), None, "no stamp");
        std::fs::remove_file(&blocked).unwrap();

        // Another pull's stamp, or one from another boot, proves nothing.
        a_tick_later();
        sh(home.path(), &stamp);
        assert_eq!(changed(home.path(), &check), Some(nothing));
        let path = home
            .path()
            .join(".ssh-ec2/pulled/ssh-ec2-proj")
            .join(mark.token());
        let stamped = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "another boot\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(stamped).unwrap();
        assert_eq!(changed(home.path(), &check), None, "another boot");
        let other = PullMark::new("ssh-ec2-proj").changes_command(&dir, &next);
        assert_eq!(changed(home.path(), &other), None);
    }

    /// A check stamps the next one as it starts: what changed before it is in this answer, what
    /// changed after it in the next one's; other stamps go.
    #[test]
    fn a_check_makes_the_next_stamp() {
        let home = tempfile::tempdir().unwrap();
        let dir = RemoteDir::parse("~/proj").unwrap();
        std::fs::create_dir(home.path().join("proj")).unwrap();
        let mark = PullMark::new("ssh-ec2-proj");
        sh(
            home.path(),
            &format!("{} --version >/dev/null", mark.stamp_then_rsync()),
        );
        let a_tick_later = || std::thread::sleep(std::time::Duration::from_millis(25));
        let (next, stale) = (PullMark::new("ssh-ec2-proj"), PullMark::new("ssh-ec2-proj"));
        sh(home.path(), &mark.changes_command(&dir, &stale));
        a_tick_later();
        std::fs::write(home.path().join("proj/before"), "b").unwrap();
        a_tick_later();
        let first = changed(home.path(), &mark.changes_command(&dir, &next)).map(sorted);
        assert_eq!(first, Some(vec!["".to_string(), "before".to_string()]));
        a_tick_later();
        std::fs::write(home.path().join("proj/after"), "a").unwrap();
        let after = PullMark::new("ssh-ec2-proj");
        let second = changed(home.path(), &next.changes_command(&dir, &after)).map(sorted);
        assert_eq!(second, Some(vec!["".to_string(), "after".to_string()]));
        let stamps = home.path().join(".ssh-ec2/pulled/ssh-ec2-proj");
        assert!(
            !stamps.join(stale.token()).exists(),
            "another check's stamp goes"
        );
        assert!(stamps.join(next.token()).exists() && stamps.join(after.token()).exists());
    }

    /// Small logs come in the answer; a big one is left to rsync.
    #[test]
    fn small_logs_come_with_the_answer() {
        let home = tempfile::tempdir().unwrap();
        let dir = RemoteDir::parse("~/proj").unwrap();
        std::fs::create_dir_all(home.path().join("proj/ssh-ec2-logs")).unwrap();
        let mark = PullMark::new("ssh-ec2-proj");
        sh(
            home.path(),
            &format!("{} --version >/dev/null", mark.stamp_then_rsync()),
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
        let big = vec![b'x'; INLINE_UP_TO + 1];
        std::fs::write(home.path().join("proj/ssh-ec2-logs/big.log"), &big).unwrap();
        std::fs::write(home.path().join("proj/ssh-ec2-logs/run.log"), "said\n").unwrap();
        let check = mark.changes_command(&dir, &PullMark::new("ssh-ec2-proj"));
        let changes = Changes::parse(&sh(home.path(), &check)).unwrap();
        let log = |name: &str| {
            let path = Path::new(LOG_DIR).join(name);
            let change = changes.list.iter().find(|c| c.path == path).unwrap();
            change.content.clone()
        };
        assert_eq!(log("run.log").as_deref(), Some(&b"said\n"[..]));
        assert_eq!(log("big.log"), None);
    }
}
