//! Nothing is lost: a run never clobbers what a job is writing, a change of kind keeps both
//! sides, `--no-rsync` never ends an instance whose results are not home, and a transfer cut
//! short leaves no temporary file to travel.

use crate::common;

use std::path::{Path, PathBuf};

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, instance_id, start_until_ready, state_of, wait_until};

fn assert_state(cloud: &TestCloud, state: InstanceStateName, run: &Run) {
    assert_eq!(state_of(&cloud.instances()[0]), state, "{run}");
}

/// Runs `command` again on the instance a first run stopped after saving the instance's
/// version of each of `saved` beside it: it works, saves none a second time, and terminates.
fn again_nothing_saved_twice(
    cloud: &TestCloud,
    project: &Project,
    command: &str,
    saved: &[&str],
) -> Run {
    let id = instance_id(&cloud.instances()[0]);
    let again = Run::of(project.ssh_ec2(cloud).arg(command));
    again.assert_code(0);
    for name in saved {
        let twice = project.path().join(format!("{name}.from-{id}-2"));
        assert!(!twice.exists(), "{again}");
    }
    assert_state(cloud, InstanceStateName::Terminated, &again);
    again
}

#[test]
fn a_job_appending_to_a_log_loses_no_line_while_other_runs_come_and_go() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("train.py", "print(1)\n");
    // Like `python train.py > train.log`: one open file, a line every 50 ms, until told to stop;
    // then how many lines it wrote.
    Run::of(project.ssh_ec2(&cloud).args([
        "--detach",
        "i=0; while [ ! -e stop ]; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done > train.log; \
         echo $i > count",
    ]))
    .assert_code(0);
    for command in ["true", "tail -n 1 train.log", "true"] {
        Run::of(project.ssh_ec2(&cloud).arg(command)).assert_code(0);
    }
    std::fs::write(cloud.remote(&project).join("stop"), "").unwrap();
    let finish = Run::of(project.ssh_ec2(&cloud).arg("--finish"));
    finish.assert_code(0);

    let count: usize = project.read("count").unwrap().trim().parse().unwrap();
    let log = project.read("train.log").unwrap();
    let expected: Vec<String> = (1..=count).map(|n| format!("line {n}")).collect();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        expected,
        "every line of the job, once\n{finish}"
    );
    assert!(count > 10, "the job ran while the others came and went");
    assert_state(&cloud, InstanceStateName::Terminated, &finish);
}

#[test]
fn a_directory_the_instance_made_where_here_is_a_link_or_a_file_comes_home_beside_it() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // `checkpoints -> /scratch/ckpts` on the laptop: never synced, so the job makes a directory.
    let scratch = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(scratch.path(), project.path().join("checkpoints")).unwrap();
    project.write("notes", "mine\n");

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--stop",
        "mkdir -p checkpoints/last && echo e1 > checkpoints/epoch1.pt && echo l > checkpoints/last/x; \
         rm notes && mkdir notes && echo theirs > notes/a.txt",
    ]));
    run.assert_code(0);
    let id = instance_id(&cloud.instances()[0]);
    assert_eq!(
        std::fs::read_link(project.path().join("checkpoints"))
            .ok()
            .as_deref(),
        Some(scratch.path()),
        "the link is kept\n{run}"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "nothing written through it\n{run}"
    );
    let saved = |name: &str, inside: &str| project.read(&format!("{name}.from-{id}/{inside}"));
    assert_eq!(
        saved("checkpoints", "epoch1.pt").as_deref(),
        Some("e1\n"),
        "{run}"
    );
    assert_eq!(
        saved("checkpoints", "last/x").as_deref(),
        Some("l\n"),
        "{run}"
    );
    assert_eq!(project.read("notes").as_deref(), Some("mine\n"), "{run}");
    assert_eq!(
        saved("notes", "a.txt").as_deref(),
        Some("theirs\n"),
        "{run}"
    );
    for name in ["checkpoints", "notes"] {
        assert!(
            run.stderr
                .contains(&format!("{name} changed both here and on the instance")),
            "{run}"
        );
    }
    assert_state(&cloud, InstanceStateName::Stopped, &run);

    // What is home already is not saved twice, and the push goes past both.
    again_nothing_saved_twice(&cloud, &project, "true", &["checkpoints", "notes"]);
}

#[test]
fn a_file_the_instance_made_where_here_is_a_directory_comes_home_beside_it() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("results/a.txt", "a\n");

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--stop", "rm -rf results && echo theirs > results"]),
    );
    run.assert_code(0);
    let id = instance_id(&cloud.instances()[0]);
    assert_eq!(
        project.read("results/a.txt").as_deref(),
        Some("a\n"),
        "{run}"
    );
    assert_eq!(
        project.read(&format!("results.from-{id}")).as_deref(),
        Some("theirs\n"),
        "{run}"
    );
    assert!(run.stderr.contains("results changed both here"), "{run}");
    assert_state(&cloud, InstanceStateName::Stopped, &run);

    let again = again_nothing_saved_twice(&cloud, &project, "cat results", &["results"]);
    assert_eq!(
        again.stdout, "theirs\n",
        "the push left the instance's file\n{again}"
    );
}

