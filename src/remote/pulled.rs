//! Whether the instance changed anything since the last pull that brought everything home, told
//! without listing the tree through rsync (a dozen round trips on a slow link): each pull of a
//! lone instance stamps `~/.ssh-ec2/pulled/<directory's job name>/<token>` as its listing
//! starts, and a later run asks `find -cnewer` of it. A file's change time (ctime) is the
//! kernel's: no program can set it back, as `touch` can a modification time. The kernel stamps
//! files with a clock that ticks every few milliseconds, so a file changed in the stamp's own
//! tick has the stamp's time: the stamp is set back one nanosecond, and such a file counts as
//! changed (as does one changed just before, in that tick: a pull that was not needed). The
//! stamp holds the boot it was made in: a restart may set the clock back, so a stamp from
//! another boot proves nothing.

use super::RemoteDir;

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

    /// Prints `unchanged` when nothing in `dir` (nor `dir` itself) changed since this stamp,
    /// made in this boot; else nothing. A `find` that could not look everywhere says so on its
    /// output, which then is not empty.
    pub fn unchanged_command(&self, dir: &RemoteDir) -> String {
        let dir = dir.for_shell();
        format!(
            "m={path}; [ -f \"$m\" ] && [ \"$(cat \"$m\")\" = \"$(cat {BOOT_ID})\" ] && \
             [ -d {dir} ] && [ -z \"$(find -H {dir} -cnewer \"$m\" -print -quit 2>&1)\" ] && \
             echo unchanged; true",
            path = self.path()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(home: &std::path::Path, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("HOME", home)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The stamp, then a change: a new file, a removed one, a file's mode; a file whose
    /// modification time is set back is still a change.
    #[test]
    fn a_change_after_the_stamp_shows_whatever_its_times_say() {
        let home = tempfile::tempdir().unwrap();
        let dir = RemoteDir::parse("~/proj").unwrap();
        std::fs::create_dir(home.path().join("proj")).unwrap();
        std::fs::write(home.path().join("proj/kept"), "x").unwrap();
        let mark = PullMark::new("ssh-ec2-proj");
        let check = mark.unchanged_command(&dir);
        assert_eq!(sh(home.path(), &check), "", "never stamped");

        // The stamp as the pull's rsync makes it, in a later tick of the kernel's file clock
        // than what was written before (a tick is at most 10 ms).
        let stamp = format!("{} --version >/dev/null", mark.stamp_then_rsync());
        let a_tick_later = || std::thread::sleep(std::time::Duration::from_millis(25));
        a_tick_later();
        sh(home.path(), &stamp);
        assert_eq!(sh(home.path(), &check), "unchanged\n");
        let changes = [
            "touch -d @0 proj/kept",
            "echo y > proj/new && touch -d @0 proj/new proj",
            "rm proj/new && touch -d @0 proj",
            "chmod 600 proj/kept",
        ];
        for change in changes {
            sh(home.path(), &stamp);
            sh(home.path(), &format!("cd ~ && {change}"));
            assert_eq!(sh(home.path(), &check), "", "{change}");
        }
        // A stamp that cannot be made leaves none (rsync runs all the same).
        let blocked = home.path().join(".ssh-ec2/pulled");
        std::fs::remove_dir_all(&blocked).unwrap();
        std::fs::write(&blocked, "not a directory").unwrap();
        assert_eq!(sh(home.path(), &stamp), "");
        assert_eq!(sh(home.path(), &check), "", "no stamp, so changed");
        std::fs::remove_file(&blocked).unwrap();

        // Another pull's stamp, or one from another boot, proves nothing.
        a_tick_later();
        sh(home.path(), &stamp);
        assert_eq!(sh(home.path(), &check), "unchanged\n");
        let other = PullMark::new("ssh-ec2-proj").unchanged_command(&dir);
        assert_eq!(sh(home.path(), &other), "");
        let path = home
            .path()
            .join(".ssh-ec2/pulled/ssh-ec2-proj")
            .join(mark.token());
        let stamped = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "another boot\n").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(stamped).unwrap();
        assert_eq!(sh(home.path(), &check), "");
    }
}
