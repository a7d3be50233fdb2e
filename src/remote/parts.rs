//! A file sent in parts (`sync::parts`): each part written in place into a temporary file by
//! `dd` from its channel's input, then the whole given its mode and time and linked into
//! place, only where nothing is by then.

use std::ops::Range;

use super::shell_quote;

/// Parts start at whole blocks of this size: `dd` seeks in blocks.
pub const PART_BLOCK: u64 = 1 << 20;
/// Begins the name of the temporary file the parts are written into.
pub const PARTS_PREFIX: &str = "parts-";
/// A temporary file of parts untouched for this long is abandoned: its writer was killed.
pub const PARTS_ABANDONED_MINUTES: u32 = 10;

/// Writes the command's input, the bytes `part` of a file, into `file` from `part.start` (a
/// whole number of `PART_BLOCK`s), leaving the rest of the file as it is. Input cut short (a
/// cancelled or dead sender: the channel closes) or a failed write removes `file`, whoever
/// wrote the other parts: nothing half-sent stays on the instance.
pub fn part_command(file: &str, part: &Range<u64>) -> String {
    debug_assert_eq!(part.start % PART_BLOCK, 0);
    format!(
        "n=$(LC_ALL=C dd of={f} bs={PART_BLOCK} seek={seek} conv=notrunc 2>&1 >/dev/null) && \
         [ \"$(printf '%s\\n' \"$n\" | sed -n 's/^\\([0-9][0-9]*\\) bytes.*/\\1/p')\" = {length} ] \
         || {{ rm -f {f}; printf '%s\\n' \"$n\" >&2; exit 1; }}",
        f = shell_quote(file),
        seek = part.start / PART_BLOCK,
        length = part.end - part.start,
    )
}

/// What the file sent in parts is to become.
pub struct Placed<'a> {
    /// Where it goes, in the remote directory.
    pub path: &'a str,
    pub size: u64,
    /// Permission bits (rsync's `--perms`).
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

/// Checks that `file` holds all `placed.size` bytes, gives it its mode and time, and links it
/// at its path in `dir` unless something is there by then; prints `placed` if it did. The
/// temporary file goes in every case.
pub fn place_command(dir: &str, file: &str, placed: &Placed<'_>) -> String {
    let parent = match placed.path.rsplit_once('/') {
        Some((parent, _)) => format!("mkdir -p {} && ", shell_quote(&format!("{dir}{parent}"))),
        None => String::new(),
    };
    format!(
        "f={file}; [ \"$(wc -c < \"$f\")\" -eq {size} ] && touch -m -d @{secs}.{nanos:09} \"$f\" \
         && chmod {mode:o} \"$f\" && {parent}ln -T \"$f\" {path} 2>/dev/null && echo placed; \
         rm -f \"$f\"",
        file = shell_quote(file),
        size = placed.size,
        secs = placed.mtime_secs,
        nanos = placed.mtime_nanos,
        mode = placed.mode & 0o7777,
        path = shell_quote(&format!("{dir}{}", placed.path)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(script: &str, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    fn sh(script: &str, input: &[u8]) -> String {
        let output = run(script, input);
        assert!(output.status.success(), "{script}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn parts_written_in_any_order_make_the_file_with_its_mode_and_time() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let root = format!("{}/", dir.path().display());
        let temp = dir.path().join("part's file");
        let temp = temp.to_str().unwrap();
        let block = PART_BLOCK as usize;
        let whole: Vec<u8> = (0..2 * block + 10).map(|i| (i % 251) as u8).collect();
        let end = whole.len() as u64;
        sh(
            &part_command(temp, &(2 * PART_BLOCK..end)),
            &whole[2 * block..],
        );
        sh(&part_command(temp, &(0..PART_BLOCK)), &whole[..block]);
        sh(
            &part_command(temp, &(PART_BLOCK..2 * PART_BLOCK)),
            &whole[block..2 * block],
        );
        let placed = Placed {
            path: "data/new dir/big.bin",
            size: whole.len() as u64,
            mode: 0o100750,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 123_456_789,
        };
        assert_eq!(sh(&place_command(&root, temp, &placed), b""), "placed\n");
        let file = dir.path().join(placed.path);
        assert!(std::fs::read(&file).unwrap() == whole);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_700_000_000, 123_456_789)
        );
        assert!(
            !dir.path().join("part's file").exists(),
            "the temporary file goes"
        );
    }

    #[test]
    fn nothing_there_is_replaced_and_a_short_file_is_never_placed() {
        let dir = tempfile::tempdir().unwrap();
        let root = format!("{}/", dir.path().display());
        let temp = dir.path().join("parts");
        let temp = temp.to_str().unwrap();
        let placed = |path| Placed {
            path,
            size: 4,
            mode: 0o644,
            mtime_secs: 1,
            mtime_nanos: 0,
        };
        std::fs::write(dir.path().join("there.bin"), "mine").unwrap();
        std::fs::create_dir(dir.path().join("a dir")).unwrap();
        for path in ["there.bin", "a dir"] {
            sh(&part_command(temp, &(0..4)), b"new!");
            assert_eq!(
                sh(&place_command(&root, temp, &placed(path)), b""),
                "",
                "{path}"
            );
            assert!(!dir.path().join("parts").exists());
        }
        assert_eq!(
            std::fs::read(dir.path().join("there.bin")).unwrap(),
            b"mine"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("a dir")).unwrap().count(),
            0
        );
        sh(&part_command(temp, &(0..3)), b"new");
        assert_eq!(
            sh(&place_command(&root, temp, &placed("short.bin")), b""),
            ""
        );
        assert!(!dir.path().join("short.bin").exists());
    }

    #[test]
    fn a_part_cut_short_removes_the_file_whoever_wrote_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("parts");
        let temp = temp.to_str().unwrap();
        let block = vec![7u8; PART_BLOCK as usize];
        sh(&part_command(temp, &(0..PART_BLOCK)), &block);
        let cut = run(
            &part_command(temp, &(PART_BLOCK..2 * PART_BLOCK)),
            &block[..10],
        );
        assert!(!cut.status.success());
        assert!(!dir.path().join("parts").exists());
        let unwritable = dir.path().join("no such dir/parts");
        let failed = run(&part_command(unwritable.to_str().unwrap(), &(0..3)), b"abc");
        assert!(!failed.status.success());
        assert!(
            String::from_utf8_lossy(&failed.stderr).contains("No such file"),
            "{failed:?}"
        );
    }
}
