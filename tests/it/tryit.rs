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
