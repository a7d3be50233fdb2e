//! The connection that stays: after a run that leaves its instance running, a holder keeps a
//! pinned connection to it, which the next run here uses instead of dialling; it ends when idle,
//! when the connection drops, and before the instance's end of life.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Pane, Project, Run, TestCloud, assert_nothing_left, end, signal, start_until_ready, wait_until,
};
use nix::sys::signal::Signal;

/// ssh-ec2 here with the connection kept for `keep` after a run that leaves the instance.
fn keeping(cloud: &TestCloud, project: &Project, keep: &str) -> Command {
    let mut command = project.ssh_ec2(cloud);
    command.env("SSH_EC2_KEEP_CONNECTION", keep);
    command
}

/// Where the connection to the project's instance is kept.
fn held_socket(cloud: &TestCloud, project: &Project) -> PathBuf {
    let id = cloud.instance_of(project);
    (project.home())
        .join(".local/state/ssh-ec2/instances")
        .join(id)
        .join("held.sock")
}

/// The holder's process, once it holds the connection (its card says).
fn holder_pid(socket: &Path) -> i32 {
    let card = socket.with_extension("json");
    wait_until("the holder to hold the connection", || {
        socket.exists() && card.exists()
    });
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(card).unwrap()).unwrap();
    card["pid"].as_i64().unwrap() as i32
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// How many SSH logins the instance has (sshd's `user@tty` processes), and how many of them run
/// something (a process under one).
fn logins_running_something(cloud: &TestCloud) -> (usize, usize) {
    let logins: Vec<i32> = (cloud.connection_pids().into_iter())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with("sshd: ubuntu@"))
        })
        .collect();
    let children = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
    };
    let running = logins
        .iter()
        .filter(|&&pid| !children(pid).trim().is_empty());
    (logins.len(), running.count())
}

/// A first run that leaves the instance, its connection kept: the socket and the holder.
fn left_with_connection_kept(cloud: &TestCloud, project: &Project) -> (PathBuf, i32) {
    Run::of(keeping(cloud, project, "10m").args(["--leave", "true"])).assert_code(0);
    let socket = held_socket(cloud, project);
    let holder = holder_pid(&socket);
    (socket, holder)
}

/// Terminates the instance; its holder goes with it.
fn end_and_see_holder_go(cloud: &TestCloud, project: &Project, holder: i32) {
    end(cloud, &mut keeping(cloud, project, "10m"));
    wait_until("the holder to end", || !alive(holder));
}

/// How many connections the instance's sshd serves, seen from the command on the instance.
const CONNECTIONS: &str = "ss -Htn state established '( sport = :22 )' | wc -l";

#[test]
fn the_next_run_goes_through_the_connection_kept_and_terminating_ends_it() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let first = Run::of(keeping(&cloud, &project, "10m").args(["--leave", "true"]));
    first.assert_code(0);
    let socket = held_socket(&cloud, &project);
    let holder = holder_pid(&socket);
    let environ = std::fs::read(format!("/proc/{holder}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("AWS_"),
        "the holder keeps no AWS credentials"
    );
    assert_eq!(mode(&socket), 0o600, "{first}");
    assert_eq!(mode(&socket.with_extension("json")), 0o600);
    assert_eq!(
        mode(socket.parent().unwrap()),
        0o700,
        "only this user gets near it"
    );

    // The command, its exit status, stdout and stderr, and rsync both ways, all through it:
    // the instance serves one connection, the holder's.
    project.write("input.txt", "pushed\n");
    let second = Run::of(keeping(&cloud, &project, "10m").args([
        "-v",
        "--leave",
        &format!("cp input.txt copy.txt; {CONNECTIONS}; echo to stderr >&2; exit 3"),
    ]));
    second.assert_code(3);
    assert_eq!(second.stdout.trim(), "1", "no second connection\n{second}");
    assert!(second.stderr.contains("to stderr\n"), "{second}");
    assert!(
        second
            .stderr
            .contains("(the connection kept since the last run)"),
        "{second}"
    );
    assert_eq!(project.read("copy.txt").as_deref(), Some("pushed\n"));
    assert!(alive(holder), "it goes on holding the connection");
    // Once the run is over, it runs nothing there: the dead-man switch, which counts an SSH
    // login only while something runs under it, sees the instance idle (sshd names the login
    // `ubuntu@notty` from its first command on).
    wait_until("the login to run nothing", || {
        logins_running_something(&cloud) == (1, 0)
    });
    assert_eq!(holder_pid(&socket), holder, "the same holder");

    // Ending the instance ends the connection first.
    end_and_see_holder_go(&cloud, &project, holder);
    assert!(!socket.exists());
    assert_nothing_left(&cloud, &project, &second);
}

