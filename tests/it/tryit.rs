//! `tests/testbed/try-it`: the simulated cloud for a person, as README.md tells it: started,
//! used through its shell, stopped with everything it made.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Project, Run};
use serde_json::Value;

/// Stops the try-it cloud even when an assertion fails half-way.
struct TryIt {
    dir: std::path::PathBuf,
}

impl TryIt {
    fn script() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/try-it")
    }

    fn command(&self, action: &str) -> Command {
        let mut command = Command::new(TryIt::script());
        command.arg(action).env("SSH_EC2_TRY_IT_DIR", &self.dir);
        command
    }

    /// The network namespaces of its laptop and of every machine it booted, by inode.
    fn namespaces(&self) -> Vec<u64> {
        let laptop = std::fs::read_to_string(self.dir.join("laptop")).unwrap();
        let events = std::fs::read_to_string(self.dir.join("cloud/events.jsonl")).unwrap();
        let machines = events
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter_map(|e| e["netns"].as_u64());
        std::iter::once(laptop.split_whitespace().nth(1).unwrap().parse().unwrap())
            .chain(machines)
            .collect()
    }
}

impl Drop for TryIt {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

#[test]
fn try_it_starts_a_cloud_that_ssh_ec2_uses_from_its_shell_and_stops_all_of_it() {
    let parent = tempfile::Builder::new()
        .prefix("ssh-ec2-try-it-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        parent.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let try_it = TryIt {
        dir: parent.path().join("cloud"),
    };
    let started = Run::of(try_it.command("start").arg("--yes"));
    started.assert_code(0);
    assert!(started.stderr.contains("try-it shell"), "{started}");
    let exports = Run::of(&mut try_it.command("env"));
    exports.assert_code(0);
    assert!(
        exports.stdout.contains("export AWS_ENDPOINT_URL="),
        "{exports}"
    );
    let group: i32 = std::fs::read_to_string(try_it.dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // What the README says to type: ssh-ec2, in try-it's shell.
    let project = Project::new();
    project.write("in.txt", "up\n");
    let mut shell = project.command(&TryIt::script());
    shell.env("SSH_EC2_TRY_IT_DIR", &try_it.dir);
    let run = Run::of(shell.args(["shell", "ssh-ec2", "cat", "in.txt", ">", "out.txt"]));
    run.assert_code(0);
    assert_eq!(project.read("out.txt").as_deref(), Some("up\n"), "{run}");
    assert!(run.stderr.contains("connected to ubuntu@172.31."), "{run}");
    assert!(run.stderr.contains("terminated, about $"), "{run}");

    let namespaces = try_it.namespaces();
    assert!(
        namespaces.len() >= 2,
        "the laptop and the instance's machine"
    );
    let stopped = Run::of(&mut try_it.command("stop"));
    stopped.assert_code(0);
    assert!(stopped.stderr.contains("stopped"), "{stopped}");
    assert!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_err(),
        "no process of the cloud's group is left"
    );
    let left = common::processes_in(&namespaces);
    assert!(left.is_empty(), "processes left on its machines: {left:?}");
    assert!(!try_it.dir.exists(), "its files are gone");

    // What uninstall would remove: what install recorded adding, and the venvs.
    let listed = Run::of(try_it.command("uninstall").arg("--dry-run"));
    listed.assert_code(0);
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/.venv");
    assert!(
        listed.stdout.contains(&venv.display().to_string()),
        "{listed}"
    );
    let record = std::fs::read_to_string("/var/lib/ssh-ec2-testbed/installed").unwrap_or_default();
    for added in record.lines().filter_map(|l| l.split_once('=')) {
        assert!(listed.stdout.contains(added.1), "{added:?}\n{listed}");
    }
    assert!(venv.exists(), "a dry run removes nothing");
}

/// Mounts an overlay of / (changes to a tmpfs), then runs `script` chrooted in it: what it does
/// to the machine is seen there, and gone with the mount namespace (`unshare --mount`).
const IN_A_COPY_OF_THIS_MACHINE: &str = r#"set -e
work="$1"; shift
mount -t tmpfs tmpfs "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
for fs in proc dev sys; do mount --rbind "/$fs" "$work/root/$fs"; done
exec chroot "$work/root" /bin/bash -c "$@"
"#;

#[test]
fn try_it_uninstall_removes_what_install_added_and_the_venvs() {
    // On a copy of this machine: purging sudo or OpenMPI here would pull them from under the
    // other tests.
    let work = tempfile::tempdir().unwrap();
    let record = std::fs::read_to_string("/var/lib/ssh-ec2-testbed/installed").unwrap_or_default();
    let added: Vec<&str> = record
        .lines()
        .filter_map(|l| l.strip_prefix("package="))
        .collect();
    let script = format!(
        "cd {repo} && tests/testbed/try-it uninstall >&2 && \
         dpkg-query -W -f='${{Package}} ${{Status}}\\n' {packages} 2>/dev/null | grep ' installed$'; \
         ls -d tests/testbed/.venv /opt/ssh-ec2-testbed /var/lib/ssh-ec2-testbed 2>/dev/null; \
         echo uninstalled",
        repo = env!("CARGO_MANIFEST_DIR"),
        packages = added.join(" "),
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "bash", "-c"]);
    command.args([
        IN_A_COPY_OF_THIS_MACHINE,
        "copy",
        &work.path().display().to_string(),
    ]);
    let run = Run::of(command.arg(script));
    run.assert_code(0);
    assert_eq!(
        run.stdout, "uninstalled\n",
        "no package it added, no venv and no record left\n{run}"
    );
    for package in &added {
        assert!(run.stderr.contains(package), "{package}\n{run}");
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/.venv");
    assert!(venv.exists(), "this machine itself keeps everything");
}
