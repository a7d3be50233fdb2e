//! What the instance changed since the last pull that brought everything home, told without
//! listing the tree through rsync (a dozen round trips on a slow link): each whole pull of a
//! lone instance stamps `~/.ssh-ec2/pulled/<directory's job name>/<token>` as its listing
//! starts, and a later run asks `find -cnewer` of it, which names what changed since. A file's change time (ctime) is the
//! kernel's: no program can set it back, as `touch` can a modification time. The kernel stamps
//! files with a clock that ticks every few milliseconds, so a file changed in the stamp's own
//! tick has the stamp's time: the stamp is set back one nanosecond, and such a file counts as
//! changed (as does one changed just before, in that tick: a pull that was not needed). The
//! stamp holds the boot it was made in: a restart may set the clock back, so a stamp from
//! another boot proves nothing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::RemoteDir;
use super::logs::LOG_DIR;

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

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

    /// What rsync runs on the instance for the pull's listing (its `--rsync-path`): the stamp,
    /// in place of the earlier ones, then rsync itself, whether the stamp could be made or not
    /// (a full disk, tools that are not GNU's): without one, the next run only lists again.
    pub fn stamp_then_rsync(&self) -> String {
        format!(
            "{{ mkdir -p {dir} && rm -f {dir}/* && cat {BOOT_ID} > {path}.new && \
             t=$(($(date -r {path}.new +%s%N) - 1)) && s=${{t%?????????}} && \
             touch -d \"@$s.${{t#\"$s\"}}\" {path}.new && mv {path}.new {path}; }} \
             >/dev/null 2>&1; rsync",
            dir = self.dir(),
            path = self.path()
        )
    }

    /// Prints, when this stamp was made in this boot, what in `dir` (or `dir` itself) changed
    /// since, then the logs among them up to `INLINE_UP_TO` bytes (see `Change::parse`); else
    /// nothing. A `find` that could not look everywhere, or an answer cut at `ANSWER_LIMIT`
    /// before the list's end, lacks its last record, and so proves nothing.
    pub fn changes_command(&self, dir: &RemoteDir) -> String {
        let dir = dir.for_shell();
        let logs = format!("{dir}/{LOG_DIR}");
        format!(
            "m={path}; [ -f \"$m\" ] && [ \"$(cat \"$m\")\" = \"$(cat {BOOT_ID})\" ] && \
             [ -d {dir} ] && {{ find -H {dir} -cnewer \"$m\" -printf '%y\\t%s\\t%T@\\t%P\\0' \
             2>/dev/null && printf '{END}\\0' && {{ [ ! -d {logs} ] || find {logs} -maxdepth 1 \
             -name '*.log' -type f -cnewer \"$m\" -size -{inline}c -printf '%s\\0%P\\0' \
             -exec cat {{}} \\; 2>/dev/null; }} }} | head -c {ANSWER_LIMIT}; true",
            path = self.path(),
            inline = INLINE_UP_TO + 1,
        )
    }
}

/// The record that ends the list of changes.
const END: &str = "end";
/// More changes than fit in this many bytes are for a whole pull to sort out; logs that do not
/// fit are fetched by rsync.
const ANSWER_LIMIT: usize = 1 << 20;
/// Logs up to this size come in the answer: a foreground run's, a job's so far.
const INLINE_UP_TO: usize = 256 << 10;

/// One path of the remote directory changed since a pull's stamp, as `find` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `find`'s `%y`: `f` file, `d` directory, `l` link, another letter for the rest.
    pub kind: u8,
    pub size: u64,
    /// Its modification time: not before 1970 (an answer with one proves nothing).
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// Relative to the directory; empty for the directory itself.
    pub path: PathBuf,
    /// A log's content, when it came with the answer and has the size listed (a log still
    /// written to may have grown in between).
    pub content: Option<Vec<u8>>,
}

impl Change {
    /// The changes in `changes_command`'s answer; `None` when it proves nothing (no stamp,
    /// another boot, `find` failed, the list was cut, a time before 1970).
    pub fn parse(answer: &[u8]) -> Option<Vec<Change>> {
        let mut rest = answer;
        let mut changes = Vec::new();
        loop {
            let (record, after) = split_nul(rest)?;
            rest = after;
            if record == END.as_bytes() {
                break;
            }
            changes.push(Change::parse_one(record)?);
        }
        // Then each inlined log: its size, its name in the directory of logs, its bytes. One cut
        // short is fetched by rsync.
        while let Some((size, after)) = split_nul(rest)
            && let Some((name, after)) = split_nul(after)
            && let Some(size) = std::str::from_utf8(size).ok().and_then(|s| s.parse().ok())
            && let Some(content) = after.get(..size)
        {
            rest = &after[size..];
            let path = Path::new(LOG_DIR).join(OsStr::from_bytes(name));
            let listed = changes
                .iter_mut()
                .find(|c| c.path == path && c.kind == b'f');
            if let Some(change) = listed.filter(|change| change.size == size as u64) {
                change.content = Some(content.to_vec());
            }
        }
        Some(changes)
    }

