//! The instance ends itself: the dead-man switch in its user-data, the `ssh-ec2:expires-at`
//! tag, and the re-arming by each run. The switch needs systemd and root, so the script that
//! the user-data installs runs here, on the test side, with a fake `shutdown`, `date` (the
//! instance's clock) and `ps` first in PATH, against a home directory of its own; when a
//! settings file was armed is its modification time, as the instance's clock stamped it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use common::{Project, Run, TestCloud, cloud_config, instance_id, state_of, tag, written_file};
use serde_json::Value;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The deadline a run's launch (or reuse) line says, followed by `then`, in Unix seconds.
fn said_deadline(stderr: &str, then: &str) -> u64 {
    let (before, _) =
        (stderr.split_once(then)).unwrap_or_else(|| panic!("no `{then}` said\n{stderr}"));
    let (_, at) = (before.rsplit_once("it stops itself at "))
        .unwrap_or_else(|| panic!("no deadline said\n{stderr}"));
    unix_of(at)
}

/// The `ssh-ec2:expires-at` tag is `deadline` rounded up to the next 10 minutes.
fn assert_rounded_up(tag: &str, deadline: u64) {
    let tagged = unix_of(tag);
    assert!(
        tagged.is_multiple_of(600) && (deadline..deadline + 600).contains(&tagged),
        "the tag {tag} is not {deadline} rounded up to the next 10 minutes"
    );
}

