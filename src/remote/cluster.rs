//! How a cluster is spelled on its nodes: the variables every node's command gets (torchrun's,
//! MPI's through a hostfile, and ssh-ec2's own), the SSH set-up that lets the nodes reach each
//! other with their host keys checked, and the copy of the synced directory from the head to
//! the other nodes.

use super::{RemoteDir, shell_quote, state_dir};

/// The port torchrun's rendezvous listens on at the head (torchrun's own default).
pub const MASTER_PORT: u16 = 29500;
/// The node-to-node key, its public half in every node's authorized_keys.
const KEY: &str = "\"$HOME\"/.ssh/ssh-ec2-cluster";
/// Where every node finds the hostfile.
const HOSTFILE: &str = "\"$HOME\"/.ssh-ec2/cluster/hostfile";
/// The known_hosts file that holds every node's host key, by private address.
const KNOWN_HOSTS: &str = "\"$HOME\"/.ssh/ssh-ec2-known_hosts";
/// Marks the lines ssh-ec2 writes into the user's own SSH files, to replace them next time.
const MARK: &str = "# ssh-ec2 cluster";

/// The GPUs of the node, counted where the command runs (every node of a cluster is of one
/// type); the processes per node are one per GPU, else one.
const GPUS: &str = "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')";
const SLOTS: &str = "$(( SSH_EC2_GPUS_PER_NODE > 0 ? SSH_EC2_GPUS_PER_NODE : 1 ))";

/// A variable's value: as written, or worked out by the node's shell.
#[derive(Debug, PartialEq, Eq)]
pub enum Value {
    Literal(String),
    Shell(&'static str),
}

/// A machine's nodes (one, or a cluster's) as each of them sees the others.
pub struct Layout<'a> {
    /// Private addresses, in rank order (the head first).
    pub addresses: &'a [String],
}

impl Layout<'_> {
    /// What node `rank`'s command finds in its environment, in the order it is set.
    pub fn variables(&self, rank: usize) -> Vec<(&'static str, Value)> {
        let head = self.addresses.first().cloned().unwrap_or_default();
        let nodes = self.addresses.len().to_string();
        let literal = |value: &str| Value::Literal(value.to_string());
        vec![
            ("SSH_EC2_NODE_RANK", literal(&rank.to_string())),
            ("SSH_EC2_NUM_NODES", literal(&nodes)),
            ("SSH_EC2_NODE_IPS", literal(&self.addresses.join("\n"))),
            ("SSH_EC2_HEAD_IP", literal(&head)),
            ("SSH_EC2_GPUS_PER_NODE", Value::Shell(GPUS)),
            ("SSH_EC2_HOSTFILE", Value::Shell(HOSTFILE)),
            // torchrun reads its options from PET_<OPTION> when they are not given.
            ("PET_NNODES", literal(&nodes)),
            ("PET_NODE_RANK", literal(&rank.to_string())),
            ("PET_MASTER_ADDR", literal(&head)),
            ("PET_MASTER_PORT", literal(&MASTER_PORT.to_string())),
            ("PET_NPROC_PER_NODE", Value::Shell(SLOTS)),
            ("MASTER_ADDR", literal(&head)),
            ("MASTER_PORT", literal(&MASTER_PORT.to_string())),
        ]
    }

    /// `command` as node `rank` runs it: its variables exported first.
    pub fn command_for(&self, rank: usize, command: &str) -> String {
        let exports: String = (self.variables(rank).into_iter())
            .map(|(name, value)| match value {
                Value::Literal(value) => format!("export {name}={}; ", shell_quote(&value)),
                Value::Shell(expression) => format!("export {name}={expression}; "),
            })
            .collect();
        format!("{exports}{command}")
    }

    /// Writes `<ip> slots=<n>` a line, for `mpirun --hostfile` and DeepSpeed.
    fn hostfile_command(&self) -> String {
        let lines: String = (self.addresses.iter())
            .map(|ip| format!("{ip} slots=%s\\n"))
            .collect();
        let slots = vec!["$slots"; self.addresses.len()].join(" ");
        format!(
            "SSH_EC2_GPUS_PER_NODE={GPUS}; slots={SLOTS}; printf \"{lines}\" {slots} > {HOSTFILE}"
        )
    }

    /// Sets up a node so that `ssh`, `mpirun` and `pdsh` reach every node by private address
    /// with the cluster's key and each node's host key checked: the hostfile, the known hosts,
    /// a `Host` block for the addresses, and the public key let in. The private key comes on
    /// stdin, never on a command line. `host_keys` are the nodes' public host keys (OpenSSH
    /// form), in rank order.
    pub fn setup_command(&self, host_keys: &[Vec<String>], public_key: &str) -> String {
        let known_hosts: String = (self.addresses.iter().zip(host_keys))
            .flat_map(|(ip, keys)| keys.iter().map(move |key| format!("{ip} {key}\n")))
            .collect();
        let config = format!(
            "{MARK}\nHost {}\n    IdentityFile ~/.ssh/ssh-ec2-cluster\n    UserKnownHostsFile \
             ~/.ssh/ssh-ec2-known_hosts\n    StrictHostKeyChecking yes\n{MARK} end\n",
            self.addresses.join(" ")
        );
        let authorized = format!("{public_key} {MARK}\n");
        let cluster = state_dir("cluster");
        format!(
            "umask 077 && mkdir -p \"$HOME/.ssh\" {cluster} && cat > {KEY} && \
             printf %s {known} > {KNOWN_HOSTS} && {hostfile} && {replace_config} && \
             {replace_keys}",
            known = shell_quote(&known_hosts),
            hostfile = self.hostfile_command(),
            replace_config = replace_marked("\"$HOME/.ssh/config\"", &config, true),
            replace_keys = replace_marked("\"$HOME/.ssh/authorized_keys\"", &authorized, false),
        )
    }
}

