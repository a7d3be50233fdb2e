//! Results always come home: changes decided by the manifest, conflicts that keep both versions,
//! failed pulls that stop the instance and a recovery that works, local modes kept, secrets held
//! back, any file name verbatim, a closed stdout, and the end of the command before the pull.

use crate::common;

use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aws_sdk_ec2::types::InstanceStateName;
use common::{
    Project, RUN_TIMEOUT, Run, TestCloud, end, instance_id, start_until_ready, state_of,
    wait_or_kill, wait_until,
};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Waits for the end of a started run and returns its exit status and stderr.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let status = wait_or_kill(child, RUN_TIMEOUT).expect("ssh-ec2 hung");
    (status.code(), stderr.join().unwrap())
}

#[test]
fn a_file_changed_on_both_sides_keeps_both_versions_and_the_conflict_is_listed() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("notes.txt", "v1\n");
    project.write("untouched.txt", "same\n");
    project.write("touched.txt", "same\n");

    // The instance rewrites notes.txt, then waits while the user edits it here.
    let child = start_until_ready(project.ssh_ec2(&cloud).arg(
        "echo remote > notes.txt; echo remote > untouched.txt; echo remote > touched.txt; \
         echo ready; \
         while [ ! -e edited ]; do sleep 0.05; done",
    ));
    project.write("notes.txt", "local edit\n");
    // Rewritten here with the same content (a `git checkout`): not a change of ours.
    project.write("touched.txt", "same\n");
    std::fs::write(cloud.remote(&project).join("edited"), "").unwrap();
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");

    assert_eq!(
        project.read("notes.txt").as_deref(),
        Some("local edit\n"),
        "the local edit is kept\n{stderr}"
    );
    let id = instance_id(&cloud.instances()[0]);
    let saved = format!("notes.from-{id}.txt");
    assert_eq!(
        project.read(&saved).as_deref(),
        Some("remote\n"),
        "the instance's version is saved beside it\n{stderr}"
    );
    assert_eq!(
        project.read("untouched.txt").as_deref(),
        Some("remote\n"),
        "changed only there: replaced\n{stderr}"
    );
    assert_eq!(
        project.read("touched.txt").as_deref(),
        Some("remote\n"),
        "the same content rewritten here is no change: replaced, no conflict\n{stderr}"
    );
    assert!(!stderr.contains("touched.txt changed both"), "{stderr}");
    assert!(
        stderr.contains("notes.txt changed both here and on the instance")
            && stderr.contains(&saved),
        "the conflict is listed at the end\n{stderr}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "both versions are home\n{stderr}"
    );
}

#[test]
fn local_modes_are_kept_and_new_files_get_the_umask_and_the_executable_bit() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("private.txt", "secret v1\n");
    std::fs::set_permissions(
        project.path().join("private.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let run = Run::of(project.ssh_ec2(&cloud).arg(
        "echo v2 > private.txt; chmod 666 private.txt; \
         echo '#!/bin/sh' > tool.sh; chmod 755 tool.sh; \
         echo data > shared.txt; chmod 666 shared.txt; \
         mkdir -p out; chmod 777 out; echo r > out/r.txt",
    ));
    run.assert_code(0);
    assert_eq!(
        project.read("private.txt").as_deref(),
        Some("v2\n"),
        "{run}"
    );
    assert_eq!(
        mode(&project.path().join("private.txt")),
        0o600,
        "a remote chmod does not widen it"
    );
    assert_eq!(
        mode(&project.path().join("tool.sh")),
        0o755,
        "executable stays executable"
    );
    assert_eq!(
        mode(&project.path().join("shared.txt")),
        0o644,
        "the local umask applies"
    );
    assert_eq!(mode(&project.path().join("out")), 0o755, "directories too");
    let owner = std::fs::metadata(project.path().join("tool.sh")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&owner),
        nix::unistd::getuid().as_raw(),
        "remote owners never apply"
    );
}

