//! Warm runs on an instance left running: the instance says in one command what changed there
//! since the last pull that brought everything home, and only that is looked at, before the
//! push and after the command; whatever the times of a change say, it comes home.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Project, Run, TestCloud};

/// The lines of a `-vv` run's stderr between the line containing `from` and the one containing
/// `to`.
fn between<'a>(stderr: &'a str, from: &str, to: &str) -> Vec<&'a str> {
    let lines = stderr.lines();
    let after = lines.skip_while(|line| !line.contains(from)).skip(1);
    after.take_while(|line| !line.contains(to)).collect()
}

#[test]
fn a_warm_run_lists_the_instance_before_its_push_only_when_something_changed_there() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("a.txt", "a1\n");
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);

    // Nothing changed there since the last pull: one command says so, no rsync lists the tree.
    let quiet = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", "true"]));
    quiet.assert_code(0);
    let before_push = between(&quiet.stderr, "bringing home what changed", "syncing this");
    assert!(
        before_push
            .iter()
            .any(|l| l.contains("nothing changed there")),
        "{quiet}"
    );
    assert!(
        !before_push.iter().any(|l| l.contains("rsync relay runs")),
        "{quiet}"
    );

    // A change there, its modification time set back to 1970: its change time (the kernel's)
    // still tells, so it comes home before the push could overwrite it.
    let there = cloud.remote(&project).join("a.txt");
    std::fs::write(&there, "a2 from the instance\n").unwrap();
    let file = std::fs::File::options().write(true).open(&there).unwrap();
    file.set_modified(std::time::UNIX_EPOCH).unwrap();
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-vv", "--leave", "cat a.txt"]),
    );
    run.assert_code(0);
    assert_eq!(run.stdout, "a2 from the instance\n", "{run}");
    assert_eq!(
        project.read("a.txt").as_deref(),
        Some("a2 from the instance\n")
    );
    let before_push = between(&run.stderr, "bringing home what changed", "syncing this");
    assert!(before_push.iter().any(|l| l.contains("1 file")), "{run}");
    common::end(&cloud, &mut project.ssh_ec2(&cloud));
}

/// How many rsyncs the run started between the lines containing `from` and `to`.
fn rsyncs_between(run: &Run, from: &str, to: &str) -> usize {
    let lines = between(&run.stderr, from, to);
    lines
        .iter()
        .filter(|l| l.contains("rsync relay runs"))
        .count()
}

