//! The simulated instances as machines: what they were launched with, their files, seen from
//! here on their disks, their consoles, and the sshd processes of their connections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput;
use aws_sdk_ec2::types::{InstanceAttributeName, InstanceStateName};

use super::{Project, TestCloud, instance_id, state_of, tag};

impl TestCloud {
    /// The instance's disk: a directory of this machine that the instance has as its /home,
    /// /root, /tmp, /etc/ssh... (tests/testbed/boot.sh). Deleted when it is terminated.
    pub fn disk(&self, id: &str) -> PathBuf {
        self.state.path().join(id).join("disk")
    }

    /// The instance's file `path` (absolute, under one of the disk's directories), from here.
    pub fn file_on(&self, id: &str, path: &str) -> PathBuf {
        self.disk(id).join(path.trim_start_matches('/'))
    }

    /// The login user's home on the instance, from here.
    pub fn home_on(&self, id: &str) -> PathBuf {
        self.file_on(id, &format!("/home/{}", self.user))
    }

    /// The instance's console: what its sshd logged, kept beside its disk, also once the
    /// instance is terminated.
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.state.path().join(id).join("console.log")).unwrap_or_default()
    }

    /// The one live instance of the project's directory (its `ssh-ec2:dir` tag).
    pub fn instance_of(&self, project: &Project) -> String {
        self.live_instance_of(project)
            .unwrap_or_else(|| panic!("{} has no live instance", project.path().display()))
    }

    /// The live instance of the project's directory, if there is one yet.
    fn live_instance_of(&self, project: &Project) -> Option<String> {
        let dir = project.path().canonicalize().unwrap();
        let dir = dir.to_str().unwrap();
        let found: Vec<String> = self
            .instances()
            .iter()
            .filter(|i| state_of(i) != InstanceStateName::Terminated)
            .filter(|i| tag(i, "ssh-ec2:dir").as_deref() == Some(dir))
            .map(instance_id)
            .collect();
        assert!(
            found.len() < 2,
            "{dir} has several live instances: {found:?}"
        );
        found.into_iter().next()
    }

    /// Where the project's copy is on its instance (~/<directory name>), from here.
    pub fn remote(&self, project: &Project) -> PathBuf {
        self.remote_dir(&self.instance_of(project), project)
    }

    fn remote_dir(&self, id: &str, project: &Project) -> PathBuf {
        self.home_on(id).join(project.path().file_name().unwrap())
    }

    /// A file of the project's copy on its instance (None: no such file, or no instance yet).
    pub fn read_remote(&self, project: &Project, relative: &str) -> Option<String> {
        let id = self.live_instance_of(project)?;
        std::fs::read_to_string(self.remote_dir(&id, project).join(relative)).ok()
    }

    /// The project's entries in ssh-ec2's state on its instance (`kind`: `jobs`, `leases`,
    /// `watchdog`, `runs`; see src/remote/), named after its job; none without an instance.
    pub fn remote_state_entries(&self, project: &Project, kind: &str) -> Vec<PathBuf> {
        let name = project.path().file_name().unwrap().to_string_lossy();
        let prefix = format!("ssh-ec2-{name}-");
        let Some(id) = self.live_instance_of(project) else {
            return Vec::new();
        };
        let dir = self.home_on(&id).join(".ssh-ec2").join(kind);
        entries(&dir)
            .into_iter()
            .filter(|e| {
                e.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
            })
            .collect()
    }

    /// Cuts every SSH connection to the running instance, as a network drop would: the sshd
    /// processes serving them die, what they ran (and the listening sshd) stays. Returns how
    /// many processes were killed.
    pub fn drop_connections(&self) -> usize {
        let signal = nix::sys::signal::Signal::SIGKILL;
        self.connection_pids()
            .into_iter()
            .filter(|&pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok())
            .count()
    }

    /// The sshd processes serving connections to the running instance (below its listener,
    /// the instance's pid 1).
    pub fn connection_pids(&self) -> Vec<i32> {
        let listener = self
            .events()
            .iter()
            .rev()
            .find(|e| e["event"] == "sshd-started")
            .and_then(|e| e["pid"].as_i64())
            .expect("no instance's sshd is running") as i32;
        let children = children_by_parent();
        let mut todo = vec![listener];
        let mut found = Vec::new();
        while let Some(parent) = todo.pop() {
            for &child in children.get(&parent).into_iter().flatten() {
                let comm = std::fs::read_to_string(format!("/proc/{child}/comm"));
                if comm.is_ok_and(|c| c.trim() == "sshd") {
                    found.push(child);
                }
                todo.push(child);
            }
        }
        found
    }

    fn attribute(
        &self,
        instance_id: &str,
        attribute: InstanceAttributeName,
    ) -> DescribeInstanceAttributeOutput {
        let asked = (self.ec2().describe_instance_attribute())
            .instance_id(instance_id)
            .attribute(attribute);
        self.block_on(asked.send()).unwrap()
    }

    /// What the instance does when shut down from inside: `stop` or `terminate`.
    pub fn shutdown_behavior(&self, instance_id: &str) -> Option<String> {
        let found = self.attribute(
            instance_id,
            InstanceAttributeName::InstanceInitiatedShutdownBehavior,
        );
        let behavior = found.instance_initiated_shutdown_behavior();
        behavior.and_then(|v| v.value()).map(str::to_string)
    }

    pub fn user_data(&self, instance_id: &str) -> String {
        use base64::Engine;
        let found = self.attribute(instance_id, InstanceAttributeName::UserData);
        let encoded = found
            .user_data()
            .and_then(|v| v.value())
            .unwrap_or_default();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
        )
        .unwrap()
    }
}

/// Every process's children, from /proc.
fn children_by_parent() -> BTreeMap<i32, Vec<i32>> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields follow the last ")".
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    children
}

/// The entries of a directory (none if it does not exist).
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|found| found.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// The processes in the network namespaces `namespaces` (inodes): what is left of machines.
pub fn processes_in(namespaces: &[u64]) -> Vec<PathBuf> {
    entries(Path::new("/proc"))
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p.join("ns/net"))
                .is_ok_and(|n| namespaces.contains(&std::os::unix::fs::MetadataExt::ino(&n)))
        })
        .collect()
}
