//! A local project directory with an empty HOME for ssh-ec2, and the real ssh-ec2 binary run
//! there, on the cloud's laptop, through its standard settings only.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TestCloud;

pub struct Project {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project::in_dir(
            tempfile::Builder::new()
                .prefix("sshec2-proj-")
                .tempdir()
                .unwrap(),
        )
    }

    /// A project directory named exactly `name` in the temporary directory (for names that
    /// matter, like `exp?`); pick a name no other test run uses.
    pub fn named(name: &str) -> Project {
        Project::in_dir(
            tempfile::Builder::new()
                .prefix(name)
                .rand_bytes(0)
                .tempdir()
                .unwrap(),
        )
    }

    fn in_dir(dir: tempfile::TempDir) -> Project {
        Project {
            dir,
            home: tempfile::Builder::new()
                .prefix("sshec2-home-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn write(&self, relative: &str, content: &str) {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.path().join(relative)).ok()
    }

    /// ssh-ec2 in this project, on the cloud's laptop, pointed at the cloud through its
    /// standard settings only (AWS_ENDPOINT_URL, SSH_EC2_CHECKIP_URL): it reaches instances
    /// at their private addresses, as it would from inside a VPC.
    pub fn ssh_ec2(&self, cloud: &TestCloud) -> Command {
        self.program_for(cloud, &ssh_ec2_binary())
    }

    /// Another program (make, a shell) in this project, on the cloud's laptop, with the
    /// environment ssh-ec2 gets from `ssh_ec2`, and ssh-ec2 itself first in PATH.
    pub fn program_for(&self, cloud: &TestCloud, program: &Path) -> Command {
        let mut command = cloud.laptop.command(program);
        self.clean_environment(&mut command);
        for (name, value) in cloud_environment(cloud) {
            command.env(name, value);
        }
        command
    }

    /// ssh-ec2 in this project with a clean environment and no cloud settings at all (here,
    /// not on a laptop).
    pub fn ssh_ec2_without_cloud(&self) -> Command {
        self.command(&ssh_ec2_binary())
    }

    /// `program` in this project, here, with the clean environment ssh-ec2 gets (no cloud
    /// settings) and ssh-ec2 first in PATH.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        self.clean_environment(&mut command);
        command
    }

    fn clean_environment(&self, command: &mut Command) {
        command
            .env_clear()
            .env("PATH", path_with_ssh_ec2())
            .env("HOME", self.home())
            .env("USER", "tester")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .current_dir(self.path());
    }

    /// The keys ssh-ec2 keeps for instances it launched from here.
    pub fn kept_instance_keys(&self) -> Vec<String> {
        let dir = self.home().join(".local/state/ssh-ec2/instances");
        super::entries(&dir)
            .iter()
            .filter_map(|e| e.file_name()?.to_str().map(str::to_string))
            .collect()
    }
}

/// The settings that point ssh-ec2 at the cloud, and no connection kept after a run: it
/// outlives the run, and would hold the instance's sshd in tests not about it (held.rs turns
/// it on).
pub fn cloud_environment(cloud: &TestCloud) -> [(&'static str, String); 6] {
    [
        ("SSH_EC2_KEEP_CONNECTION", "off".into()),
        ("AWS_ENDPOINT_URL", cloud.endpoint.clone()),
        ("AWS_REGION", cloud.region.clone()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("SSH_EC2_CHECKIP_URL", cloud.checkip_url.clone()),
    ]
}

/// This PATH, with the ssh-ec2 under test first.
pub fn path_with_ssh_ec2() -> std::ffi::OsString {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let bin = ssh_ec2_binary().parent().unwrap().to_path_buf();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&inherited))).unwrap()
}

pub fn ssh_ec2_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ssh-ec2"))
}