#[test]
fn after_a_command_on_an_instance_that_stays_only_what_changed_there_is_looked_at() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("a.txt", "a1\n");
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let pull = |run: &Run| rsyncs_between(run, "pulling results back", "ssh-ec2: pulled");

    // Only its log changed there: it comes in the instance's answer, no rsync; it keeps the
    // mode of the copy here and gets the instance's time. A bigger one is fetched by rsync,
    // without a listing of the tree first.
    let log = project.path().join("ssh-ec2-logs/run.log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).unwrap();
    let said = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-vv", "--leave", "echo said"]),
    );
    said.assert_code(0);
    assert_eq!(pull(&said), 0, "{said}");
    assert_eq!(
        project.read("ssh-ec2-logs/run.log").as_deref(),
        Some("said\n")
    );
    let there = cloud.remote(&project).join("ssh-ec2-logs/run.log");
    let modified = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    assert_eq!(modified(&log), modified(&there));
    assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o777, 0o640);
    let long = "head -c 300000 /dev/zero | tr '\\0' x";
    let said_more = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", long]));
    said_more.assert_code(0);
    assert_eq!(pull(&said_more), 1, "{}", said_more.stderr);
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 300_000);

    // A file the push sent, then a result and a rewrite whose times are set back: what the
    // push wrote is as the last sync left it, the rest is decided as a whole pull would, and
    // read in one command (small files), without a listing of the tree; a big one is fetched
    // by one rsync.
    project.write("a.txt", "a2 from here\n");
    let wrote = Run::of(project.ssh_ec2(&cloud).args([
        "-vv",
        "--leave",
        "cat a.txt && echo out > result.txt && touch -d @0 result.txt",
    ]));
    wrote.assert_code(0);
    assert_eq!(pull(&wrote), 0, "{wrote}");
    assert_eq!(project.read("result.txt").as_deref(), Some("out\n"));
    let rewrite = "printf 'a3 from there\\n' > a.txt && touch -r result.txt a.txt && echo done";
    let rewrote = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", rewrite]));
    rewrote.assert_code(0);
    assert_eq!(pull(&rewrote), 0, "{rewrote}");
    assert_eq!(project.read("a.txt").as_deref(), Some("a3 from there\n"));
    let mode = |path: &str| std::fs::metadata(project.path().join(path)).unwrap().mode() & 0o777;
    assert_eq!(mode("a.txt") & 0o111, 0, "the mode of the copy replaced");
    let made = "printf '#!/bin/sh\\n' > go.sh && chmod 755 go.sh";
    let made = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", made]));
    made.assert_code(0);
    assert_eq!(pull(&made), 0, "{made}");
    assert_eq!(
        project.read("go.sh").as_deref(),
        Some("#!/bin/sh\n"),
        "{made}"
    );
    let executable = mode("go.sh") & 0o111;
    assert_ne!(
        executable, 0,
        "a new file is executable where the instance's is"
    );
    let big = "head -c 300000 /dev/zero > big.bin && echo small > small.txt";
    let big = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", big]));
    big.assert_code(0);
    assert_eq!(
        pull(&big),
        1,
        "one rsync for the big one and the small one\n{big}"
    );
    let big_len = std::fs::metadata(project.path().join("big.bin"))
        .unwrap()
        .len();
    assert_eq!(big_len, 300_000);
    assert_eq!(
        project.read("small.txt").as_deref(),
        Some("small\n"),
        "{big}"
    );

    // Nothing changed there but the log, and the push sent nothing: no rsync again.
    let again = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", "true"]));
    again.assert_code(0);
    assert_eq!(pull(&again), 0, "{again}");
    // Each run's record went with its lease.
    let records = crate::earlier::run_records(&cloud, &project);
    assert!(records.is_empty(), "{records:?}");
    common::end(&cloud, &mut project.ssh_ec2(&cloud));
}

#[test]
fn a_directory_the_run_made_gets_everything_in_one_rsync() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("a.txt", "a1\n");
    project.write("src/b.py", "print(1)\n");
    project.write(".aws/credentials", "[default]\n");
    let push = |run: &Run| rsyncs_between(run, "syncing this directory", "synced to");
    let cold = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-vv", "--leave", "cat src/b.py"]),
    );
    cold.assert_code(0);
    assert_eq!(cold.stdout, "print(1)\n", "{cold}");
    assert_eq!(push(&cold), 1, "{cold}");
    assert!(cold.stderr.contains("held back (credentials"), "{cold}");
    assert_eq!(cloud.read_remote(&project, ".aws/credentials"), None);

    // The directory gone from the instance: made again, filled again the same way; a warm
    // run into the directory it finds compares both sides (two listings), then sends.
    std::fs::remove_dir_all(cloud.remote(&project)).unwrap();
    let again = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-vv", "--leave", "cat a.txt"]),
    );
    again.assert_code(0);
    assert_eq!(again.stdout, "a1\n", "{again}");
    assert_eq!(push(&again), 1, "{again}");
    // Then nothing but the log changed there: the directories rsync made there have the times
    // of this side's, from before the last pull's stamp, and were not renamed.
    let pull = |run: &Run| rsyncs_between(run, "pulling results back", "ssh-ec2: pulled");
    assert_eq!(pull(&again), 0, "{again}");
    project.write("a.txt", "a2\n");
    let warm = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-vv", "--leave", "cat a.txt"]),
    );
    warm.assert_code(0);
    assert_eq!(warm.stdout, "a2\n", "{warm}");
    assert_eq!(push(&warm), 3, "{warm}");
    common::end(&cloud, &mut project.ssh_ec2(&cloud));
}