#[test]
fn a_forward_runs_through_the_connection_kept() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    project.write("page.txt", "served through the holder\n");
    let (local, remote) = (8011, 8010);
    let child = start_until_ready(
        keeping(&cloud, &project, "10m")
            .args(["--leave", "-L", &format!("{local}:localhost:{remote}")])
            .arg(format!(
                "python3 -m http.server {remote} --bind 127.0.0.1 >/dev/null 2>&1 & \
                 echo ready; while [ ! -e done ]; do sleep 0.1; done; kill $!; {CONNECTIONS}"
            )),
    );
    let answer = crate::forward::http_get(&cloud, local, "/page.txt");
    std::fs::write(cloud.remote(&project).join("done"), "").unwrap();
    let run = Run::collect(child);
    assert!(answer.ends_with("served through the holder\n"), "{answer}");
    assert_eq!(
        run.stdout.trim(),
        "1",
        "one connection, the holder's\n{run}"
    );
    assert!(alive(holder));
    end_and_see_holder_go(&cloud, &project, holder);
}

#[test]
fn a_kept_connection_ends_once_idle_or_dropped_and_the_next_run_dials() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(keeping(&cloud, &project, "2s").args(["--leave", "true"])).assert_code(0);
    let socket = held_socket(&cloud, &project);
    let holder = holder_pid(&socket);
    wait_until("the idle holder to end", || !alive(holder));
    assert!(!socket.exists(), "it took its socket away");

    // A holder whose connection drops (a network change, the instance stopped) ends too.
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    assert!(cloud.drop_connections() > 0);
    wait_until("the cut holder to end", || !alive(holder));
    assert!(!socket.exists());

    // One killed outright leaves its socket: the next run dials, and a new holder takes over.
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the killed holder to go", || !alive(holder));
    let run = Run::of(keeping(&cloud, &project, "10m").args(["-v", "--leave", "echo dialled"]));
    run.assert_code(0);
    assert_eq!(run.stdout, "dialled\n");
    assert!(!run.stderr.contains("kept since"), "{run}");
    wait_until("a new holder", || holder_pid(&socket) != holder);
    let next = holder_pid(&socket);
    end_and_see_holder_go(&cloud, &project, next);
}

#[test]
fn a_signal_and_the_exit_signal_pass_through_the_connection_kept() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    let child = start_until_ready(
        keeping(&cloud, &project, "10m")
            .args(["--leave", "echo partial > log.txt; echo ready; sleep 60"]),
    );
    signal(&child, Signal::SIGQUIT);
    let run = Run::collect(child);
    run.assert_code(131);
    assert!(run.stderr.contains("kept since the last run"), "{run}");
    assert!(
        run.stderr.contains("killed by signal TERM"),
        "the command got SIGTERM, and its end came back\n{run}"
    );
    assert_eq!(project.read("log.txt").as_deref(), Some("partial\n"));
    assert!(alive(holder));
    end_and_see_holder_go(&cloud, &project, holder);
}

#[test]
fn a_terminal_gets_its_size_resizes_and_ctrl_c_through_the_connection_kept() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    let pane = Pane::shell(&project, &cloud);
    pane.type_line("export SSH_EC2_KEEP_CONNECTION=10m");
    pane.type_line("ssh-ec2 --leave; echo \"ex\"\"it=$?\"");
    pane.wait_for("kept since the last run");
    pane.wait_for("opening a shell in");
    pane.assert_remote_size_follows();
    // Ctrl-C typed goes up as a byte; the remote terminal makes it SIGINT.
    pane.type_line("sleep 60");
    pane.wait_for("$ sleep 60");
    pane.tmux(&["send-keys", "C-c"]);
    pane.type_line("echo \"st\"\"atus=$?\"");
    pane.wait_for("status=130");
    pane.type_line("exit 5");
    pane.wait_for("exit=5");
    assert!(alive(holder));
    end_and_see_holder_go(&cloud, &project, holder);
}

