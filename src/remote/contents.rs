//! Small files read in one command, where rsync's start-up alone is half a dozen round trips on
//! a slow link: the paths (relative to the remote directory) go on the command's stdin,
//! NUL-separated, and the answer holds for each, in order, `ok`, its mode and modification
//! time (`find`'s `%m %T@`), its size and its bytes; or `no` when it is no longer a regular
//! file of at most the size asked, or changed while it was copied. Its mode, time and size are
//! read before the copy and again after it: a file rewritten meanwhile (at the same size, by a
//! job still writing) would otherwise come home with its old bytes and its new time, which the
//! manifest would then take for what the instance holds.

use super::RemoteDir;
use super::changes::{Time, number, parse_time, split_nul};

/// A file as the instance sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Its permission bits.
    pub mode: u32,
    pub mtime: Time,
    pub bytes: Vec<u8>,
}

/// The command that sends the files named on its stdin, in `dir`, each up to `up_to` bytes.
pub fn contents_command(dir: &RemoteDir, up_to: u64) -> String {
    // `./` first: a name starting with `-` is no option to find.
    let each = format!(
        "for p; do f=\"./$p\"; t=$(mktemp) || exit 1; \
         m=$(find \"$f\" -maxdepth 0 -type f -printf \"%m %T@ %s\" 2>/dev/null); \
         if [ -n \"$m\" ] && [ ! -L \"$f\" ] && head -c {over} \"$f\" > \"$t\" && \
         s=$(($(wc -c < \"$t\"))) && [ \"$s\" -le {up_to} ] && [ \"${{m##* }}\" = \"$s\" ] && \
         [ \"$(find \"$f\" -maxdepth 0 -type f -printf \"%m %T@ %s\")\" = \"$m\" ]; then \
         printf \"ok\\0%s\\0%s\\0\" \"${{m% *}}\" \"$s\" && cat \"$t\"; \
         else printf \"no\\0\"; fi; rm -f \"$t\"; done",
        over = up_to + 1,
    );
    format!("cd {} && xargs -0 sh -c '{each}' sh", dir.for_shell())
}

/// What the answer says of each of the `count` files asked, in order (`None`: not sent); `None`
/// when the answer is cut or garbled.
pub fn parse_contents(answer: &[u8], count: usize) -> Option<Vec<Option<Content>>> {
    let mut rest = answer;
    let mut contents = Vec::with_capacity(count);
    for _ in 0..count {
        let (status, after) = split_nul(rest)?;
        rest = after;
        if status == b"no" {
            contents.push(None);
            continue;
        }
        if status != b"ok" {
            return None;
        }
        let (meta, after) = split_nul(rest)?;
        let (size, after) = split_nul(after)?;
        let size = usize::try_from(number(size)?).ok()?;
        let mut meta = meta.splitn(2, |&b| b == b' ');
        let mode = u32::from_str_radix(std::str::from_utf8(meta.next()?).ok()?, 8).ok()?;
        let mtime = parse_time(meta.next()?)?;
        contents.push(Some(Content {
            mode,
            mtime,
            bytes: after.get(..size)?.to_vec(),
        }));
        rest = &after[size..];
    }
    rest.is_empty().then_some(contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    /// The answer of the real `sh`, `find`, `head` (unless `path` puts another first) to
    /// `paths` in `home/proj`.
    fn answer_in(home: &std::path::Path, paths: &[&str], up_to: u64, path: &str) -> Vec<u8> {
        let dir = RemoteDir::parse("~/proj").unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(contents_command(&dir, up_to))
            .env("HOME", home)
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for path in paths {
            stdin.write_all(path.as_bytes()).unwrap();
            stdin.write_all(b"\0").unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    fn answer(home: &std::path::Path, paths: &[&str], up_to: u64) -> Vec<u8> {
        answer_in(home, paths, up_to, &std::env::var("PATH").unwrap())
    }

    /// A job rewrites the file while it is copied, at the same size: it is not sent (its old
    /// bytes with its new time would pass for what the instance holds).
    #[test]
    fn a_file_rewritten_while_it_is_copied_is_not_sent() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("proj")).unwrap();
        std::fs::write(home.path().join("proj/status"), "step 1\n").unwrap();
        let shims = home.path().join("shims");
        std::fs::create_dir(&shims).unwrap();
        let head = shims.join("head");
        let rewrite =
            "#!/bin/sh\nPATH=${PATH#*:} head \"$@\"; sleep 0.02; echo 'step 2' > \"$3\"\n";
        std::fs::write(&head, rewrite).unwrap();
        std::fs::set_permissions(&head, PermissionsExt::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", shims.display(), std::env::var("PATH").unwrap());
        let got = parse_contents(&answer_in(home.path(), &["status"], 100, &path), 1);
        assert_eq!(got, Some(vec![None]));
        let again = parse_contents(&answer(home.path(), &["status"], 100), 1).unwrap();
        assert_eq!(again[0].as_ref().unwrap().bytes, b"step 2\n");
    }

    #[test]
    fn small_files_come_with_their_mode_and_time_and_others_do_not() {
        let home = tempfile::tempdir().unwrap();
        let proj = home.path().join("proj");
        std::fs::create_dir_all(proj.join("sub dir")).unwrap();
        std::fs::write(proj.join("sub dir/-odd name\n.txt"), "small\n").unwrap();
        std::fs::write(proj.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(proj.join("run.sh"), PermissionsExt::from_mode(0o750)).unwrap();
        std::fs::write(proj.join("big.bin"), vec![b'x'; 101]).unwrap();
        std::os::unix::fs::symlink("run.sh", proj.join("link")).unwrap();
        let touch = Command::new("touch")
            .args(["-d", "@7.25"])
            .arg(proj.join("run.sh"))
            .status()
            .unwrap();
        assert!(touch.success());
        let paths = [
            "sub dir/-odd name\n.txt",
            "big.bin",
            "run.sh",
            "link",
            "gone",
            "sub dir",
        ];
        let got = parse_contents(&answer(home.path(), &paths, 100), paths.len()).unwrap();
        let first = got[0].as_ref().unwrap();
        assert_eq!(first.bytes, b"small\n");
        assert_eq!(first.mode & 0o111, 0, "not executable");
        let script = got[2].as_ref().unwrap();
        assert_eq!(
            (script.mode, script.mtime, script.bytes.as_slice()),
            (0o750, (7, 250_000_000), &b"#!/bin/sh\n"[..])
        );
        assert_eq!(
            [&got[1], &got[3], &got[4], &got[5]],
            [&None, &None, &None, &None],
            "too big, a link, gone, a directory"
        );
    }

    #[test]
    fn an_answer_cut_short_or_garbled_proves_nothing() {
        let content = b"ok\x00644 7.250000000\x003\x00abc";
        assert!(parse_contents(content, 1).is_some());
        assert_eq!(parse_contents(&content[..content.len() - 1], 1), None);
        assert_eq!(parse_contents(b"what\x00", 1), None);
        assert_eq!(parse_contents(b"no\x00no\x00", 1), None, "more than asked");
    }
}
