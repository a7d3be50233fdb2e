//! The main run, end to end: sync and pull back. Every change comes home, .rsyncignore both ways,
//! --no-rsync.

use crate::common;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, end};

#[test]
fn pull_back_brings_every_change_home_whatever_its_timestamp_and_deletes_nothing() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("notes.txt", "local notes\n");
    project.write("config.txt", "v1\n");
    project.write("draft.txt", "old draft\n");

    // Results written with old timestamps (`tar x`, `cp -p`, `unzip`) are results all the same;
    // one rewritten at the same size within the same second too.
    let script = "echo v2 > config.txt; echo remote > new.txt; rm notes.txt; \
                  echo remote draft > draft.txt; touch -d 2000-01-01 draft.txt; \
                  mkdir -p old && echo archived > old/result.txt && touch -d 1999-12-31 old/result.txt; \
                  exit 1";
    let run = Run::of(project.ssh_ec2(&cloud).arg(script));
    run.assert_code(1);
    assert_eq!(
        project.read("config.txt").as_deref(),
        Some("v2\n"),
        "changed file pulled\n{run}"
    );
    assert_eq!(
        project.read("new.txt").as_deref(),
        Some("remote\n"),
        "new file pulled\n{run}"
    );
    assert_eq!(
        project.read("notes.txt").as_deref(),
        Some("local notes\n"),
        "never deletes locally"
    );
    assert_eq!(
        project.read("draft.txt").as_deref(),
        Some("remote draft\n"),
        "an older timestamp does not hide a change\n{run}"
    );
    assert_eq!(
        project.read("old/result.txt").as_deref(),
        Some("archived\n"),
        "{run}"
    );
    assert_eq!(
        cloud.instances_in(InstanceStateName::Terminated).len(),
        1,
        "terminated once everything was home\n{run}"
    );
}

#[test]
fn rsyncignore_is_honoured_both_ways_and_links_out_of_the_tree_are_not_followed() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(".rsyncignore", "data/\n*.tmp\n");
    project.write("data/big.bin", "huge\n");
    project.write("code.py", "print(1)\n");
    let outside = project.home().join("outside.txt");
    std::fs::write(&outside, "private\n").unwrap();
    std::os::unix::fs::symlink(&outside, project.path().join("escape")).unwrap();

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--leave",
        "echo scratch > scratch.tmp; echo kept > kept.txt; ln -s kept.txt near; \
         ln -s /etc/hostname away",
    ]));
    run.assert_code(0);
    let remote = cloud.remote(&project);
    assert_eq!(
        cloud.read_remote(&project, "code.py").as_deref(),
        Some("print(1)\n")
    );
    assert!(
        remote.join("escape").symlink_metadata().is_err(),
        "a link out of the tree is not sent\n{run}"
    );
    assert_eq!(
        std::fs::read_link(project.path().join("near")).ok(),
        Some(std::path::PathBuf::from("kept.txt")),
        "a link within the tree comes home as a link\n{run}"
    );
    assert!(
        project.path().join("away").symlink_metadata().is_err(),
        "a link out of the tree does not come home\n{run}"
    );
    assert!(
        !remote.join("data").exists(),
        "ignored on the way up\n{run}"
    );
    assert_eq!(project.read("kept.txt").as_deref(), Some("kept\n"));
    assert_eq!(
        project.read("scratch.tmp"),
        None,
        "ignored on the way back\n{run}"
    );
    end(&cloud, &mut project.ssh_ec2(&cloud));
}

#[test]
fn no_rsync_neither_syncs_up_nor_pulls_back() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("local.txt", "x\n");

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--no-rsync",
        "--leave",
        "echo made > made.txt; ls",
    ]));
    run.assert_code(0);
    assert!(
        !run.stdout.contains("local.txt"),
        "nothing synced up\n{run}"
    );
    assert_eq!(
        cloud.read_remote(&project, "made.txt").as_deref(),
        Some("made\n"),
        "ran in the remote dir"
    );
    assert_eq!(project.read("made.txt"), None, "nothing pulled back\n{run}");
    end(&cloud, &mut project.ssh_ec2(&cloud));
}