/// Unix seconds of an ISO 8601 UTC time, as GNU date reads it.
fn unix_of(iso: &str) -> u64 {
    assert!(
        iso.ends_with('Z') && iso.contains('T'),
        "not ISO 8601 UTC: {iso}"
    );
    let out = Command::new("date")
        .args(["-u", "-d", iso, "+%s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "date cannot read {iso}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A value of a settings file (`key=value` lines).
fn setting(settings: &str, key: &str) -> String {
    settings
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {settings}"))
        .to_string()
}

/// The switch's script in a world of its own: a clock, a process list, a home, and a
/// `shutdown` that only writes down that it was called.
struct Bench {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Bench {
    /// The launch's settings, as cloud-init wrote them at first boot (`booted`, by the
    /// instance's clock).
    fn new(script: &str, launch_settings: &str, booted: u64) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        let fake = |name: &str, body: &str| {
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
            std::fs::set_permissions(&path, executable).unwrap();
        };
        let r = root.display();
        fake("date", &format!("cat '{r}/now'"));
        fake("ps", &format!("cat '{r}/ps' 2>/dev/null; true"));
        fake("shutdown", &format!("echo \"$*\" >> '{r}/shutdown'"));
        std::fs::write(root.join("etc-watchdog"), launch_settings).unwrap();
        touch_at(&root.join("etc-watchdog"), booted);
        let path = root.join("ssh-ec2-watchdog");
        std::fs::write(&path, script).unwrap();
        Bench { dir, script: path }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the script at `now` with `what` (`boot` or `check`); whether it shut down.
    fn run(&self, what: &str, now: u64) -> bool {
        let root = self.root();
        std::fs::write(root.join("now"), format!("{now}\n")).unwrap();
        let _ = std::fs::remove_file(root.join("shutdown"));
        let path = format!(
            "{}:{}",
            root.join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        let out = Command::new("/bin/sh")
            .arg(&self.script)
            .arg(what)
            .env("PATH", path)
            .env("SSH_EC2_WATCHDOG_STATE", root.join("state"))
            .env("SSH_EC2_WATCHDOG_HOMES", root.join("home"))
            .env("SSH_EC2_WATCHDOG_SETTINGS", root.join("etc-watchdog"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the watchdog failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match std::fs::read_to_string(root.join("shutdown")) {
            Ok(args) => {
                assert!(args.starts_with("-h now"), "shutdown {args}");
                true
            }
            Err(_) => false,
        }
    }

    fn home_file(&self, relative: &str, content: &str) -> PathBuf {
        let path = self.root().join("home/.ssh-ec2").join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    fn processes(&self, list: &str) {
        std::fs::write(self.root().join("ps"), list).unwrap();
    }
}

/// Sets a file's modification time (a lease's last renewal).
fn touch_at(path: &Path, unix: u64) {
    let ok = Command::new("touch")
        .arg("-d")
        .arg(format!("@{unix}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

const SCRIPT: &str = "/usr/local/sbin/ssh-ec2-watchdog";

/// When the instance booted, by its own clock: nowhere near this machine's, which the switch
/// never reads.
const BOOTED: u64 = 1_000_000_000;

/// A `--leave` run with `flags`: its output, its instance, and the cloud-config of its user-data.
fn launch(cloud: &TestCloud, project: &Project, flags: &[&str]) -> (Run, Instance, Value) {
    let run = Run::of(
        project
            .ssh_ec2(cloud)
            .arg("--leave")
            .args(flags)
            .arg("true"),
    );
    run.assert_code(0);
    let instance = cloud.instances().remove(0);
    let config = cloud_config(&cloud.user_data(&instance_id(&instance)));
    (run, instance, config)
}

#[test]
fn the_launch_tags_its_deadline_and_its_switch_stops_it_once_idle() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let before = unix_now();
    let flags = ["--max-lifetime", "2h", "--idle-stop", "5m"];
    let (run, instance, config) = launch(&cloud, &project, &flags);
    let after = unix_now();
    let expires = tag(&instance, "ssh-ec2:expires-at").expect("ssh-ec2:expires-at tag");
    let said = said_deadline(&run.stderr, " (--max-lifetime 2h), or after 5m idle");
    assert!(
        (before + 7_200..=after + 7_200).contains(&said),
        "the launch line says when, by this machine's clock\n{run}"
    );
    assert_rounded_up(&expires, said);

    // What cloud-init would install and start.
    let script = written_file(&config, SCRIPT);
    let launch_settings = written_file(&config, "/etc/ssh-ec2/watchdog");
    assert_eq!(
        launch_settings, "lifetime=7200\nidle=300\n",
        "durations only"
    );
    let timer = written_file(&config, "/etc/systemd/system/ssh-ec2-watchdog.timer");
    assert!(timer.contains("OnUnitActiveSec=1min"), "{timer}");
    let service = written_file(&config, "/etc/systemd/system/ssh-ec2-watchdog.service");
    assert!(service.contains("ssh-ec2-watchdog check"), "{service}");
    let start = config["runcmd"][0].to_string();
    assert!(
        start.contains("enable --now ssh-ec2-watchdog-boot.service ssh-ec2-watchdog.timer"),
        "{start}"
    );
    stops_once_idle(&script, &launch_settings);

    let end = Run::of(project.ssh_ec2(&cloud).args(["--terminate", "true"]));
    end.assert_code(0);
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated
    );
    cloud.assert_no_bed_errors();
}

/// The idle stop of `script` armed with `settings` (`idle=300`) at boot: what counts as use.
fn stops_once_idle(script: &str, settings: &str) {
    let t = |secs: u64| BOOTED + secs;
    // Idle: nothing uses it for 5 minutes from boot.
    let bench = Bench::new(script, settings, t(0));
    assert!(!bench.run("boot", t(10)));
    assert!(!bench.run("check", t(309)), "idle for 299 s only");
    assert!(bench.run("check", t(310)), "idle for 5 minutes: it stops");

    // A run's lease, renewed in the last two minutes, keeps it; so does a later one.
    let bench = Bench::new(script, settings, t(0));
    assert!(!bench.run("boot", t(0)));
    let lease = bench.home_file("leases/ssh-ec2-x/0123", "1 2\n");
    touch_at(&lease, t(280));
    assert!(!bench.run("check", t(390)), "a fresh lease keeps it");
    assert!(
        !bench.run("check", t(600)),
        "idle since the last check that saw the lease: 210 s"
    );
    assert!(
        bench.run("check", t(690)),
        "the lease is stale: idle for 300 s"
    );

    // A job without an exit status whose wrapper lives keeps it; once it ended, it is idle.
    let bench = Bench::new(script, settings, t(0));
    assert!(!bench.run("boot", t(0)));
    bench.home_file("jobs/ssh-ec2-x/pid", &format!("{}\n", std::process::id()));
    assert!(!bench.run("check", t(1_000)), "the job runs");
    bench.home_file("jobs/ssh-ec2-x/exit", "0\n");
    assert!(!bench.run("check", t(1_299)));
    assert!(bench.run("check", t(1_300)), "the job ended 5 minutes ago");

    // A foreground run's command keeps it while its process group lives, its client gone or
    // not; its zombie does not, nor one from before a restart.
    let bench = Bench::new(script, settings, t(0));
    assert!(!bench.run("boot", t(0)));
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    bench.home_file("runs/ssh-ec2-x/0123/pid", "4242\n");
    let record_boot = bench.home_file("runs/ssh-ec2-x/0123/boot", &boot);
    bench.processes(" 4242 S\n 4243 S\n");
    assert!(!bench.run("check", t(1_000)), "the command runs");
    bench.processes(" 4242 Z\n");
    assert!(!bench.run("check", t(1_299)));
    assert!(bench.run("check", t(1_300)), "its zombie runs nothing");
    bench.processes(" 4242 S\n");
    std::fs::write(record_boot, "another boot\n").unwrap();
    assert!(
        bench.run("check", t(1_360)),
        "4242 is another's since the restart"
    );

    // An SSH login keeps it while it runs something (a shell, a command); a connection kept
    // open with nothing running (ssh-ec2's held connection) does not, though sshd still names
    // its session `user@notty` once a command ran on it.
    let bench = Bench::new(script, settings, t(0));
    assert!(!bench.run("boot", t(0)));
    let sshd = "  1  0 /usr/sbin/sshd -D\n 10  1 sshd: ubuntu [priv]\n 11 10 sshd: ubuntu@pts/0\n";
    bench.processes(&format!("{sshd} 12 11 -bash\n"));
    assert!(!bench.run("check", t(3_000)), "someone is logged in");
    bench.processes(&format!(
        "{sshd} 20  1 sshd: ubuntu [priv]\n 21 20 sshd: ubuntu@notty\n"
    ));
    assert!(
        bench.run("check", t(3_300)),
        "a connection running nothing is idle"
    );
}

#[test]
fn the_lifetime_counts_by_the_instances_clock_whatever_this_machines_says() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let flags = ["--max-lifetime", "2h", "--idle-stop", "off"];
    let (run, _, config) = launch(&cloud, &project, &flags);
    let script = written_file(&config, SCRIPT);
    let launch_settings = written_file(&config, "/etc/ssh-ec2/watchdog");
    assert_eq!(launch_settings, "lifetime=7200\nidle=off\n", "{run}");

    // The run armed it too, in the login's home: the same durations, stamped by the instance.
    let before = SystemTime::now();
    let rearmed = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--leave"])
            .args(flags)
            .arg("true"),
    );
    rearmed.assert_code(0);
    let armed = cloud.remote_state_entries(&project, "watchdog");
    assert_eq!(armed.len(), 1, "{armed:?}");
    assert_eq!(std::fs::read_to_string(&armed[0]).unwrap(), launch_settings);
    let stamped = std::fs::metadata(&armed[0]).unwrap().modified().unwrap();
    assert!(
        stamped >= before - Duration::from_secs(1),
        "armed when re-armed\n{rearmed}"
    );

    // Whether this machine's clock was 30 hours behind the instance's (the deadline it used
    // to write was then long past at the first check) or 30 hours ahead (then far off), the
    // instance stops 2 hours after it was armed, by its own clock.
    for booted in [unix_now() + 30 * 3_600, unix_now() - 30 * 3_600, BOOTED] {
        let bench = Bench::new(&script, &launch_settings, booted);
        assert!(!bench.run("boot", booted + 10));
        bench.processes(" 11 10 sshd: ubuntu@notty\n 12 11 python train.py\n");
        assert!(!bench.run("check", booted + 60), "not at the first check");
        assert!(
            !bench.run("check", booted + 7_199),
            "in use, and in its lifetime"
        );
        assert!(
            bench.run("check", booted + 7_200),
            "2 hours: its lifetime is over"
        );
        // A later run re-arms it with its own settings, from when it did so.
        let file = bench.home_file("watchdog/ssh-ec2-x", "lifetime=3600\nidle=off\n");
        touch_at(&file, booted + 7_000);
        assert!(!bench.run("check", booted + 10_599), "re-armed for 1 hour");
        assert!(bench.run("check", booted + 10_600));
    }

    // A client that vanished (a closed lid) is dropped by sshd within about a minute, so its
    // session does not keep the instance busy: the drop-in is in effect as sshd reads it.
    let drop_in = written_file(&config, "/etc/ssh/sshd_config.d/ssh-ec2.conf");
    let effective = sshd_settings(&config, &drop_in);
    assert!(
        effective.contains("\nclientaliveinterval 15\n"),
        "{effective}"
    );
    assert!(
        effective.contains("\nclientalivecountmax 4\n"),
        "{effective}"
    );

    Run::of(project.ssh_ec2(&cloud).args(["--terminate", "true"])).assert_code(0);
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated
    );
    cloud.assert_no_bed_errors();
}

/// What the real sshd makes of a config that includes `drop_in` (`sshd -T`), with the host key
/// of the user-data `config`.
fn sshd_settings(config: &Value, drop_in: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("host_key");
    let private = config["ssh_keys"]["ed25519_private"].as_str().unwrap();
    std::fs::write(&key, private).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(dir.path().join("ssh-ec2.conf"), drop_in).unwrap();
    let main = dir.path().join("sshd_config");
    let include = dir.path().join("ssh-ec2.conf");
    let text = format!("Include {}\nHostKey {}\n", include.display(), key.display());
    std::fs::write(&main, text).unwrap();
    let out = Command::new("/usr/sbin/sshd")
        .arg("-T")
        .arg("-f")
        .arg(&main)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sshd refuses the drop-in: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("\n{}", String::from_utf8_lossy(&out.stdout))
}

#[test]
fn each_run_rearms_a_reused_instance_and_keeps_its_expiry_tag_current() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let first = cloud.instances().remove(0);
    let first_expiry = unix_of(&tag(&first, "ssh-ec2:expires-at").unwrap());
    assert!(
        first_expiry >= unix_now() + 86_400 - 300,
        "the default is 24h: {first_expiry}"
    );

    let before = unix_now();
    let second = Run::of(project.ssh_ec2(&cloud).args([
        "--leave",
        "--max-lifetime",
        "3d",
        "--idle-stop",
        "off",
        "true",
    ]));
    let after = unix_now();
    second.assert_code(0);
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "reused\n{second}");
    let expires = tag(&instances[0], "ssh-ec2:expires-at").unwrap();
    let said = said_deadline(&second.stderr, " (--max-lifetime 3d) (");
    assert!(
        (before + 3 * 86_400..=after + 3 * 86_400).contains(&said),
        "{second}"
    );
    assert_rounded_up(&expires, said);
    let armed =
        std::fs::read_to_string(&cloud.remote_state_entries(&project, "watchdog")[0]).unwrap();
    assert_eq!(setting(&armed, "lifetime"), "259200", "{armed}");
    assert_eq!(setting(&armed, "idle"), "off", "{armed}");

    let third = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("SSH_EC2_MAX_LIFETIME", "off")
            .args(["--leave", "true"]),
    );
    third.assert_code(0);
    assert!(
        third.stderr.contains("--max-lifetime off:"),
        "a switch without a lifetime is warned about\n{third}"
    );
    assert_eq!(
        tag(&cloud.instances()[0], "ssh-ec2:expires-at"),
        None,
        "no lifetime, no expiry tag\n{third}"
    );
    let armed =
        std::fs::read_to_string(&cloud.remote_state_entries(&project, "watchdog")[0]).unwrap();
    assert_eq!(setting(&armed, "lifetime"), "off", "{armed}");
    assert_eq!(
        setting(&armed, "idle"),
        "3600",
        "the default idle stop: {armed}"
    );

    Run::of(project.ssh_ec2(&cloud).args(["--terminate", "true"])).assert_code(0);
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated
    );
    cloud.assert_no_bed_errors();
}