    fn parse_one(record: &[u8]) -> Option<Change> {
        let mut fields = record.splitn(4, |&b| b == b'\t');
        let (kind, size, mtime, path) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let [kind] = kind else { return None };
        let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse::<u64>().ok();
        // `%T@`: seconds, a dot, then ten digits of which the first nine are nanoseconds.
        let mut time = mtime.splitn(2, |&b| b == b'.');
        let (secs, fraction) = (time.next()?, time.next()?);
        let nanos = fraction.get(..9)?;
        Some(Change {
            kind: *kind,
            size: number(size)?,
            mtime_secs: i64::try_from(number(secs)?).ok()?,
            mtime_nanos: u32::try_from(number(nanos)?).ok()?,
            path: PathBuf::from(OsStr::from_bytes(path)),
            content: None,
        })
    }
}

/// The record before the next NUL, and what follows it; `None` without a NUL.
fn split_nul(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let changes = Change::parse(&sh(home, check))?;
        Some(
            changes
                .iter()
                .map(|c| c.path.display().to_string())
                .collect(),
        )
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
        let check = mark.changes_command(&dir);
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
        let answer = Change::parse(&sh(home.path(), &check)).unwrap();
        let kept = Change {
            kind: b'f',
            size: 5,
            mtime_secs: 7,
            mtime_nanos: 500_000_000,
            path: "kept".into(),
            content: None,
        };
        assert_eq!(answer, [kept]);

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
        let other = PullMark::new("ssh-ec2-proj").changes_command(&dir);
        assert_eq!(changed(home.path(), &other), None);
        let path = home
            .path()
            .join(".ssh-ec2/pulled/ssh-ec2-proj")
            .join(mark.token());
        let stamped = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "another boot\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(stamped).unwrap();
        assert_eq!(changed(home.path(), &check), None, "another boot");
    }

    /// Only a whole answer proves anything: one `find` finished (it failed: no end) and not cut.
    #[test]
    fn an_answer_without_its_end_proves_nothing() {
        let parse = |answer: &[u8]| Change::parse(answer).map(|changes| changes.len());
        let t = "2.0000000250";
        let answer = format!("f\t1\t{t}\ta\tb\0d\t4096\t{t}\t\0end\0");
        assert_eq!(parse(answer.as_bytes()), Some(2));
        assert_eq!(parse(b"end\0"), Some(0));
        assert_eq!(parse(b""), None, "no stamp");
        assert_eq!(parse(b"f\t1\t2.0000000000\ta\0"), None, "find failed");
        assert_eq!(parse(b"f\t1\t2.0000000000\ta\0en"), None, "cut");
        assert_eq!(parse(b"f\t1\t-2.0000000000\ta\0end\0"), None, "before 1970");
        assert_eq!(parse(b"f\t1\t2.5\ta\0end\0"), None, "not find's time");
        assert_eq!(parse(b"f\t1\ta\0end\0"), None, "not find's");
        let named = Change::parse(answer.as_bytes()).unwrap();
        assert_eq!(named[0].path, PathBuf::from("a\tb"), "a name may hold tabs");
        assert_eq!((named[0].mtime_secs, named[0].mtime_nanos), (2, 25));
    }

    /// Logs come after the list: each whole one, listed at the size it has, is the change's.
    #[test]
    fn small_logs_come_with_the_answer() {
        let t = "2.0000000000";
        let list = format!(
            "f\t5\t{t}\tssh-ec2-logs/run.log\0f\t9\t{t}\tssh-ec2-logs/job.log\0\
             f\t2\t{t}\tssh-ec2-logs/cut.log\0end\0"
        );
        let logs = "5\0run.log\0a\0b\nc10\0job.log\0longer now2\0cut.log\0x";
        let changes = Change::parse(format!("{list}{logs}").as_bytes()).unwrap();
        let content = |i: usize| changes[i].content.as_deref();
        assert_eq!(content(0), Some(&b"a\0b\nc"[..]));
        assert_eq!(content(1), None, "grown since it was listed");
        assert_eq!(content(2), None, "cut");

        // From the instance's own find: a new log, and one too big to come along.
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
        let changes = Change::parse(&sh(home.path(), &mark.changes_command(&dir))).unwrap();
        let log = |name: &str| {
            let path = Path::new(LOG_DIR).join(name);
            let change = changes.iter().find(|c| c.path == path).unwrap();
            change.content.clone()
        };
        assert_eq!(log("run.log").as_deref(), Some(&b"said\n"[..]));
        assert_eq!(log("big.log"), None);
    }
}
