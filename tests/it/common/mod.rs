//! The test bed: a simulated cloud per test (tests/testbed/cloud.py: moto_server, a boot
//! simulator that gives each running instance a real sshd, a checkip stand-in), a project
//! directory, and the real ssh-ec2 binary run against them through its standard settings
//! (AWS_ENDPOINT_URL, SSH_EC2_CONNECT, SSH_EC2_CHECKIP_URL). Only loopback; every process
//! started here is stopped when its guard drops.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Instance, InstanceStateName, SecurityGroup};
use serde_json::Value;

pub const REMOTE_USER: &str = "ubuntu";
/// A run against the local bed takes seconds; this only catches hangs.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const INSTALL_HINT: &str = "run `tests/testbed/install` first (it installs openssh-server, rsync, \
                            tmux, screen, the local user `ubuntu` and the pinned moto_server)";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Default)]
pub struct CloudOptions {
    /// Seconds between "running" and sshd listening, to exercise the wait.
    pub boot_delay: Option<f64>,
    /// The sshd presents a host key other than the one in the user-data.
    pub wrong_host_key: bool,
    /// The instances' login user (default: ubuntu).
    pub user: Option<&'static str>,
    /// ssh-ec2 talks to moto through the fault-injecting proxy (tests/testbed/faults.py):
    /// see `TestCloud::set_faults`.
    pub faults: bool,
    /// moto authorizes every request against the caller's IAM policies; the test's own look at
    /// the cloud (`ec2()`, `iam()`) goes as an admin allowed everything. ssh-ec2 then needs an
    /// IAM user's access key: the default `testing` key is refused.
    pub iam: bool,
}

pub struct TestCloud {
    /// Held, never read: dropping it stops the cloud.
    _process: CloudProcess,
    state: tempfile::TempDir,
    /// What ssh-ec2 talks to: moto, or the fault-injecting proxy in front of it.
    pub endpoint: String,
    faults: bool,
    pub checkip_url: String,
    pub connect: String,
    pub region: String,
    pub amis: BTreeMap<String, String>,
    runtime: tokio::runtime::Runtime,
    sdk: aws_config::SdkConfig,
}

/// cloud.py stops its sshds and servers when its stdin closes; killed if it does not.
struct CloudProcess {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(child) = self.child.take() {
            wait_or_kill(child, Duration::from_secs(30));
        }
    }
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        // A failing test shows what the bed saw go wrong (an sshd that could not start…).
        if std::thread::panicking() {
            let errors = self.bed_errors();
            if !errors.is_empty() {
                eprintln!("the test bed reported errors: {errors:#?}");
            }
        }
    }
}

impl TestCloud {
    pub fn start() -> TestCloud {
        TestCloud::start_with(CloudOptions::default())
    }

    /// A cloud whose AWS calls go through the fault-injecting proxy (`set_faults`).
    pub fn with_faults() -> TestCloud {
        TestCloud::start_with(CloudOptions {
            faults: true,
            ..Default::default()
        })
    }

