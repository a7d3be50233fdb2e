//! The two try-its, as README.md and docs/development.md tell them: `./try-it` runs the example
//! on a simulated cloud from start to finish and stops everything it started, whether the run
//! succeeds, fails or is interrupted; `tests/testbed/try-it` starts that cloud for a person,
//! who uses it through its shell, and stops it with everything it made.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Project, Run, signal, wait_until};
use serde_json::Value;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A temporary directory others may enter: the simulated instances' login user reads its
/// keys under the cloud's directory.
fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

/// Stops the try-it cloud even when an assertion fails half-way.
struct TryIt {
    dir: PathBuf,
}

impl TryIt {
    fn script() -> PathBuf {
        repository().join("tests/testbed/try-it")
    }

    fn command(&self, action: &str) -> Command {
        let mut command = Command::new(TryIt::script());
        command.arg(action).env("SSH_EC2_TRY_IT_DIR", &self.dir);
        command
    }

    /// The network namespaces the cloud holds now, its laptop's and each running machine's, by
    /// inode, each opened: an inode number names a namespace only while it lives (a freed
    /// one's is soon another test bed's), and these stay alive while the files are open.
    fn live_namespaces(&self) -> Vec<(u64, std::fs::File)> {
        let laptop = std::fs::read_to_string(self.dir.join("laptop")).unwrap();
        let events = std::fs::read_to_string(self.dir.join("cloud/events.jsonl")).unwrap();
        let mut running = std::collections::BTreeMap::new();
        for event in events
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
        {
            let instance = event["instance"].to_string();
            match event["event"].as_str() {
                Some("sshd-started") => {
                    let pid = event["pid"].as_u64().unwrap();
                    running.insert(instance, (pid, event["netns"].as_u64().unwrap()));
                }
                Some("sshd-stopped") => {
                    running.remove(&instance);
                }
                _ => {}
            }
        }
        let mut fields = laptop.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        let laptop = (fields.next().unwrap(), fields.next().unwrap());
        std::iter::once(laptop)
            .chain(running.into_values())
            .map(|(pid, inode)| {
                let file = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
                let opened = std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
                assert_eq!(opened, inode, "the namespace of {pid}");
                (inode, file)
            })
            .collect()
    }
}

impl TryIt {
    /// Stops it with a shell still open on its laptop (which stop ends too), and checks that
    /// nothing is left: no process of the cloud's group, none on its laptop or the machine that
    /// ran, no files.
    fn stop_and_assert_nothing_left(&self, project: &Project, group: i32) {
        let held = self.live_namespaces();
        assert_eq!(held.len(), 2, "the laptop's and the running machine's");
        let namespaces: Vec<u64> = held.iter().map(|(inode, _)| *inode).collect();
        let mut shell = project.command(&TryIt::script());
        shell.env("SSH_EC2_TRY_IT_DIR", &self.dir);
        let mut lingering = (shell.args(["shell", "sleep", "600"]).stdin(Stdio::null()))
            .spawn()
            .unwrap();
        wait_until("the shell's sleep on the laptop", || {
            common::processes_in(&namespaces[..1]).len() > 1
        });

        let stopped = Run::of(&mut self.command("stop"));
        stopped.assert_code(0);
        assert!(stopped.stderr.contains("stopped"), "{stopped}");
        assert!(!lingering.wait().unwrap().success(), "the shell was ended");
        assert!(
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_err(),
            "no process of the cloud's group is left"
        );
        let left = common::processes_in(&namespaces);
        assert!(left.is_empty(), "processes left on its machines: {left:?}");
        assert!(!self.dir.exists(), "its files are gone");
    }
}

impl Drop for TryIt {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}

#[test]
fn try_it_starts_a_cloud_that_ssh_ec2_uses_from_its_shell_and_stops_all_of_it() {
    let parent = open_tempdir("ssh-ec2-try-it-");
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

    // What the README says to type: ssh-ec2, in try-it's shell; the instance left running for
    // stop to end.
    let project = Project::new();
    project.write("in.txt", "up\n");
    let mut shell = project.command(&TryIt::script());
    shell.env("SSH_EC2_TRY_IT_DIR", &try_it.dir);
    let run = Run::of(shell.args([
        "shell", "ssh-ec2", "--leave", "cat", "in.txt", ">", "out.txt",
    ]));
    run.assert_code(0);
    assert_eq!(project.read("out.txt").as_deref(), Some("up\n"), "{run}");
    assert!(run.stderr.contains("connected to ubuntu@172.31."), "{run}");
    assert!(run.stderr.contains("left running"), "{run}");

    try_it.stop_and_assert_nothing_left(&project, group);

    // What uninstall would remove: what install recorded adding, and the venvs.
    let listed = Run::of(try_it.command("uninstall").arg("--dry-run"));
    listed.assert_code(0);
    let venv = repository().join("tests/testbed/.venv");
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
        repo = repository().display(),
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
    let venv = repository().join("tests/testbed/.venv");
    assert!(venv.exists(), "this machine itself keeps everything");
}