#[test]
fn a_pull_that_fails_stops_the_instance_and_the_suggested_command_then_brings_everything_home() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("code.py", "print(1)\n");

    let run = Run::of(project.ssh_ec2(&cloud).arg(
        "mkdir -p locked && echo result > locked/result.txt && chmod 000 locked; \
         echo fine > fine.txt",
    ));
    run.assert_code(255);
    assert!(run.stderr.contains("not everything came home"), "{run}");
    assert!(
        run.stderr.contains("locked"),
        "the message names what is missing\n{run}"
    );
    assert!(
        run.stderr.contains("`ssh-ec2 true`"),
        "and the command that finishes the job\n{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Stopped,
        "stopped, not terminated\n{run}"
    );
    assert_eq!(
        project.read("fine.txt").as_deref(),
        Some("fine\n"),
        "what could come home did\n{run}"
    );
    let local_locked = project.path().join("locked");
    if local_locked.exists() {
        assert_ne!(
            mode(&local_locked) & 0o700,
            0,
            "the remote's mode 000 is not copied here"
        );
    }

    // The cause is fixed on the instance (its disk survives the stop), then the suggested command.
    std::fs::set_permissions(
        cloud.remote(&project).join("locked"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let recovery = Run::of(project.ssh_ec2(&cloud).arg("true"));
    recovery.assert_code(0);
    assert_eq!(
        project.read("locked/result.txt").as_deref(),
        Some("result\n"),
        "{recovery}"
    );
    assert_eq!(cloud.instances().len(), 1, "the same instance\n{recovery}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{recovery}"
    );
}

#[test]
fn secrets_are_held_back_unless_re_included_and_the_instance_gets_no_credentials() {
    let cloud = TestCloud::start();
    let project = Project::new();
    for canary in [
        ".aws/credentials",
        ".ssh/config",
        "keys/deploy.pem",
        "keys/extra.pem",
        "id_ed25519",
        "sub/id_rsa",
    ] {
        project.write(canary, "CANARY\n");
    }
    project.write("id_ed25519.pub", "ssh-ed25519 AAAA public\n");
    project.write("code.py", "print(1)\n");
    project.write(".rsyncignore", "+ extra.pem\n");
    // A .env with an AWS access key stays home; one without goes as project files do.
    project.write(".env", "export AWS_SECRET_ACCESS_KEY=CANARY\n");
    project.write(".env.local", "WANDB_API_KEY=for-the-job\n");

    let run = Run::of(project.ssh_ec2(&cloud).args(["--leave", "env > env.txt"]));
    run.assert_code(0);
    let remote = cloud.remote(&project);
    for held_back in [
        ".aws",
        ".ssh",
        "keys/deploy.pem",
        "id_ed25519",
        "sub/id_rsa",
        ".env",
    ] {
        assert!(
            !remote.join(held_back).exists(),
            "{held_back} reached the instance\n{run}"
        );
        assert!(
            run.stderr.contains(held_back),
            "the line names {held_back}\n{run}"
        );
    }
    assert!(run.stderr.contains("held back"), "{run}");
    assert!(
        remote.join("keys/extra.pem").exists(),
        "re-included with +\n{run}"
    );
    assert!(
        remote.join("id_ed25519.pub").exists(),
        "public keys are not secret\n{run}"
    );
    assert!(remote.join("code.py").exists(), "{run}");
    assert!(remote.join(".env.local").exists(), "{run}");
    let env = project.read("env.txt").unwrap();
    assert!(
        !env.contains("AWS_SECRET_ACCESS_KEY") && !env.contains("AWS_ACCESS_KEY_ID"),
        "the remote environment carries no AWS credentials\n{env}"
    );
    end(&cloud, &mut project.ssh_ec2(&cloud));
}

#[test]
fn names_with_spaces_quotes_semicolons_newlines_and_unicode_sync_verbatim_both_ways() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let odd_dir = format!(
        "{} my \"odd\" dir; it's ü",
        project.path().file_name().unwrap().to_string_lossy()
    );
    let local = project.path().join(&odd_dir);
    std::fs::create_dir(&local).unwrap();
    let names = [
        "a b.txt",
        "it's.txt",
        "semi;colon.txt",
        "new\nline.txt",
        "été 🚀.txt",
        "$(boom)",
    ];
    for name in names {
        std::fs::write(local.join(name), name).unwrap();
    }

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .current_dir(&local)
            .args(["--leave", "for f in *; do cp \"$f\" \"back-$f\"; done"]),
    );
    run.assert_code(0);
    let remote = cloud
        .home_on(&instance_id(&cloud.live_instances()[0]))
        .join(&odd_dir);
    for name in names {
        assert_eq!(
            std::fs::read_to_string(remote.join(name)).ok().as_deref(),
            Some(name),
            "{name:?} went up verbatim\n{run}"
        );
        assert_eq!(
            std::fs::read_to_string(local.join(format!("back-{name}")))
                .ok()
                .as_deref(),
            Some(name),
            "back-{name:?} came home verbatim\n{run}"
        );
    }
    assert!(!remote.join("boom").exists() && !local.join("boom").exists());
    end(&cloud, project.ssh_ec2(&cloud).current_dir(&local));
}

#[test]
fn a_closed_stdout_tells_the_command_and_the_run_still_ends_as_usual() {
    let cloud = TestCloud::start();
    let project = Project::new();

    // Like `ssh-ec2 … | head -1`: the reader goes away after the first line.
    let mut child = start_until_ready(project.ssh_ec2(&cloud).arg(
        "echo ready; seq 1 100000000 || echo \"seq:$?\" > seq.txt; echo done > after.txt; exit 3",
    ));
    drop(child.stdout.take());
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(3), "the command's own status\n{stderr}");
    assert_eq!(
        project.read("seq.txt").as_deref(),
        Some("seq:141\n"),
        "the command was told its output is gone (SIGPIPE)\n{stderr}"
    );
    assert_eq!(
        project.read("after.txt").as_deref(),
        Some("done\n"),
        "{stderr}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "no stop-instead-of-terminate because a pipe closed\n{stderr}"
    );
}