    pub fn start_with(options: CloudOptions) -> TestCloud {
        let python = manifest_dir().join("tests/testbed/.venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: {INSTALL_HINT}",
            python.display()
        );
        assert!(
            std::fs::read_to_string("/etc/passwd")
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("ubuntu:")),
            "the local user `ubuntu` does not exist: {INSTALL_HINT}"
        );
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "/usr/sbin/sshd is missing: {INSTALL_HINT}"
        );
        let state = tempfile::Builder::new()
            .prefix("ssh-ec2-cloud-")
            .tempdir()
            .unwrap();
        let stderr = std::fs::File::create(state.path().join("cloud.stderr")).unwrap();
        let mut command = Command::new(&python);
        command
            .arg(manifest_dir().join("tests/testbed/cloud.py"))
            .arg("--state-dir")
            .arg(state.path())
            .arg("--sshd-port")
            .arg(free_port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(delay) = options.boot_delay {
            command.arg("--boot-delay").arg(delay.to_string());
        }
        if options.wrong_host_key {
            command.arg("--wrong-host-key");
        }
        if let Some(user) = options.user {
            command.arg("--user").arg(user);
        }
        if options.faults {
            command.arg("--faults");
        }
        if options.iam {
            command.arg("--iam");
        }
        let mut child = command
            .spawn()
            .expect("cannot start tests/testbed/cloud.py");
        let stdout = child.stdout.take().unwrap();
        let process = CloudProcess {
            stdin: child.stdin.take(),
            child: Some(child),
        };
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_default();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "the simulated cloud did not start:\n{}",
                read_log(state.path())
            )
        });
        let text = |key: &str| ready[key].as_str().unwrap().to_string();
        let (endpoint, region) = (text("endpoint"), text("region"));
        // The test's own look at the cloud goes past the proxy, as the admin under --iam.
        let (key_id, secret) = match options.iam {
            true => (text("admin_access_key_id"), text("admin_secret_access_key")),
            false => ("testing".to_string(), "testing".to_string()),
        };
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .endpoint_url(text("moto_endpoint"))
            .region(aws_config::Region::new(region.clone()))
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(key_id, secret, None, None, "test"),
                ),
            )
            .build();
        TestCloud {
            _process: process,
            checkip_url: text("checkip_url"),
            connect: text("connect"),
            amis: ready["amis"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            endpoint,
            faults: options.faults,
            region,
            state,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            sdk,
        }
    }

    /// Replaces the proxy's rules (see tests/testbed/README.md), which also releases the
    /// answers it holds.
    pub fn set_faults(&self, rules: Value) {
        self.faults_request("POST", "/_faults", &rules.to_string());
    }

    /// Every AWS request ssh-ec2 made through the proxy, in order: `action`, `outcome`
    /// ("forwarded 200", "error CODE", "lost (…)", "held (…)", "replayed") and `params`.
    pub fn aws_calls(&self) -> Vec<Value> {
        serde_json::from_str(&self.faults_request("GET", "/_log", "")).unwrap()
    }

    /// The calls of one action, in order, as the proxy logged them.
    pub fn calls(&self, action: &str) -> Vec<Value> {
        self.aws_calls()
            .into_iter()
            .filter(|call| call["action"] == action)
            .collect()
    }

    /// The outcomes of the calls of `action`, in order.
    pub fn outcomes(&self, action: &str) -> Vec<String> {
        self.calls(action)
            .iter()
            .map(|call| call["outcome"].as_str().unwrap().to_string())
            .collect()
    }

    /// Instances not terminated.
    pub fn live_instances(&self) -> Vec<Instance> {
        self.instances()
            .into_iter()
            .filter(|i| state_of(i) != InstanceStateName::Terminated)
            .collect()
    }

    fn faults_request(&self, method: &str, path: &str, body: &str) -> String {
        use std::io::{Read, Write};
        assert!(
            self.faults,
            "start the cloud with CloudOptions {{ faults: true }}"
        );
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(" 200 "), "{method} {path}: {head}");
        body.to_string()
    }

    pub fn stderr_log(&self) -> String {
        read_log(self.state.path())
    }

    /// The boot simulator's events (sshd-started, sshd-stopped, checkip, error…).
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn count_events(&self, name: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == name).count()
    }

    /// Waits until the boot simulator has logged `count` events named `name` (it polls moto,
    /// so it follows an instance's state a moment later).
    pub fn wait_for_events(&self, name: &str, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.count_events(name) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the test bed logged {} `{name}` events, expected {count}: {:#?}",
                self.count_events(name),
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.count_events(name), count, "{:#?}", self.events());
    }

    fn bed_errors(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "error")
            .collect()
    }

    /// Fails the test if the bed itself reported an error (bad user-data, sshd crash…).
    pub fn assert_no_bed_errors(&self) {
        let errors = self.bed_errors();
        assert!(
            errors.is_empty(),
            "the test bed reported errors: {errors:#?}\n{}",
            self.stderr_log()
        );
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

    /// The sshd processes serving connections to the running instance (below its listener).
    pub fn connection_pids(&self) -> Vec<i32> {
        let listener = self
            .events()
            .iter()
            .rev()
            .find(|e| e["event"] == "sshd-started")
            .and_then(|e| e["pid"].as_i64())
            .expect("no instance's sshd is running") as i32;
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

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk)
    }

    /// An EC2 client on the same simulated account, in another region (the boot simulator
    /// follows the bed's own region only: instances elsewhere never get an sshd).
    pub fn ec2_in(&self, region: &str) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::config::Builder::from(&self.sdk)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// An IAM client on the same simulated account.
    pub fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk)
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Every instance moto knows, terminated ones included.
    pub fn instances(&self) -> Vec<Instance> {
        let found = self
            .block_on(self.ec2().describe_instances().send())
            .unwrap();
        found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .cloned()
            .collect()
    }

    pub fn instances_in(&self, state: InstanceStateName) -> Vec<Instance> {
        self.instances()
            .into_iter()
            .filter(|i| i.state().and_then(|s| s.name()) == Some(&state))
            .collect()
    }

    /// Security groups other than the default ones moto starts with.
    pub fn run_security_groups(&self) -> Vec<SecurityGroup> {
        let found = self
            .block_on(self.ec2().describe_security_groups().send())
            .unwrap();
        found
            .security_groups()
            .iter()
            .filter(|g| g.group_name() != Some("default"))
            .cloned()
            .collect()
    }

    pub fn key_pair_names(&self) -> Vec<String> {
        let found = self
            .block_on(self.ec2().describe_key_pairs().send())
            .unwrap();
        found
            .key_pairs()
            .iter()
            .filter_map(|k| k.key_name())
            .map(str::to_string)
            .collect()
    }

    pub fn user_data(&self, instance_id: &str) -> String {
        use base64::Engine;
        let found = self
            .block_on(
                self.ec2()
                    .describe_instance_attribute()
                    .instance_id(instance_id)
                    .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                    .send(),
            )
            .unwrap();
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

/// Waits for `child` to exit; kills it if it does not within `timeout`.
pub fn wait_or_kill(mut child: Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (sender, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    match exited.recv_timeout(timeout) {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            None
        }
    }
}

fn read_log(state: &Path) -> String {
    std::fs::read_to_string(state.join("cloud.stderr")).unwrap_or_default()
}

/// A loopback port free now and kept free until a server of the test binds it: taken below the
/// kernel's ephemeral range, which every outgoing connection of the parallel tests draws from
/// (a port picked with bind(0) can be some connection's source port by the time sshd binds it).
/// tests/testbed/ports.py does the same for the bed's Python (try-it, the benchmarks).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    const FIRST: u32 = 10_000;
    assert!(
        ephemeral_start > FIRST + 1000,
        "the ephemeral port range starts at {ephemeral_start}: the test bed needs the ports \
         {FIRST}..{ephemeral_start} outside it (sysctl net.ipv4.ip_local_port_range)"
    );
    let span = ephemeral_start - FIRST;
    // Each test process starts elsewhere in the span, in case another runs at the same time.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{ephemeral_start}")
}

