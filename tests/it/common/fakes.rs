//! Stand-ins: a tripwire where AWS must not be called, and the user-data read as cloud-init
//! reads it.

use std::process::Command;

use serde_json::Value;

use super::{Laptop, manifest_dir};

/// A loopback port that counts who connects: stands in for AWS where nothing may be called.
pub struct Tripwire(std::net::TcpListener);

impl Tripwire {
    /// One here, for ssh-ec2 run without a cloud.
    pub fn new() -> Tripwire {
        Tripwire::of(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// One on the laptop, where ssh-ec2 runs with a cloud: one here it could never reach.
    pub fn on(laptop: &Laptop) -> Tripwire {
        Tripwire::of(laptop.bind("127.0.0.1:0").unwrap())
    }

    fn of(listener: std::net::TcpListener) -> Tripwire {
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
    let python = manifest_dir().join("tests/testbed/.venv/bin/python");
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