/// Replaces what ssh-ec2 wrote into `file` last time with `text` (first, for a config whose
/// first match wins; else last), keeping the user's own lines; a file that cannot be read is
/// left as it is (the set-up fails).
fn replace_marked(file: &str, text: &str, first: bool) -> String {
    let keep = format!(
        "if [ -e {file} ]; then awk -v m={mark} '$0==m{{skip=1}} !skip && index($0, m)==0 \
         {{print}} $0==m\" end\"{{skip=0}}' {file}; fi",
        mark = shell_quote(MARK)
    );
    let ours = format!("printf %s {}", shell_quote(text));
    let (before, after) = match first {
        true => (ours, keep),
        false => (keep, ours),
    };
    format!("{{ {before} && {after}; }} > {file}.new && mv {file}.new {file}")
}

/// Copies what the push just sent to the head (its paths on stdin, NUL-separated) to every
/// other node, inside the VPC with the cluster's key, all at once; fails naming the nodes it
/// could not reach. Only what was sent: a node's own files (a job's output) are never replaced.
pub fn fan_out_command(dir: &RemoteDir, workers: &[String]) -> String {
    let to = shell_quote(&dir.for_rsync());
    let copies: String = (workers.iter())
        .map(|ip| {
            let ip = shell_quote(ip);
            format!(
                "{{ rsync -a --files-from=\"$list\" --from0 -e 'ssh -i ~/.ssh/ssh-ec2-cluster \
                 -o BatchMode=yes' ./ {ip}:{to}/ || echo {ip} >> \"$failed\"; }} & "
            )
        })
        .collect();
    format!(
        "cd {} && list=$(mktemp) && failed=$(mktemp) && cat > \"$list\" || exit 1; {copies}wait; \
         status=0; if test -s \"$failed\"; then echo could not copy to $(cat \"$failed\") >&2; \
         status=1; fi; rm -f \"$list\" \"$failed\"; exit $status",
        dir.for_shell()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> Vec<String> {
        ["172.31.0.10", "172.31.0.11", "172.31.0.12"]
            .map(str::to_string)
            .to_vec()
    }

    #[test]
    fn every_node_gets_torchrun_s_and_mpi_s_variables() {
        let addresses = addresses();
        let layout = Layout {
            addresses: &addresses,
        };
        let command = layout.command_for(2, "env");
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env_clear()
            .env("HOME", "/nowhere")
            .output()
            .unwrap();
        let env = String::from_utf8(output.stdout).unwrap();
        let get = |name: &str| {
            env.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {env}"))
                .to_string()
        };
        assert_eq!(get("SSH_EC2_NODE_RANK"), "2");
        assert_eq!(get("PET_NODE_RANK"), "2");
        assert_eq!(get("PET_NNODES"), "3");
        assert_eq!(get("PET_MASTER_ADDR"), "172.31.0.10");
        assert_eq!(get("MASTER_PORT"), "29500");
        assert_eq!(get("SSH_EC2_GPUS_PER_NODE"), "0");
        assert_eq!(get("PET_NPROC_PER_NODE"), "1", "no GPU: one process");
        assert_eq!(
            get("SSH_EC2_HOSTFILE"),
            "/nowhere/.ssh-ec2/cluster/hostfile"
        );
        assert!(env.contains("SSH_EC2_NODE_IPS=172.31.0.10\n172.31.0.11\n172.31.0.12\n"));
    }

    /// Runs the set-up with a real shell in `home`, with the public key `CLUSTER`; whether
    /// it succeeded.
    fn set_up(home: &std::path::Path) -> bool {
        let addresses = addresses();
        let layout = Layout {
            addresses: &addresses,
        };
        // Node 1 may present either of two keys (the user-data's, or the one being installed).
        let keys = [
            vec!["ssh-ed25519 K0"],
            vec!["ssh-ed25519 K1", "ssh-ed25519 N1"],
            vec!["ssh-ed25519 K2"],
        ]
        .map(|keys| keys.into_iter().map(str::to_string).collect::<Vec<_>>());
        std::process::Command::new("sh")
            .arg("-c")
            .arg(layout.setup_command(&keys, "ssh-ed25519 CLUSTER"))
            .env("HOME", home)
            .stdin(std::fs::File::open("/dev/null").unwrap())
            .status()
            .unwrap()
            .success()
    }

    /// The set-up, run twice: the user's own lines stay, ssh-ec2's are there once, the key is
    /// private.
    #[test]
    fn the_ssh_set_up_replaces_its_own_lines_and_keeps_the_user_s() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        std::fs::write(ssh.join("config"), "Host mine\n    User me\n").unwrap();
        std::fs::write(ssh.join("authorized_keys"), "ssh-ed25519 AAAA mine\n").unwrap();
        assert!(set_up(home.path()) && set_up(home.path()));
        let read = |name: &str| std::fs::read_to_string(ssh.join(name)).unwrap();
        let config = read("config");
        assert_eq!(
            config
                .matches("Host 172.31.0.10 172.31.0.11 172.31.0.12")
                .count(),
            1
        );
        assert!(
            config.starts_with(MARK) && config.ends_with("Host mine\n    User me\n"),
            "{config}"
        );
        let authorized = read("authorized_keys");
        assert_eq!(
            authorized,
            format!("ssh-ed25519 AAAA mine\nssh-ed25519 CLUSTER {MARK}\n")
        );
        assert_eq!(
            read("ssh-ec2-known_hosts"),
            "172.31.0.10 ssh-ed25519 K0\n172.31.0.11 ssh-ed25519 K1\n172.31.0.11 ssh-ed25519 N1\n\
             172.31.0.12 ssh-ed25519 K2\n"
        );
        let mode = std::fs::metadata(ssh.join("ssh-ec2-cluster"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let hostfile = home.path().join(".ssh-ec2/cluster/hostfile");
        assert_eq!(
            std::fs::read_to_string(hostfile).unwrap(),
            "172.31.0.10 slots=1\n172.31.0.11 slots=1\n172.31.0.12 slots=1\n"
        );
    }

    /// A fresh home has no SSH config nor authorized_keys of its own.
    #[test]
    fn the_ssh_set_up_makes_the_files_it_needs() {
        let home = tempfile::tempdir().unwrap();
        assert!(set_up(home.path()));
        let read = |name: &str| std::fs::read_to_string(home.path().join(name)).unwrap();
        assert!(read(".ssh/config").contains("Host 172.31.0.10 172.31.0.11 172.31.0.12"));
        assert!(read(".ssh/authorized_keys").contains("CLUSTER"));
    }
}
