//! What the instance changed since a pull's stamp, as `PullMark::changes_command` answers: the
//! stamp's own time, then one record per changed path (`find`'s `%y`, `%s`, `%T@`, `%P`), the
//! `end` record, then small logs, each its size, its name in the directory of logs and its
//! bytes (a copy taken first, so that the size is that of the bytes sent).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::logs::LOG_DIR;

/// The record that ends the list of changes.
pub(super) const END: &str = "end";

/// A modification time: seconds (not before 1970), nanoseconds.
pub type Time = (i64, u32);

/// What changed since the stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The stamp's time: a directory modified before it, and changed since, was renamed (what
    /// it holds did not change, for `find`) or its mode changed.
    pub since: Time,
    pub list: Vec<Change>,
}

/// One path of the remote directory changed since the stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `find`'s `%y`: `f` file, `d` directory, `l` link, another letter for the rest.
    pub kind: u8,
    pub size: u64,
    pub mtime: Time,
    /// Relative to the directory, never leaving it; empty for the directory itself.
    pub path: PathBuf,
    /// A log's content, when it came with the answer at the size listed (a log still written
    /// to may have changed in between).
    pub content: Option<Vec<u8>>,
}

impl Changes {
    /// `None` when the answer proves nothing: no stamp, another boot, a `find` that failed, a
    /// list cut short, a time before 1970, a name that is not a path inside the directory.
    pub fn parse(answer: &[u8]) -> Option<Changes> {
        let (since, mut rest) = split_nul(answer)?;
        let since = parse_time(since)?;
        let mut list = Vec::new();
        loop {
            let (record, after) = split_nul(rest)?;
            rest = after;
            if record == END.as_bytes() {
                break;
            }
            list.push(Change::parse(record)?);
        }
        // One cut short is fetched by rsync.
        while let Some((size, after)) = split_nul(rest)
            && let Some((name, after)) = split_nul(after)
            && let Some(size) = std::str::from_utf8(size).ok().and_then(|s| s.parse().ok())
            && let Some(content) = after.get(..size)
        {
            rest = &after[size..];
            let path = Path::new(LOG_DIR).join(OsStr::from_bytes(name));
            let listed =
                (list.iter_mut()).find(|change| change.path == path && change.kind == b'f');
            if let Some(change) = listed.filter(|change| change.size == size as u64) {
                change.content = Some(content.to_vec());
            }
        }
        Some(Changes { since, list })
    }
}

impl Change {
    fn parse(record: &[u8]) -> Option<Change> {
        let mut fields = record.splitn(4, |&b| b == b'\t');
        let (kind, size, mtime, path) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let [kind] = kind else { return None };
        let path = Path::new(OsStr::from_bytes(path));
        let inside = (path.components()).all(|part| matches!(part, Component::Normal(_)));
        Some(Change {
            kind: *kind,
            size: number(size)?,
            mtime: parse_time(mtime)?,
            path: inside.then(|| path.to_path_buf())?,
            content: None,
        })
    }
}

pub(super) fn number(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// `%T@`: seconds, a dot, then ten digits of which the first nine are nanoseconds.
pub(super) fn parse_time(bytes: &[u8]) -> Option<Time> {
    let mut time = bytes.splitn(2, |&b| b == b'.');
    let (secs, fraction) = (time.next()?, time.next()?);
    let secs = i64::try_from(number(secs)?).ok()?;
    Some((secs, u32::try_from(number(fraction.get(..9)?)?).ok()?))
}

/// The record before the next NUL, and what follows it; `None` without a NUL.
pub(super) fn split_nul(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINCE: &str = "1.0000000000\0";

    /// Only a whole list proves anything: one `find` finished (it failed: no end) and not cut.
    #[test]
    fn an_answer_without_its_end_proves_nothing() {
        let parse = |answer: &str| {
            let answer = format!("{SINCE}{answer}");
            Changes::parse(answer.as_bytes()).map(|changes| changes.list.len())
        };
        let t = "2.0000000250";
        let answer = format!("f\t1\t{t}\ta\tb\0d\t4096\t{t}\t\0end\0");
        assert_eq!(parse(&answer), Some(2));
        assert_eq!(parse("end\0"), Some(0));
        assert_eq!(Changes::parse(b""), None, "no stamp");
        assert_eq!(parse("f\t1\t2.0000000000\ta\0"), None, "find failed");
        assert_eq!(parse("f\t1\t2.0000000000\ta\0en"), None, "cut");
        assert_eq!(parse("f\t1\t-2.0000000000\ta\0end\0"), None, "before 1970");
        assert_eq!(parse("f\t1\t2.5\ta\0end\0"), None, "not find's time");
        assert_eq!(parse("f\t1\ta\0end\0"), None, "not find's");
        for outside in ["../x.log", "/etc/x", "ssh-ec2-logs/../../x.log", "./a"] {
            let record = format!("f\t1\t{t}\t{outside}\0end\0");
            assert_eq!(parse(&record), None, "{outside}");
        }
        let named = Changes::parse(format!("{SINCE}{answer}").as_bytes()).unwrap();
        assert_eq!(named.since, (1, 0));
        assert_eq!(
            named.list[0].path,
            PathBuf::from("a\tb"),
            "a name may hold tabs"
        );
        assert_eq!(named.list[0].mtime, (2, 25));
    }

    /// Logs come after the list: each whole one, at the size listed, is the change's.
    #[test]
    fn small_logs_come_with_the_answer() {
        let t = "2.0000000000";
        let list = format!(
            "{SINCE}f\t5\t{t}\tssh-ec2-logs/run.log\0f\t9\t{t}\tssh-ec2-logs/job.log\0\
             f\t2\t{t}\tssh-ec2-logs/cut.log\0end\0"
        );
        let logs = "5\0run.log\0a\0b\nc10\0job.log\0longer now2\0cut.log\0x";
        let changes = Changes::parse(format!("{list}{logs}").as_bytes()).unwrap();
        let content = |i: usize| changes.list[i].content.as_deref();
        assert_eq!(content(0), Some(&b"a\0b\nc"[..]));
        assert_eq!(content(1), None, "changed since it was listed");
        assert_eq!(content(2), None, "cut");
    }
}