#[test]
fn a_kept_connection_that_no_longer_answers_is_passed_by() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (socket, holder) = left_with_connection_kept(&cloud, &project);
    // A run through it: the holder has a channel opened ahead now, which proves nothing.
    Run::of(keeping(&cloud, &project, "10m").args(["--leave", "true"])).assert_code(0);
    // The instance's end of it frozen: the holder does not know yet (a laptop that slept).
    let frozen = cloud.connection_pids();
    let to_all = |signal: Signal| {
        for &pid in &frozen {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    };
    to_all(Signal::SIGSTOP);
    let run = Run::of(keeping(&cloud, &project, "10m").args(["--leave", "echo dialled"]));
    to_all(Signal::SIGCONT);
    run.assert_code(0);
    assert_eq!(run.stdout, "dialled\n");
    assert!(!run.stderr.contains("kept since"), "{run}");
    // Its successor took the socket; the old holder saw it and left.
    wait_until("the old holder to leave", || !alive(holder));
    let next = holder_pid(&socket);
    end_and_see_holder_go(&cloud, &project, next);
}

#[test]
fn a_run_through_the_connection_kept_asks_aws_nothing_until_the_instance_is_gone() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    let before = cloud.aws_calls().len();
    let warm = Run::of(keeping(&cloud, &project, "10m").args(["--leave", "echo warm"]));
    warm.assert_code(0);
    assert_eq!(warm.stdout, "warm\n");
    // But the expiry tag, rounded up to 10 minutes, when the two runs straddle a step.
    let asked: Vec<_> = (cloud.aws_calls()[before..].iter())
        .map(|call| call["action"].as_str().unwrap_or_default().to_string())
        .filter(|action| action != "CreateTags")
        .collect();
    assert!(asked.is_empty(), "{asked:?}\n{warm}");
    assert!(
        warm.stderr.contains("its kept connection answers"),
        "{warm}"
    );

    // Terminated behind its back: the connection drops with it, and the next run looks for the
    // instance, finds none and launches one.
    let id = cloud.instance_of(&project);
    let ec2 = cloud.ec2();
    cloud
        .block_on(ec2.terminate_instances().instance_ids(&id).send())
        .unwrap();
    wait_until("the holder to end", || !alive(holder));
    let cold = Run::of(keeping(&cloud, &project, "10m").arg("echo cold"));
    cold.assert_code(0);
    assert_eq!(cold.stdout, "cold\n");
    assert!(cold.stderr.contains("launched"), "{cold}");
    assert!(cloud.live_instances().is_empty(), "{cold}");
}

#[test]
fn a_replaced_holder_serves_the_runs_it_carries_to_their_end() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (socket, holder) = left_with_connection_kept(&cloud, &project);
    let child = start_until_ready(
        keeping(&cloud, &project, "10m").args(["--leave", "echo ready; sleep 2; echo done"]),
    );
    // Another socket in its place, as when a run here that dialled kept its own connection.
    let newer = socket.with_extension("newer");
    std::fs::write(&newer, "").unwrap();
    std::fs::rename(&newer, &socket).unwrap();
    let run = Run::collect(child);
    run.assert_code(0);
    assert_eq!(run.stdout, "done\n", "after the ready line\n{run}");
    assert!(run.stderr.contains("kept since the last run"), "{run}");
    wait_until("the replaced holder to leave once its run ended", || {
        !alive(holder)
    });
    assert!(socket.exists(), "the newer one's is left as it is");
    end(&cloud, &mut keeping(&cloud, &project, "10m"));
}

/// sshd lets one connection hold ten sessions (`MaxSessions`): a channel a run, or the holder
/// for it, left open (the one each session opens ahead for its next command) would shut the
/// kept connection to later runs.
#[test]
fn runs_through_the_connection_kept_leave_no_channel_open_behind() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    for round in 0..12 {
        let run = Run::of(keeping(&cloud, &project, "10m").args(["--leave", "true"]));
        run.assert_code(0);
        assert!(
            run.stderr
                .contains("(the connection kept since the last run)"),
            "round {round}: {run}"
        );
    }
    end_and_see_holder_go(&cloud, &project, holder);
}

/// Several runs of the directory at once through one kept connection: each opens channels at
/// once (sshd lets one connection hold ten sessions).
#[test]
fn runs_at_once_share_the_connection_kept() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (_, holder) = left_with_connection_kept(&cloud, &project);
    let runs: Vec<Run> = std::thread::scope(|scope| {
        let started: Vec<_> = (0..5)
            .map(|_| {
                scope.spawn(|| {
                    Run::of(keeping(&cloud, &project, "10m").args(["--leave", "sleep 1; echo ok"]))
                })
            })
            .collect();
        started.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for run in &runs {
        run.assert_code(0);
        assert_eq!(run.stdout, "ok\n", "{run}");
    }
    end_and_see_holder_go(&cloud, &project, holder);
}
