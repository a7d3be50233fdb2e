//! A big new file goes up over several channels at once, and arrives as rsync would have sent
//! it: the same bytes, mode and time, recorded as synced; what the rules keep here stays here.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{Project, Run, TestCloud};

/// 20 MiB and a bit, not a whole number of blocks, bytes that differ from block to block.
fn big_bytes(seed: u32) -> Vec<u8> {
    let mut state = seed;
    (0..20 * 1024 * 1024 + 12_345)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

fn write_big(project: &Project, relative: &str, bytes: &[u8], mode: u32, mtime: SystemTime) {
    let path = project.path().join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(mtime).unwrap();
}

/// Bytes, permission bits and modification time (seconds, nanoseconds).
fn stamp(path: &Path) -> (u64, u32, i64, i64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mode = meta.permissions().mode() & 0o7777;
    (meta.len(), mode, meta.mtime(), meta.mtime_nsec())
}

/// Whether `name` went up in parts and was placed (rather than left to rsync).
fn in_parts(run: &Run, name: &str) -> bool {
    run.stderr.contains(&format!("{name}: in 4 parts"))
        && !run.stderr.contains(&format!("{name} left to rsync"))
}

#[test]
fn a_big_new_file_goes_up_in_parts_as_rsync_would_have_sent_it() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(".rsyncignore", "*.skip\n");
    project.write("train.py", "print(1)\n");
    let weights = big_bytes(1);
    let written = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    write_big(&project, "data/v1/weights.bin", &weights, 0o750, written);
    write_big(&project, "scratch.skip", &big_bytes(2), 0o644, written);
    let table: String = (0..2_000_000)
        .map(|i| format!("{i},{},x\n", i % 97))
        .collect();
    write_big(&project, "table.csv", table.as_bytes(), 0o644, written);

    // Into the directory a cold run makes.
    let run = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", "true"]));
    run.assert_code(0);
    assert!(in_parts(&run, "data/v1/weights.bin"), "{run}");
    assert!(!run.stderr.contains("scratch.skip: in"), "{run}");
    // It compresses well: rsync's, with --compress.
    assert!(!run.stderr.contains("table.csv: in"), "{run}");
    let remote = cloud.remote(&project);
    assert!(std::fs::read(remote.join("table.csv")).unwrap() == table.as_bytes());
    let there = remote.join("data/v1/weights.bin");
    assert!(
        std::fs::read(&there).unwrap() == weights,
        "the bytes differ"
    );
    assert_eq!(
        stamp(&there),
        stamp(&project.path().join("data/v1/weights.bin"))
    );
    assert!(
        !remote.join("scratch.skip").exists(),
        "a rule keeps it here"
    );
    assert!(remote.join("train.py").exists(), "rsync sent the rest");

    // Synced: the next run sends nothing, and brings nothing home.
    let again = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", "true"]));
    again.assert_code(0);
    assert!(!again.stderr.contains(": in 4 parts"), "{again}");
    assert!(!again.stderr.contains("conflict"), "{again}");

    // Into the directory that is there now, through the connection kept since.
    let later = big_bytes(3);
    write_big(&project, "later.bin", &later, 0o600, written);
    let warm = Run::of(project.ssh_ec2(&cloud).args(["-vv", "--leave", "true"]));
    warm.assert_code(0);
    assert!(in_parts(&warm, "later.bin"), "{warm}");
    assert!(std::fs::read(remote.join("later.bin")).unwrap() == later);
    assert_eq!(
        stamp(&remote.join("later.bin")),
        stamp(&project.path().join("later.bin"))
    );
    let left = std::fs::read_dir(remote.join(".ssh-ec2-tmp")).map_or(0, |dirs| {
        dirs.flatten()
            .map(|dir| std::fs::read_dir(dir.path()).map_or(0, |files| files.count()))
            .sum()
    });
    assert_eq!(left, 0, "no part is left on the instance");
}

/// The parts' temporary files on the instance, in any connection's directory.
fn parts_files(remote: &Path) -> Vec<std::path::PathBuf> {
    let top = std::fs::read_dir(remote.join(".ssh-ec2-tmp"))
        .into_iter()
        .flatten();
    (top.flatten())
        .flat_map(|dir| {
            std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|file| file.path())
        .filter(|file| file.to_string_lossy().contains("/parts-"))
        .collect()
}

/// Processes whose command line names `word` (the instance's are this machine's too).
fn processes_naming(word: &str) -> usize {
    let all = std::fs::read_dir("/proc").unwrap().flatten();
    (all.filter_map(|process| std::fs::read(process.path().join("cmdline")).ok()))
        .filter(|line| String::from_utf8_lossy(line).contains(word))
        .count()
}

#[test]
fn a_push_cancelled_during_its_parts_leaves_no_part_and_no_writer_on_the_instance() {
    use std::os::unix::process::CommandExt;
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("train.py", "print(1)\n");
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    // Sparse here but where ssh-ec2 samples it (a file that compresses well is rsync's);
    // long enough to go up that Ctrl-C comes first.
    let huge = std::fs::File::create(project.path().join("huge.bin")).unwrap();
    let size: u64 = 1 << 30;
    huge.set_len(size).unwrap();
    let noise = big_bytes(4);
    let sampled = 1 << 20;
    std::os::unix::fs::FileExt::write_at(&huge, &noise[..sampled], (size - sampled as u64) / 2)
        .unwrap();
    let remote = cloud.remote(&project);

    let mut child = project
        .ssh_ec2(&cloud)
        .args(["-vv", "--leave", "true"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    common::wait_until("the parts to be written", || {
        !parts_files(&remote).is_empty()
    });
    common::signal(&child, nix::sys::signal::Signal::SIGINT);
    let status = common::wait_or_kill(child, common::RUN_TIMEOUT);
    let said = said.join().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(130), "{said}");
    assert!(said.contains("huge.bin: in 4 parts"), "{said}");

    let writer = format!(
        "{}/.ssh-ec2-tmp/",
        project.path().file_name().unwrap().to_string_lossy()
    );
    common::wait_until("the parts and their writers to go", || {
        parts_files(&remote).is_empty() && processes_naming(&writer) == 0
    });
    assert!(!remote.join("huge.bin").exists(), "{said}");
}