/// A local project directory, an empty HOME for ssh-ec2, and the matching remote directory
/// (/home/ubuntu/<project name>, removed on drop).
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

    /// Where the instance (the local user `ubuntu`) keeps the synced copy.
    pub fn remote(&self) -> PathBuf {
        self.remote_of(REMOTE_USER)
    }

    pub fn remote_of(&self, user: &str) -> PathBuf {
        Path::new("/home")
            .join(user)
            .join(self.path().file_name().unwrap())
    }

    pub fn read_remote(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.remote().join(relative)).ok()
    }

    /// ssh-ec2 in this project, pointed at `cloud` through its standard settings only.
    pub fn ssh_ec2(&self, cloud: &TestCloud) -> Command {
        self.program_for(cloud, &ssh_ec2_binary())
    }

    /// Another program (make, a shell) in this project, with the environment ssh-ec2 gets from
    /// `ssh_ec2`, and ssh-ec2 itself first in PATH.
    pub fn program_for(&self, cloud: &TestCloud, program: &Path) -> Command {
        let mut command = self.program_without_cloud(program);
        command
            .env("AWS_ENDPOINT_URL", &cloud.endpoint)
            .env("AWS_REGION", &cloud.region)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("SSH_EC2_CONNECT", &cloud.connect)
            .env("SSH_EC2_CHECKIP_URL", &cloud.checkip_url);
        command
    }

    /// ssh-ec2 in this project with a clean environment and no cloud settings at all.
    pub fn ssh_ec2_without_cloud(&self) -> Command {
        self.program_without_cloud(&ssh_ec2_binary())
    }

    fn program_without_cloud(&self, program: &Path) -> Command {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let bin = ssh_ec2_binary().parent().unwrap().to_path_buf();
        let path = std::iter::once(bin).chain(std::env::split_paths(&inherited));
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::join_paths(path).unwrap())
            .env("HOME", self.home())
            .env("USER", "tester")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .current_dir(self.path());
        command
    }

    /// The keys ssh-ec2 keeps for instances it launched from here.
    pub fn kept_instance_keys(&self) -> Vec<String> {
        let dir = self.home().join(".local/state/ssh-ec2/instances");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Project {
    /// This directory's entries in ssh-ec2's state on the instance (`kind`: `jobs`, `leases`,
    /// `watchdog`; see src/remote/), named after its job: the instances of parallel tests
    /// share the remote home.
    pub fn remote_state_entries(&self, user: &str, kind: &str) -> Vec<PathBuf> {
        let name = self.path().file_name().unwrap().to_string_lossy();
        let prefix = format!("ssh-ec2-{name}-");
        let dir = Path::new("/home").join(user).join(".ssh-ec2").join(kind);
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for user in [REMOTE_USER, "ec2-user"] {
            let _ = std::fs::remove_dir_all(self.remote_of(user));
            for file in self.remote_state_entries(user, "watchdog") {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

pub fn ssh_ec2_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ssh-ec2"))
}

/// Starts a run (stdin closed, output piped, in a process group of its own like a shell job)
/// whose remote command prints `ready` first, and waits for that line.
pub fn start_until_ready(command: &mut Command) -> Child {
    let mut child = spawn_as_job(command);
    let mut stdout = child.stdout.take().unwrap();
    // Byte by byte: nothing after the line may be taken from the pipe.
    let mut line = Vec::new();
    let mut byte = [0u8];
    while line.last() != Some(&b'\n') && std::io::Read::read(&mut stdout, &mut byte).unwrap() == 1 {
        line.push(byte[0]);
    }
    assert_eq!(line, b"ready\n", "the remote command did not start");
    child.stdout = Some(stdout);
    child
}

/// Starts ssh-ec2 in a process group of its own, and waits until the proxy holds the answer
/// to `action` (a `hold` rule of `TestCloud::set_faults`).
pub fn start_until_held(cloud: &TestCloud, command: &mut Command, action: &str) -> Child {
    let child = spawn_as_job(command);
    wait_until(&format!("{action} to be held"), || {
        cloud.outcomes(action).iter().any(|o| o.starts_with("held"))
    });
    child
}

/// Starts a run with stdin closed and output piped, in a process group of its own like a
/// shell job.
fn spawn_as_job(command: &mut Command) -> Child {
    use std::os::unix::process::CommandExt;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("cannot start ssh-ec2")
}

/// Sends `signal` to the run's process group, as a terminal does.
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(group, signal).unwrap();
}

/// The stdout and stderr of a finished run, as text, for assertion messages.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(command: &mut Command) -> Run {
        Run::with_stdin(command, "")
    }

    /// Runs to the end (killed after RUN_TIMEOUT), feeding `stdin` and collecting the output.
    pub fn with_stdin(command: &mut Command, stdin: &str) -> Run {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ssh-ec2");
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_string();
        std::thread::spawn(move || std::io::Write::write_all(&mut input, stdin.as_bytes()));
        Run::collect(child)
    }

    /// Waits for a child started with piped stdout and stderr (killed after RUN_TIMEOUT).
    pub fn collect(mut child: Child) -> Run {
        let stdout = read_all(child.stdout.take().unwrap());
        let stderr = read_all(child.stderr.take().unwrap());
        let status = wait_or_kill(child, RUN_TIMEOUT);
        let run = Run {
            code: status.and_then(|s| s.code()),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        };
        assert!(
            status.is_some(),
            "ssh-ec2 hung and was killed after {RUN_TIMEOUT:?}\n{run}"
        );
        run
    }

    pub fn assert_code(&self, expected: i32) -> &Run {
        assert_eq!(self.code, Some(expected), "unexpected exit status\n{self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

pub fn instance_id(instance: &Instance) -> String {
    instance.instance_id().unwrap().to_string()
}

/// No live instance, no security group, no key pair, no keys or unfinished launch kept.
pub fn assert_nothing_left(cloud: &TestCloud, project: &Project, run: &Run) {
    let alive = cloud.live_instances();
    assert!(alive.is_empty(), "instances left: {alive:?}\n{run}");
    assert!(
        cloud.run_security_groups().is_empty(),
        "security groups left\n{run}"
    );
    assert!(cloud.key_pair_names().is_empty(), "{run}");
    assert!(
        project.kept_instance_keys().is_empty(),
        "keys or unfinished launches kept: {:?}\n{run}",
        project.kept_instance_keys()
    );
}

/// Polls `done` until it holds; fails the test after a minute, naming `what`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
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

/// A private tmux server holding one pane; killed on drop.
pub struct Pane {
    socket: PathBuf,
}

impl Pane {
    /// Runs `script` with sh in a new 100x30 pane.
    pub fn start(dir: &Path, script: &str) -> Pane {
        let socket = dir.join("tmux.sock");
        let script_file = dir.join("pane.sh");
        std::fs::write(&script_file, script).unwrap();
        let started = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "100",
                "-y",
                "30",
                "sh",
            ])
            .arg(&script_file)
            .status()
            .expect("tmux is needed for terminal tests: run tests/testbed/install");
        assert!(started.success());
        Pane { socket }
    }

    pub fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-200"])
    }

    /// Waits until the pane shows `text`.
    pub fn wait_for(&self, text: &str) -> String {
        self.shows_within(text, Duration::from_secs(60))
            .unwrap_or_else(|screen| panic!("the pane never showed `{text}`:\n{screen}"))
    }

    /// The screen once it shows `text`, or the last screen seen after `timeout`.
    pub fn shows_within(&self, text: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                return Err(screen);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-l", line]);
        self.tmux(&["send-keys", "Enter"]);
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

impl Pane {
    /// An interactive shell in a pane, in the project, with ssh-ec2's environment for `cloud`:
    /// what a user's terminal would be.
    pub fn shell(project: &Project, cloud: &TestCloud) -> Pane {
        let env = [
            ("PATH", std::env::var("PATH").unwrap()),
            ("HOME", project.home().display().to_string()),
            ("USER", "tester".into()),
            ("TERM", "xterm".into()),
            ("PS1", "$ ".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_ENDPOINT_URL", cloud.endpoint.clone()),
            ("AWS_REGION", cloud.region.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("SSH_EC2_CONNECT", cloud.connect.clone()),
            ("SSH_EC2_CHECKIP_URL", cloud.checkip_url.clone()),
        ];
        let exports: String = env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", quote(v)))
            .collect();
        let bin_dir = ssh_ec2_binary().parent().unwrap().display().to_string();
        let script = format!(
            "{exports}export PATH={bin}:\"$PATH\"\ncd {dir}\nexec sh -i\n",
            bin = quote(&bin_dir),
            dir = quote(&project.path().display().to_string()),
        );
        Pane::start(project.home(), &script)
    }
}

/// A loopback port that counts who connects: stands in for AWS where nothing may be called.
pub struct Tripwire(std::net::TcpListener);

impl Tripwire {
    pub fn new() -> Tripwire {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Tripwire(listener)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.0.local_addr().unwrap())
    }

    pub fn was_called(&self) -> bool {
        self.0.accept().is_ok()
    }

    /// Points `command`'s AWS endpoint and checkip here, with a region and credentials, so
    /// that nothing but a call could stop it from reaching AWS.
    pub fn aim<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command
            .env("AWS_ENDPOINT_URL", self.url())
            .env("SSH_EC2_CHECKIP_URL", self.url())
            .env("AWS_REGION", "eu-central-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
    }
}

/// The cloud-config as cloud-init reads it (YAML), through the test bed's Python.
pub fn cloud_config(user_data: &str) -> Value {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/.venv/bin/python");
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run tests/testbed/install",
                python.display()
            )
        });
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), user_data.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the user-data is not YAML");
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn written_file(config: &Value, path: &str) -> String {
    config["write_files"]
        .as_array()
        .expect("write_files")
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("the user-data writes no {path}"))["content"]
        .as_str()
        .unwrap()
        .to_string()
}
