//! One simulated cloud per test: tests/testbed/cloud.py (moto behind the fault proxy, the boot
//! simulator, checkip), its ready line, and the test's own look at it (moto, directly).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use aws_sdk_ec2::types::{Instance, InstanceStateName, SecurityGroup};
use serde_json::Value;

use super::bed_log::{BedLog, read_log};
use super::forks::cloud_command;
use super::{INSTALL_HINT, Laptop, manifest_dir, state_of, wait_or_kill};

#[derive(Default)]
pub struct CloudOptions {
    /// Seconds between "running" and sshd listening, to exercise the wait.
    pub boot_delay: Option<f64>,
    /// The sshd presents a host key other than the one in the user-data.
    pub wrong_host_key: bool,
    /// The login user may not use sudo (as on some custom images; the DL AMIs' may).
    pub no_sudo: bool,
    /// The instances' login user (default: ubuntu).
    pub user: Option<&'static str>,
    /// moto authorizes every request against the caller's IAM policies; the test's own look at
    /// the cloud (`ec2()`, `iam()`) goes as an admin allowed everything. ssh-ec2 then needs an
    /// IAM user's access key: the default `testing` key is refused.
    pub iam: bool,
}

pub struct TestCloud {
    /// Held, never read: dropping it stops the cloud (and its machines) before `state` goes.
    _process: CloudProcess,
    pub(super) state: tempfile::TempDir,
    /// What ssh-ec2 talks to: the proxy in front of moto (tests/testbed/faults.py), on the same
    /// loopback port here and in the laptop.
    pub endpoint: String,
    pub checkip_url: String,
    pub region: String,
    pub amis: BTreeMap<String, String>,
    /// Where ssh-ec2 runs: the network namespace with the VPC's bridge.
    pub laptop: Laptop,
    /// The instances' login user.
    pub user: String,
    runtime: tokio::runtime::Runtime,
    sdk: aws_config::SdkConfig,
    /// What the bed saw go wrong, and what of it the test took (`take_bed_errors`).
    log: Arc<BedLog>,
}

/// cloud.py stops its machines and servers when its stdin closes; killed if it does not.
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
    /// What the bed saw go wrong (a machine that could not boot...) fails the test, loudly,
    /// unless it is failing already: then its runs' failure messages showed it (`Run`).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(report) = self.log.report() {
            panic!("{report}");
        }
    }
}

impl TestCloud {
    pub fn start() -> TestCloud {
        TestCloud::start_with(CloudOptions::default())
    }

    pub fn start_with(options: CloudOptions) -> TestCloud {
        let python = manifest_dir().join("tests/testbed/.venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: {INSTALL_HINT}",
            python.display()
        );
        let user = options.user.unwrap_or("ubuntu").to_string();
        let state = tempfile::Builder::new()
            .prefix("ssh-ec2-cloud-")
            .tempdir()
            .unwrap();
        let stderr = std::fs::File::create(state.path().join("cloud.stderr")).unwrap();
        let mut command = cloud_command(&python);
        command
            .arg("--state-dir")
            .arg(state.path())
            .args(["--user", &user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(delay) = options.boot_delay {
            command.arg("--boot-delay").arg(delay.to_string());
        }
        if options.wrong_host_key {
            command.arg("--wrong-host-key");
        }
        if options.no_sudo {
            command.arg("--no-sudo");
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
        let ready = read_ready_line(stdout, &state);
        let log = BedLog::new(state.path());
        let text = |key: &str| ready[key].as_str().unwrap().to_string();
        let region = text("region");
        // The test's own look at the cloud goes past the proxy, as the admin under --iam.
        let (key_id, secret) = match options.iam {
            true => (text("admin_access_key_id"), text("admin_secret_access_key")),
            false => ("testing".to_string(), "testing".to_string()),
        };
        TestCloud {
            _process: process,
            endpoint: text("endpoint"),
            checkip_url: text("checkip_url"),
            amis: ready["amis"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            laptop: Laptop::from_ready_line(&ready["laptop"]),
            sdk: sdk_config(&text("moto_endpoint"), &region, key_id, secret),
            region,
            user,
            state,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            log,
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

    fn faults_request(&self, method: &str, path: &str, body: &str) -> String {
        use std::io::{Read, Write};
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

    /// The boot simulator's events (sshd-started, sshd-stopped, disk-deleted, checkip, error…).
    pub fn events(&self) -> Vec<Value> {
        self.log.events()
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

    /// The bed's errors so far, which a test provoked on purpose: they fail it no longer.
    pub fn take_bed_errors(&self) -> Vec<Value> {
        self.log.take_errors()
    }

    /// Fails the test if the bed itself reported an error (bad user-data, a failed boot…);
    /// dropping the cloud checks this too, at the end of every test.
    pub fn assert_no_bed_errors(&self) {
        if let Some(report) = self.log.report() {
            panic!("{report}");
        }
    }

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk)
    }

    /// An EC2 client on the same simulated account, in another region (the boot simulator
    /// follows the bed's own region only: instances elsewhere never boot).
    pub fn ec2_in(&self, region: &str) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::config::Builder::from(&self.sdk)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// An EC2 client that goes through the proxy, as ssh-ec2's requests do: for what the bed
    /// answers itself (placement groups).
    pub fn ec2_through_proxy(&self) -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::config::Builder::from(&self.sdk)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// The names of the placement groups in the bed's region.
    pub fn placement_groups(&self) -> Vec<String> {
        let found = self
            .block_on(self.ec2_through_proxy().describe_placement_groups().send())
            .unwrap();
        (found.placement_groups().iter())
            .filter_map(|g| g.group_name().map(str::to_string))
            .collect()
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

    /// Instances not terminated.
    pub fn live_instances(&self) -> Vec<Instance> {
        self.instances()
            .into_iter()
            .filter(|i| state_of(i) != InstanceStateName::Terminated)
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
}

/// The one JSON line cloud.py prints once it is up.
fn read_ready_line(stdout: std::process::ChildStdout, state: &tempfile::TempDir) -> Value {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = lines
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_default();
    serde_json::from_str(&line).unwrap_or_else(|_| {
        panic!(
            "the simulated cloud did not start:\n{}",
            read_log(state.path())
        )
    })
}

fn sdk_config(
    endpoint: &str,
    region: &str,
    key_id: String,
    secret: String,
) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(region.to_string()))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new(key_id, secret, None, None, "test"),
            ),
        )
        .build()
}
