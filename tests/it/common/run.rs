//! Running ssh-ec2 (or anything) to its end, or as a shell job the test signals.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{TestCloud, bed_log, wait_until};

/// A run against the local bed takes seconds; this only catches hangs.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

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
        )?;
        // Said here, in the failure message: a failing test's cloud says nothing when it drops.
        write!(f, "{}", bed_log::reports())
    }
}

fn read_all(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
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
