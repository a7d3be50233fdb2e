//! The test bed: a simulated cloud per test (tests/testbed/cloud.py: moto behind a proxy, a
//! boot simulator that gives each running instance a machine of its own with a real sshd, a
//! checkip stand-in), its laptop (a network namespace where ssh-ec2 runs and reaches the
//! instances at their private addresses), a project directory, and the real ssh-ec2 binary run
//! against them through its standard settings. Nothing but loopback and the bed's own bridge;
//! every process, namespace and link started here goes when its guard drops.

mod bed_log;
mod cloud;
mod fakes;
mod forks;
mod laptop;
mod machines;
mod pane;
mod project;
mod run;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Instance, InstanceStateName};

pub use cloud::{CloudOptions, TestCloud};
pub use fakes::{Tripwire, cloud_config, written_file};
pub use laptop::Laptop;
pub use machines::{entries, processes_in};
pub use pane::Pane;
pub use project::{Project, cloud_environment, path_with_ssh_ec2};
pub use run::{RUN_TIMEOUT, Run, signal, start_until_held, start_until_ready, wait_or_kill};

const INSTALL_HINT: &str = "run `tests/testbed/install` first (it installs openssh-server, rsync, \
                            tmux, screen, sudo, nftables, the local user `ubuntu` and the pinned \
                            moto_server)";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn instance_id(instance: &Instance) -> String {
    instance.instance_id().unwrap().to_string()
}

/// No live instance, no security group, placement group or key pair, no keys or unfinished
/// launch kept.
pub fn assert_nothing_left(cloud: &TestCloud, project: &Project, run: &Run) {
    let alive = cloud.live_instances();
    assert!(alive.is_empty(), "instances left: {alive:?}\n{run}");
    assert!(
        cloud.run_security_groups().is_empty(),
        "security groups left\n{run}"
    );
    assert!(cloud.key_pair_names().is_empty(), "{run}");
    let placement = cloud.placement_groups();
    assert!(
        placement.is_empty(),
        "placement groups left: {placement:?}\n{run}"
    );
    assert!(
        project.kept_instance_keys().is_empty(),
        "keys or unfinished launches kept: {:?}\n{run}",
        project.kept_instance_keys()
    );
}

/// Ends, with `command` (ssh-ec2 in the instance's directory), the instance a test left
/// running to look at it; nothing is left live.
pub fn end(cloud: &TestCloud, command: &mut std::process::Command) {
    Run::of(command.args(["--terminate", "--no-rsync", "true"])).assert_code(0);
    assert!(cloud.live_instances().is_empty());
}

/// Polls `done` until it holds; fails the test after a minute, naming `what`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}{}",
            bed_log::reports()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the instance's tag `key`.
pub fn tag(instance: &Instance, key: &str) -> Option<String> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_string)
}

pub fn state_of(instance: &Instance) -> InstanceStateName {
    instance.state().and_then(|s| s.name()).cloned().unwrap()
}
