//! What rsync says it did, read back: one line per item in our own `--out-format`, and the
//! `--debug=FILTER` lines that say which rule held a file back.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// Starts our lines, so that rsync's other output on stdout is never taken for an item.
const MARK: &str = "ssh-ec2\t";

/// `--out-format` for every transfer: itemized change, size, mtime (seconds, in rsync's
/// `YYYY/MM/DD-HH:MM:SS`, UTC since rsync runs with TZ=UTC), name. The name comes last: rsync
/// never escapes tabs, so it may hold some.
pub fn out_format() -> String {
    format!("--out-format={MARK}%i\t%l\t%M\t%n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    /// Devices and special files: synced up as they are, never brought home.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The first letter of `%i`: `<` sent, `>` received, `c` created, `h` hard link, `.` none.
    change: u8,
    /// Some attribute of `%i` differs (`t`, `p`, `o`…).
    attributes: bool,
    pub kind: Kind,
    pub size: u64,
    /// Whole seconds, as rsync prints them.
    pub mtime: String,
    /// Relative to the transfer's root, without a trailing slash.
    pub path: PathBuf,
}

impl Item {
    /// What a listing says of a path the instance changed since the last sync.
    pub fn changed_there(kind: Kind, size: u64, mtime: String, path: PathBuf) -> Item {
        Item::moved(b'>', kind, size, mtime, path)
    }

    /// What a push that sent a path says of it.
    pub fn sent(kind: Kind, size: u64, mtime: String, path: PathBuf) -> Item {
        Item::moved(b'<', kind, size, mtime, path)
    }

    fn moved(change: u8, kind: Kind, size: u64, mtime: String, path: PathBuf) -> Item {
        Item {
            change,
            attributes: false,
            kind,
            size,
            mtime,
            path,
        }
    }

    /// Whether rsync moved data or made something, as opposed to finding it up to date.
    pub fn transferred(&self) -> bool {
        matches!(self.change, b'<' | b'>' | b'c' | b'h')
    }

    /// Whether only attributes differ (a mode, a directory's time): set in place, nothing
    /// replaced.
    pub fn attributes_only(&self) -> bool {
        !self.transferred() && self.attributes
    }
}

/// One line of rsync's stdout: an item, a held-back file, or something else.
pub enum Line {
    Item(Item),
    /// `--debug=FILTER`: a file or directory no rule let through, and the rule's pattern.
    Hidden {
        path: PathBuf,
        pattern: String,
    },
    /// `--safe-links` (with `--info=NAME1`): a link leading out of the tree, skipped.
    Unsafe {
        path: PathBuf,
        target: PathBuf,
    },
    Other,
}

pub fn parse(line: &[u8]) -> Line {
    if let Some(rest) = line.strip_prefix(MARK.as_bytes()) {
        return parse_item(rest).map_or(Line::Other, Line::Item);
    }
    (parse_hidden(line).or_else(|| parse_unsafe(line))).unwrap_or(Line::Other)
}

fn parse_item(rest: &[u8]) -> Option<Item> {
    let mut fields = rest.splitn(4, |&b| b == b'\t');
    let (code, size, mtime, name) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    // `*deleting` and other messages in place of a change: not an item of the transfer.
    if code.first() == Some(&b'*') {
        return None;
    }
    let kind = match code.get(1)? {
        b'f' => Kind::File,
        b'd' => Kind::Dir,
        b'L' => Kind::Link,
        _ => Kind::Other,
    };
    // Sizes may come with thousands separators in some rsync builds.
    let size: Vec<u8> = size.iter().copied().filter(u8::is_ascii_digit).collect();
    let mut name = decode(name);
    while name.len() > 1 && name.ends_with(b"/") {
        name.pop();
    }
    Some(Item {
        change: *code.first()?,
        attributes: code.iter().skip(2).any(u8::is_ascii_lowercase),
        kind,
        size: std::str::from_utf8(&size).ok()?.parse().unwrap_or(0),
        mtime: String::from_utf8_lossy(mtime).into_owned(),
        path: PathBuf::from(OsString::from_vec(name)),
    })
}

/// `[sender] hiding file NAME because of pattern PATTERN` (and `hiding directory`).
fn parse_hidden(line: &[u8]) -> Option<Line> {
    const BECAUSE: &[u8] = b" because of pattern ";
    let start = ["hiding file ", "hiding directory "]
        .iter()
        .find_map(|what| find(line, what.as_bytes()).map(|at| at + what.len()))?;
    let rest = &line[start..];
    let split = rfind(rest, BECAUSE)?;
    Some(Line::Hidden {
        path: PathBuf::from(OsString::from_vec(decode(&rest[..split]))),
        pattern: String::from_utf8_lossy(&rest[split + BECAUSE.len()..])
            .trim_end()
            .to_string(),
    })
}

/// `ignoring unsafe symlink "NAME" -> "TARGET"`. Both come from the instance: a name holding
/// `" -> "` itself is cut at its first one, which only changes how the report spells it.
fn parse_unsafe(line: &[u8]) -> Option<Line> {
    const START: &[u8] = b"ignoring unsafe symlink \"";
    const ARROW: &[u8] = b"\" -> \"";
    let rest = &line[find(line, START)? + START.len()..];
    let split = find(rest, ARROW)?;
    let target = rest[split + ARROW.len()..].strip_suffix(b"\"")?;
    Some(Line::Unsafe {
        path: PathBuf::from(OsString::from_vec(decode(&rest[..split]))),
        target: PathBuf::from(OsString::from_vec(decode(target))),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// Undoes rsync's escapes in names: `\#ooo` is the byte with that octal value. A literal
/// backslash is left alone unless it would read as an escape, and then it is escaped itself.
pub fn decode(escaped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        if let Some(&[b'\\', b'#', a, b, c]) = escaped.get(i..i + 5)
            && [a, b, c].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            out.push((a - b'0') * 64 + (b - b'0') * 8 + (c - b'0'));
            i += 5;
        } else {
            out.push(escaped[i]);
            i += 1;
        }
    }
    out
}

/// A Unix time in rsync's `%M` form, in UTC.
pub fn rsync_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}/{month:02}/{day:02}-{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An item from the fields after our mark (`CODE\tSIZE\tTIME\tNAME`), for the tests of what
/// the syncs decide.
#[cfg(test)]
pub fn item(fields: &str) -> Item {
    match parse(format!("{MARK}{fields}").as_bytes()) {
        Line::Item(item) => item,
        _ => panic!("not an item: {fields}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_and_hidden_files_are_read_back() {
        let Line::Item(item) =
            parse(b"ssh-ec2\t>f.st......\t1,234\t2026/11/22-04:54:09\ta b\\#012c")
        else {
            panic!("not an item");
        };
        assert!(item.transferred());
        assert_eq!(item.kind, Kind::File);
        assert_eq!(item.size, 1234);
        assert_eq!(item.mtime, "2026/11/22-04:54:09");
        assert_eq!(item.path, PathBuf::from("a b\nc"));
        let Line::Item(dir) = parse(b"ssh-ec2\t.d         \t4096\t2026/11/22-04:54:09\tsub/")
        else {
            panic!("not an item");
        };
        assert!(!dir.transferred() && !dir.attributes_only());
        assert_eq!((dir.kind, dir.path), (Kind::Dir, PathBuf::from("sub")));
        let Line::Hidden { path, pattern } =
            parse(b"[sender] hiding directory x/.aws because of pattern .aws/")
        else {
            panic!("not hidden");
        };
        assert_eq!((path, pattern.as_str()), (PathBuf::from("x/.aws"), ".aws/"));
        assert!(matches!(parse(b"sent 1 bytes"), Line::Other));
        let Line::Unsafe { path, target } =
            parse(b"ignoring unsafe symlink \"ck pt\" -> \"/scratch/ckpts\"")
        else {
            panic!("not an unsafe link");
        };
        assert_eq!((path, target), ("ck pt".into(), "/scratch/ckpts".into()));
        assert!(matches!(
            parse(b"ssh-ec2\t*deleting  \t0\t1970/01/01-00:00:00\tgone/x"),
            Line::Other
        ));
    }

    #[test]
    fn attribute_changes_are_told_from_transfers() {
        let of = |code: &str| item(&format!("{code}\t1\tT\tx"));
        assert!(of(".f...p.....").attributes_only());
        assert!(of(".d..t......").attributes_only());
        assert!(!of(">f.st......").attributes_only());
        assert!(!of("<f+++++++++").attributes_only());
    }

    #[test]
    fn names_decode_exactly() {
        assert_eq!(decode(br"tab\#011x\y"), b"tab\tx\\y");
        assert_eq!(
            decode(br"\#134#012"),
            br"\#012",
            "an escaped backslash stays one"
        );
        assert_eq!(decode("été".as_bytes()), "été".as_bytes());
    }

    #[test]
    fn times_print_like_rsync_in_utc() {
        assert_eq!(rsync_time(0), "1970/01/01-00:00:00");
        assert_eq!(rsync_time(1_795_323_249), "2026/11/22-04:54:09");
        assert_eq!(rsync_time(-1), "1969/12/31-23:59:59");
        assert_eq!(rsync_time(951_782_400), "2000/02/29-00:00:00");
    }
}
