//! The host key the user-data carried (readable through the API and the instance's metadata
//! service for its whole life) is replaced over the first pinned connection by one made for
//! the instance: the next run is pinned to the new key and refuses an sshd that presents the
//! old one, as whoever read the user-data could.
//!
//! It needs instances whose login user has passwordless sudo, with their own /etc/ssh and
//! /run (the test bed with one network namespace per instance); without sudo, see
//! boundaries.rs.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Laptop, Project, Run, TestCloud, assert_nothing_left, instance_id};
use russh::keys::{HashAlg, PublicKey};

fn public_key(openssh: &str) -> PublicKey {
    PublicKey::from_openssh(openssh.trim()).expect("an OpenSSH public key")
}

/// A real sshd on the laptop's loopback that presents `private_key`, as a machine posing as
/// the instance would; stopped on drop.
struct Impostor {
    sshd: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Impostor {
    /// The laptop's namespace is the cloud's own: any port is free there.
    const PORT: u16 = 2222;

    fn start(laptop: &Laptop, private_key: &str) -> Impostor {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("host_key");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        std::io::Write::write_all(&mut file, private_key.as_bytes()).unwrap();
        let port = Impostor::PORT;
        let config = dir.path().join("sshd_config");
        let lines = [
            "ListenAddress 127.0.0.1".to_string(),
            format!("Port {port}"),
            format!("HostKey \"{}\"", key.display()),
            format!("PidFile \"{}\"", dir.path().join("sshd.pid").display()),
            "UsePAM no".to_string(),
            "PasswordAuthentication no".to_string(),
        ];
        std::fs::write(&config, lines.join("\n") + "\n").unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let sshd = laptop
            .command("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd: run tests/testbed/install");
        let impostor = Impostor {
            sshd,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while laptop.connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the impostor's sshd did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        impostor
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// Where ssh-ec2 pins the instance's host key, in the project's state directory.
fn pinned_key_file(project: &Project, id: &str) -> PathBuf {
    let instances = Path::new(".local/state/ssh-ec2/instances");
    project
        .home()
        .join(instances)
        .join(id)
        .join("host_ed25519.pub")
}

#[test]
fn the_user_data_s_host_key_is_replaced_at_the_first_run_and_refused_after() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let first = Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"]));
    first.assert_code(0);
    // Replaced while the push goes on: the connection it goes over is pinned already.
    let pushing = first.stderr.find("syncing this directory");
    let replaced = first.stderr.find("its host key is now one made for it");
    assert!(
        pushing.is_some() && replaced.is_some() && pushing < replaced,
        "{first}"
    );
    let id = instance_id(&cloud.instances()[0]);
    let user_data = common::cloud_config(&cloud.user_data(&id));
    let old = public_key(user_data["ssh_keys"]["ed25519_public"].as_str().unwrap());
    let pinned = public_key(&std::fs::read_to_string(pinned_key_file(&project, &id)).unwrap());
    assert_ne!(pinned.key_data(), old.key_data(), "a new key is pinned");
    // It was seen presented by a connection from inside the instance, through the run's own:
    // the laptop connected once.
    let console = cloud.console(&id);
    let connections: Vec<&str> = (console.lines())
        .filter(|line| line.contains("Connection from "))
        .collect();
    let inside = connections.iter().filter(|l| l.contains("from 127.0.0.1 "));
    assert_eq!(
        (inside.count(), connections.len()),
        (1, 2),
        "{connections:#?}\n{first}"
    );

    // The instance's sshd presents the pinned key: the next run gets in and finds it there.
    let second = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--leave", "cat /etc/ssh/ssh_host_ed25519_key.pub"]),
    );
    second.assert_code(0);
    assert_eq!(public_key(&second.stdout).key_data(), pinned.key_data());
    assert!(
        !second.stderr.contains("host key"),
        "nothing left to replace\n{second}"
    );

    // Whoever read the user-data could present its key: refused, nothing sent.
    let private = user_data["ssh_keys"]["ed25519_private"].as_str().unwrap();
    let impostor = Impostor::start(&cloud.laptop, private);
    let refused = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("SSH_EC2_CONNECT", impostor.address())
            .args(["--leave", "true"]),
    );
    refused.assert_code(255);
    let fingerprint = old.fingerprint(HashAlg::Sha256).to_string();
    assert!(
        refused
            .stderr
            .contains(&format!("presented host key {fingerprint}"))
            && refused.stderr.contains("refusing to connect"),
        "{refused}"
    );
    drop(impostor);

    let end = Run::of(project.ssh_ec2(&cloud).arg("true"));
    end.assert_code(0);
    assert_nothing_left(&cloud, &project, &end);
    cloud.assert_no_bed_errors();
}