#[test]
fn no_rsync_never_counts_as_results_home_while_the_last_pull_did_not_complete() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let failed = Run::of(
        project
            .ssh_ec2(&cloud)
            .arg("mkdir -p locked && echo r > locked/r.txt && chmod 000 locked"),
    );
    failed.assert_code(255);
    assert_state(&cloud, InstanceStateName::Stopped, &failed);

    let run = Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    run.assert_code(0);
    assert!(
        run.stderr.contains("did not complete") && run.stderr.contains("`ssh-ec2 true`"),
        "it says how to bring the results home\n{run}"
    );
    assert_state(&cloud, InstanceStateName::Stopped, &run);

    let down = Run::of(project.ssh_ec2(&cloud).args(["--down", "--no-rsync"]));
    down.assert_code(255);
    assert_state(&cloud, InstanceStateName::Stopped, &down);

    use std::os::unix::fs::PermissionsExt;
    let locked = cloud.remote(&project).join("locked");
    std::fs::set_permissions(locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = Run::of(project.ssh_ec2(&cloud).arg("true"));
    home.assert_code(0);
    assert_eq!(
        project.read("locked/r.txt").as_deref(),
        Some("r\n"),
        "{home}"
    );
    assert_state(&cloud, InstanceStateName::Terminated, &home);
}

/// rsync's temporary copies of `name` under `dir` (`.NAME.XXXXXX`, or `NAME.XXXXXX` in a
/// `--temp-dir`).
fn temporary_copies(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(temporary_copies(&path, name));
        } else if file_name
            .trim_start_matches('.')
            .starts_with(&format!("{name}."))
        {
            found.push(path);
        }
    }
    found
}

/// `pid` and every process below it, as /proc tells.
fn process_tree(pid: i32) -> Vec<i32> {
    let mut children: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The fields after the command name, which may hold spaces and parentheses.
        let parent = (stat.rsplit_once(')'))
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if let Some(parent) = parent {
            children.push((parent, child));
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(
            children
                .iter()
                .filter(|(p, _)| *p == parent)
                .map(|(_, c)| *c),
        );
        next += 1;
    }
    tree
}

#[test]
fn temporary_files_of_a_pull_cut_by_a_crash_are_never_pushed_and_are_removed() {
    use nix::sys::signal::{Signal, kill};
    let cloud = TestCloud::start();
    let project = Project::new();
    let mut child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .arg("head -c 300000000 /dev/urandom > big.bin; echo ready"),
    );
    let signal_all = |pids: &[i32], signal| {
        for &pid in pids {
            let _ = kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    };
    // Frozen the moment the temporary file shows: on loopback the rest of the transfer can
    // take less than the time between two looks, and would rename it before the crash.
    let mut laptop = Vec::new();
    wait_until("the pull of big.bin to be under way", || {
        let under_way = !temporary_copies(project.path(), "big.bin").is_empty();
        if under_way {
            laptop = process_tree(child.id() as i32);
            signal_all(&laptop, Signal::SIGSTOP);
        }
        under_way
    });
    // The laptop dies: ssh-ec2, its rsync, rsync's receiver, all at once.
    signal_all(&laptop, Signal::SIGKILL);
    child.wait().unwrap();
    let left = temporary_copies(project.path(), "big.bin");
    assert!(!left.is_empty(), "the crash left a temporary file");

    // Left running, to look at what it holds.
    let again = Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"]));
    again.assert_code(0);
    assert_eq!(
        temporary_copies(&cloud.remote(&project), "big.bin"),
        Vec::<PathBuf>::new(),
        "sent to the instance (left here: {left:?})\n{again}"
    );
    assert_eq!(
        temporary_copies(project.path(), "big.bin"),
        Vec::<PathBuf>::new(),
        "left here\n{again}"
    );
    let size = std::fs::metadata(project.path().join("big.bin"))
        .unwrap()
        .len();
    assert_eq!(size, 300_000_000, "{again}");
    // The runs' logs come home too (tests/it/logs.rs).
    let top: Vec<_> = (std::fs::read_dir(project.path()).unwrap())
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name != "ssh-ec2-logs")
        .collect();
    assert_eq!(
        top,
        ["big.bin"],
        "nothing else is left in the project\n{again}"
    );
    let end = Run::of(project.ssh_ec2(&cloud).arg("true"));
    end.assert_code(0);
    assert_state(&cloud, InstanceStateName::Terminated, &end);
}