/// A directory of the test's own for everything `./try-it` makes: the simulated cloud's files
/// (`cloud/`, stopped on drop even when an assertion fails) and the copy of the example (`tmp/`,
/// its TMPDIR).
struct Scratch {
    // First: dropped (the cloud stopped) before the directory goes.
    bed: TryIt,
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = open_tempdir("ssh-ec2-front-page-");
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let bed = TryIt {
            dir: dir.path().join("cloud"),
        };
        Scratch { bed, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `./try-it --yes` with `ssh_ec2` as its ssh-ec2, so that nothing is built again (the
    /// test bed is installed: nothing is asked).
    fn try_it(&self, ssh_ec2: &Path) -> Command {
        let mut command = Command::new(repository().join("try-it"));
        command
            .arg("--yes")
            .env("SSH_EC2_BIN", ssh_ec2)
            .env("SSH_EC2_TRY_IT_DIR", &self.bed.dir)
            .env("TMPDIR", self.path().join("tmp"));
        command
    }

    /// A stand-in for ssh-ec2 that runs `script` (sh).
    fn fake_ssh_ec2(&self, script: &str) -> PathBuf {
        let path = self.path().join("ssh-ec2");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o755)).unwrap();
        path
    }

    /// The cloud is stopped and its files gone, the copy of the example removed, and no process
    /// started for this run is left (they all carry this directory in their command line or
    /// their environment: the cloud, its machines' sshds and sessions, ssh-ec2).
    fn assert_nothing_left(&self, run: &Run) {
        assert!(!self.bed.dir.exists(), "the cloud's files\n{run}");
        let copies = common::entries(&self.path().join("tmp"));
        assert!(
            copies.is_empty(),
            "the copy of the example: {copies:?}\n{run}"
        );
        let mark = self.path().to_string_lossy().into_owned();
        let left: Vec<PathBuf> = common::entries(Path::new("/proc"))
            .into_iter()
            .filter(|process| {
                ["cmdline", "environ"].iter().any(|file| {
                    std::fs::read(process.join(file))
                        .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(&mark))
                })
            })
            .collect();
        assert!(left.is_empty(), "processes left running: {left:?}\n{run}");
    }
}

#[test]
fn the_front_page_try_it_runs_the_example_end_to_end_and_leaves_nothing_running() {
    let scratch = Scratch::new();
    let ssh_ec2 = Path::new(env!("CARGO_BIN_EXE_ssh-ec2"));
    let run = Run::of(scratch.try_it(ssh_ec2).stdin(Stdio::null()));
    run.assert_code(0);
    for seen in [
        "connected to ubuntu@172.31.",
        "wrote results/metrics.json",
        "terminated, about $",
        "results/metrics.json (",
        "\"epochs\": 3",
        "no instance of",
        "try-it uninstall",
    ] {
        assert!(
            run.stdout.contains(seen) || run.stderr.contains(seen),
            "{seen}\n{run}"
        );
    }
    let copy = format!(
        "a copy of examples/ in {}",
        scratch.path().join("tmp").display()
    );
    assert!(run.stderr.contains(&copy), "runs in a copy\n{run}");
    scratch.assert_nothing_left(&run);
}

#[test]
fn the_front_page_try_it_cleans_up_after_a_failure_and_after_ctrl_c() {
    let scratch = Scratch::new();
    // Fails before any instance runs: the cloud is stopped all the same.
    let failing = scratch.fake_ssh_ec2("exit 3");
    let failed = Run::of(scratch.try_it(&failing).stdin(Stdio::null()));
    failed.assert_code(3);
    scratch.assert_nothing_left(&failed);

    let started = scratch.path().join("started");
    let slow = scratch.fake_ssh_ec2(&format!("touch '{}'\nexec sleep 60", started.display()));
    let child = {
        use std::os::unix::process::CommandExt;
        scratch
            .try_it(&slow)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    wait_until("the example's run to start", || started.exists());
    // As a terminal does: to the whole foreground group.
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let interrupted = Run::collect(child);
    interrupted.assert_code(130);
    std::fs::remove_file(&started).unwrap();
    scratch.assert_nothing_left(&interrupted);
}
