//! The laptop: the network namespace of one simulated cloud where ssh-ec2 runs, with the VPC's
//! bridge. The test itself stays in this machine's namespace; what must happen on the laptop
//! (a program, a connection to a `-L` port, a server for `-R`) is put there on purpose.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[derive(Clone)]
pub struct Laptop {
    /// /proc/PID/ns/net of the process holding it (cloud.py's child).
    netns: PathBuf,
    /// Its address on the VPC's bridge: what the instances see it as (and checkip answers).
    pub address: String,
}

impl Laptop {
    pub(super) fn from_ready_line(laptop: &Value) -> Laptop {
        Laptop {
            netns: PathBuf::from(laptop["netns"].as_str().unwrap()),
            address: laptop["address"].as_str().unwrap().to_string(),
        }
    }

    /// `program`, to be given its arguments, run on the laptop. nsenter enters the namespace
    /// and then becomes the program: its pid (and process group) is the one the test holds.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut command = Command::new("/usr/bin/nsenter");
        command
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program.as_ref());
        command
    }

    /// `act`, done from a thread inside the laptop's network namespace: a socket made there
    /// stays there, whichever thread uses it afterwards.
    fn within<T: Send + 'static>(&self, act: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = self.netns.clone();
        std::thread::spawn(move || {
            let namespace = std::fs::File::open(&netns)
                .unwrap_or_else(|e| panic!("the laptop's namespace {}: {e}", netns.display()));
            nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the laptop (the tests run as root)");
            act()
        })
        .join()
        .expect("the laptop thread panicked")
    }

    /// A TCP connection from the laptop.
    pub fn connect(&self, address: impl ToSocketAddrs) -> std::io::Result<TcpStream> {
        let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
        self.within(move || TcpStream::connect(&addresses[..]))
    }

    /// A TCP connection from the laptop, given up after `timeout` (an unanswered SYN).
    pub fn connect_timeout(
        &self,
        address: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        self.within(move || TcpStream::connect_timeout(&address, timeout))
    }

    /// A TCP listener on the laptop.
    pub fn bind(&self, address: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
        let addresses: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
        self.within(move || TcpListener::bind(&addresses[..]))
    }
}