/// What a narrowed pull must not miss: a directory renamed over another (what it holds shows no
/// change of its own), and logs whose directory this side removed.
#[test]
fn a_directory_renamed_there_and_logs_whose_directory_went_here_come_home() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let first = "mkdir out out.tmp && echo a > out/a.pt && echo b > out.tmp/b.pt";
    Run::of(project.ssh_ec2(&cloud).args(["--leave", first])).assert_code(0);
    assert_eq!(project.read("out.tmp/b.pt").as_deref(), Some("b\n"));

    let swap = "rm -rf out && mv out.tmp out";
    let swapped = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", swap]));
    swapped.assert_code(0);
    assert_eq!(
        project.read("out/b.pt").as_deref(),
        Some("b\n"),
        "{swapped}"
    );

    // The local directory of logs removed, then a run whose only change there is its log.
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    std::fs::remove_dir_all(project.path().join("ssh-ec2-logs")).unwrap();
    let again = Run::of(project.ssh_ec2(&cloud).args(["--leave", "echo again"]));
    again.assert_code(0);
    assert_eq!(
        project.read("ssh-ec2-logs/run.log").as_deref(),
        Some("again\n"),
        "{again}"
    );
    common::end(&cloud, &mut project.ssh_ec2(&cloud));
}

/// A run that ends its instance: the push into the directory it made stamped it, so what the
/// instance says changed since is all it holds that is not home. What comes home comes in one
/// rsync, without a listing of the tree; what the rules keep there is named before it is gone.
/// A directory that appears there may have been moved in whole, older files and all: a whole
/// pull brings it.
#[test]
fn a_cold_run_brings_home_what_changed_in_its_new_directory_in_one_rsync() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(".rsyncignore", "*.bin\n*.tmp\n");
    project.write("train.py", "print(1)\n");
    project.write("sub/kept.txt", "as pushed\n");
    project.write(".git/HEAD", "ref: refs/heads/main\n");
    let pull = |run: &Run| rsyncs_between(run, "pulling results back", "ssh-ec2: pulled");
    let run = Run::of(project.ssh_ec2(&cloud).args([
        "-vv",
        "echo m > model.bin && echo x > sub/cache.tmp && echo k > key.pem && \
         echo evil > .git/HEAD && echo fine > fine.txt && echo deep > sub/deep.txt && echo done",
    ]));
    run.assert_code(0);
    assert_eq!(run.stdout, "done\n", "{run}");
    assert_eq!(pull(&run), 1, "{run}");
    assert_eq!(project.read("fine.txt").as_deref(), Some("fine\n"), "{run}");
    assert_eq!(project.read("sub/deep.txt").as_deref(), Some("deep\n"));
    assert_eq!(project.read("sub/kept.txt").as_deref(), Some("as pushed\n"));
    assert_eq!(
        project.read(".git/HEAD").as_deref(),
        Some("ref: refs/heads/main\n")
    );
    for kept_there in ["model.bin", "sub/cache.tmp", "key.pem"] {
        assert!(
            !project.path().join(kept_there).exists(),
            "{kept_there}\n{run}"
        );
    }
    for named in [
        "held back on the instance, 2 files that differ from yours: model.bin, sub/cache.tmp \
         (excluded by .rsyncignore",
        "held back on the instance, 1 file that differs from yours: key.pem (credentials",
        "held back on the instance, 1 file that differs from yours: .git/HEAD",
    ] {
        assert!(run.stderr.contains(named), "{named}\n{run}");
    }
    assert!(cloud.live_instances().is_empty(), "{run}");

    // A directory moved there whole, with a file from before the push, then written into: a
    // directory gone from a kept instance is made again, and its push stamps it.
    let project = Project::new();
    project.write("train.py", "print(1)\n");
    let early = "mkdir -p ~/early && echo old > ~/early/old.txt";
    Run::of(project.ssh_ec2(&cloud).args(["--leave", early])).assert_code(0);
    std::fs::remove_dir_all(cloud.remote(&project)).unwrap();
    let moved = Run::of(
        project
            .ssh_ec2(&cloud)
            .arg("mv ~/early ckpt && echo new > ckpt/new.txt"),
    );
    moved.assert_code(0);
    assert_eq!(
        project.read("ckpt/old.txt").as_deref(),
        Some("old\n"),
        "{moved}"
    );
    assert_eq!(
        project.read("ckpt/new.txt").as_deref(),
        Some("new\n"),
        "{moved}"
    );
    assert!(cloud.live_instances().is_empty(), "{moved}");
}
