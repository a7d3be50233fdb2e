//! The clouds of this test process are forked by one server (tests/testbed/forks.py) that has
//! imported cloud.py, boto3 and moto once: each cloud then starts in about half a second of
//! CPU instead of two, on a machine where the suite's time is CPU.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::manifest_dir;

pub struct ForkServer {
    socket: PathBuf,
    /// Never waited for: it ends with this process, when its stdin (ours, never written,
    /// never closed) reaches EOF.
    _process: Child,
}

static SERVER: OnceLock<ForkServer> = OnceLock::new();

/// A command that starts tests/testbed/cloud.py through this process's fork server (started
/// by the first cloud), with cloud.py's arguments still to add.
pub fn cloud_command(python: &Path) -> Command {
    let server = SERVER.get_or_init(|| start(python));
    let mut command = Command::new(python);
    command
        .arg(manifest_dir().join("tests/testbed/forks.py"))
        .arg("run")
        .arg(&server.socket);
    command
}

fn start(python: &Path) -> ForkServer {
    let mut child = Command::new(python)
        .arg(manifest_dir().join("tests/testbed/forks.py"))
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start tests/testbed/forks.py");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let ready: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("tests/testbed/forks.py did not start (its errors are above)"));
    ForkServer {
        socket: PathBuf::from(ready["socket"].as_str().unwrap()),
        _process: child,
    }
}