#[test]
fn after_a_hang_up_the_command_is_ended_before_the_pull() {
    use nix::sys::signal::Signal;
    let cloud = TestCloud::start();
    let project = Project::new();

    // It writes a last result when it is told to end: that must come home too. (Its output is
    // gone with the hang-up, as with ssh: it ignores SIGPIPE to outlive its shell's messages.)
    let child = start_until_ready(project.ssh_ec2(&cloud).arg(
        "trap '' PIPE; trap 'echo last > last.txt; exit 0' TERM; echo ready; \
         while :; do sleep 0.2; done",
    ));
    common::signal(&child, Signal::SIGHUP);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(129), "{stderr}");
    assert_eq!(
        project.read("last.txt").as_deref(),
        Some("last\n"),
        "the pull waited for the command's end\n{stderr}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "its end is known and its results are home\n{stderr}"
    );
}

#[test]
fn an_instance_shut_down_from_inside_is_said_and_its_results_come_home_later() {
    let cloud = TestCloud::start();
    let project = Project::new();

    let child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .arg("echo result > result.txt; echo ready; sleep 60"),
    );
    let id = instance_id(&cloud.instances()[0]);
    // What `sudo shutdown` in the job does: launched with shutdown behaviour `stop`, it stops.
    cloud
        .block_on(cloud.ec2().stop_instances().instance_ids(&id).send())
        .unwrap();
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains(&format!("{id} stopped under the run")),
        "{stderr}"
    );
    assert!(stderr.contains("`ssh-ec2 true`"), "{stderr}");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Stopped,
        "{stderr}"
    );

    let recovery = Run::of(project.ssh_ec2(&cloud).arg("true"));
    recovery.assert_code(0);
    assert_eq!(
        project.read("result.txt").as_deref(),
        Some("result\n"),
        "{recovery}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{recovery}"
    );
    wait_until("the instance's sshd to stop", || {
        cloud.count_events("sshd-stopped") >= 2
    });
}

#[test]
fn a_push_never_overwrites_what_the_instance_changed_since_the_last_pull() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("a.txt", "a1\n");
    project.write("b.txt", "b1\n");
    Run::of(project.ssh_ec2(&cloud).args(["--stop", "true"])).assert_code(0);

    // Results that never came home (a killed client): on the stopped instance's disk only.
    std::fs::write(
        cloud.remote(&project).join("a.txt"),
        "a2 from the instance\n",
    )
    .unwrap();
    std::fs::write(
        cloud.remote(&project).join("b.txt"),
        "b2 from the instance\n",
    )
    .unwrap();
    project.write("b.txt", "b2 from here\n");

    let run = Run::of(project.ssh_ec2(&cloud).arg("cat a.txt b.txt"));
    run.assert_code(0);
    assert_eq!(
        run.stdout, "a2 from the instance\nb2 from here\n",
        "the push sent only what changed here, after bringing the instance's changes home\n{run}"
    );
    assert_eq!(
        project.read("a.txt").as_deref(),
        Some("a2 from the instance\n"),
        "{run}"
    );
    let id = instance_id(&cloud.instances()[0]);
    assert_eq!(
        project.read(&format!("b.from-{id}.txt")).as_deref(),
        Some("b2 from the instance\n"),
        "changed on both sides: both kept\n{run}"
    );
    assert_eq!(
        project.read("b.txt").as_deref(),
        Some("b2 from here\n"),
        "{run}"
    );
}

#[test]
fn after_a_lost_connection_the_command_is_ended_through_a_new_one_before_the_pull() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = start_until_ready(project.ssh_ec2(&cloud).arg(
        "trap '' PIPE; trap 'echo last > last.txt; exit 0' TERM; echo ready; \
         while :; do sleep 0.2; done",
    ));
    // A network drop: the connection goes, the instance and the command stay.
    assert!(
        cloud.drop_connections() > 0,
        "there was a connection to cut"
    );
    let (code, stderr) = finish(child);
    assert_eq!(
        code,
        Some(255),
        "a lost connection is ssh-ec2's failure\n{stderr}"
    );
    assert!(
        stderr.contains("ending what is left of the remote command"),
        "{stderr}"
    );
    assert_eq!(
        project.read("last.txt").as_deref(),
        Some("last\n"),
        "ended, then pulled: its last result came home\n{stderr}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "its end is known and its results are home\n{stderr}"
    );
}
