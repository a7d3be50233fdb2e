//! The front page's first command, `./try-it`: it runs the example on a simulated cloud from
//! start to finish, and stops everything it started, whether the run succeeds, fails or is
//! interrupted. It runs here with the already built ssh-ec2 (`SSH_EC2_BIN`), so nothing is
//! rebuilt, and with `--yes`, since the test bed is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{Run, signal, ssh_ec2_binary, wait_until};

/// A directory of the test's own for everything `./try-it` makes: the simulated cloud's files
/// (`cloud/`) and the copy of the example (`tmp/`, its TMPDIR).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("ssh-ec2-front-page-")
            .tempdir()
            .unwrap();
        // The simulated instances' login user reads its keys under cloud/.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        Scratch { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `./try-it --yes` with `ssh_ec2` as its ssh-ec2.
    fn try_it(&self, ssh_ec2: &Path) -> Command {
        let mut command = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("try-it"));
        command
            .arg("--yes")
            .env("SSH_EC2_BIN", ssh_ec2)
            .env("SSH_EC2_TRY_IT_DIR", self.path().join("cloud"))
            .env("TMPDIR", self.path().join("tmp"));
        command
    }

    /// A stand-in for ssh-ec2 that runs `script` (sh).
    fn fake_ssh_ec2(&self, script: &str) -> PathBuf {
        let path = self.path().join("ssh-ec2");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    }

    /// The cloud is stopped and its files gone, the copy of the example removed, and no process
    /// started for this run is left (they all carry this directory in their command line or
    /// their environment: the cloud, its instances' sshds and sessions, ssh-ec2).
    fn assert_nothing_left(&self, run: &Run) {
        assert!(
            !self.path().join("cloud").exists(),
            "the cloud's files\n{run}"
        );
        let copies: Vec<_> = std::fs::read_dir(self.path().join("tmp"))
            .unwrap()
            .collect();
        assert!(
            copies.is_empty(),
            "the copy of the example: {copies:?}\n{run}"
        );
        let mark = self.path().to_string_lossy().into_owned();
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let pid: u32 = path.file_name()?.to_str()?.parse().ok()?;
                let seen = ["cmdline", "environ"].iter().any(|file| {
                    std::fs::read(path.join(file))
                        .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(&mark))
                });
                seen.then(|| format!("{pid}"))
            })
            .collect();
        assert!(left.is_empty(), "processes left running: {left:?}\n{run}");
    }
}

/// A test that failed before `./try-it` stopped its cloud still stops it.
impl Drop for Scratch {
    fn drop(&mut self) {
        let cloud = self.path().join("cloud");
        if cloud.exists() {
            let bed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/try-it");
            let _ = Command::new(bed)
                .arg("stop")
                .env("SSH_EC2_TRY_IT_DIR", cloud)
                .output();
        }
    }
}

#[test]
fn try_it_runs_the_example_end_to_end_and_leaves_nothing_running() {
    let scratch = Scratch::new();
    let run = Run::of(scratch.try_it(&ssh_ec2_binary()).stdin(Stdio::null()));
    run.assert_code(0);
    for seen in [
        "wrote results/metrics.json",
        "terminated, about $",
        "results/metrics.json (",
        "\"epochs\": 3",
        "no instance of",
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
fn try_it_cleans_up_after_a_failure_and_after_ctrl_c() {
    let scratch = Scratch::new();
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
