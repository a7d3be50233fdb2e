//! A run in the background whose stderr is read as it comes, so that a test can act once it
//! has said something (a wait begun, a signal noted), then collect it as a `Run`.

use crate::common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::{RUN_TIMEOUT, Run, wait_or_kill, wait_until};

pub struct Watched {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reading: JoinHandle<()>,
    stdout: JoinHandle<String>,
}

impl Watched {
    /// Starts `command` with stdin closed, in a process group of its own like a shell job.
    pub fn start(command: &mut Command) -> Watched {
        use std::os::unix::process::CommandExt;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("cannot start ssh-ec2");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, seen) = (child.stderr.take().unwrap(), stderr.clone());
        let reading = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                seen.lock().unwrap().push_str(&text);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        Watched {
            child,
            stderr,
            reading,
            stdout,
        }
    }

    /// Waits until the run has said `text` on stderr.
    pub fn wait_for(&self, text: &str) {
        wait_until(&format!("the run to say `{text}`"), || {
            self.stderr.lock().unwrap().contains(text)
        });
    }

    /// Sends `signal` to the run's process group, as a terminal does.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        common::signal(&self.child, signal);
    }

    /// Its end (killed if it does not end within `timeout`), as a `Run`.
    pub fn collect(self, timeout: std::time::Duration) -> Run {
        let status = wait_or_kill(self.child, timeout.min(RUN_TIMEOUT));
        self.reading.join().unwrap();
        let run = Run {
            code: status.and_then(|s| s.code()),
            stdout: self.stdout.join().unwrap(),
            stderr: self.stderr.lock().unwrap().clone(),
        };
        assert!(
            status.is_some(),
            "ssh-ec2 did not end within {timeout:?}\n{run}"
        );
        run
    }
}
