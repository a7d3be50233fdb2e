//! `-e`, `--env-file` and the `env` setting: the variables reach the command wherever it runs
//! (in the foreground, as a job in tmux or screen after the laptop has gone, on every node of
//! a cluster), their values on no command line and in no file of the synced tree; an unset
//! name and a name that looks like a secret are refused before any AWS call.

use crate::cli::refused;
use crate::common;

use std::path::{Path, PathBuf};

use common::{Project, Run, TestCloud, assert_nothing_left, end, start_until_ready};

/// A value no other process or file of this machine holds: found anywhere, it leaked.
fn unique(label: &str) -> String {
    format!("{label}-{:016x}", rand::random::<u64>())
}

/// The regular files under `dir` (at any depth) that hold `value`, but for the command's logs
/// (`ssh-ec2-logs/`). A FIFO (a run's stdout relay) is not opened: reading it would take the
/// command's output.
fn files_holding(dir: &Path, value: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in common::entries(dir) {
        let Ok(kind) = std::fs::symlink_metadata(&entry).map(|m| m.file_type()) else {
            continue;
        };
        // What the command printed is in its log: its own output, not ssh-ec2 keeping a value.
        if kind.is_dir() && entry.file_name().is_some_and(|n| n != "ssh-ec2-logs") {
            found.extend(files_holding(&entry, value));
        } else if kind.is_file() {
            let text = std::fs::read(&entry).unwrap_or_default();
            if text.windows(value.len()).any(|w| w == value.as_bytes()) {
                found.push(entry);
            }
        }
    }
    found
}

/// The command lines of every process of this machine (the laptop's and the instances' among
/// them) that hold `value`.
fn command_lines_holding(value: &str) -> Vec<String> {
    (common::entries(Path::new("/proc")).into_iter())
        .filter_map(|process| std::fs::read(process.join("cmdline")).ok())
        .map(|line| String::from_utf8_lossy(&line).replace('\0', " "))
        .filter(|line| line.contains(value))
        .collect()
}

/// Prints `NAME=value` for each name (unset: `NAME unset`).
fn print_vars(names: &[&str]) -> String {
    let echoes: Vec<String> = (names.iter())
        .map(|n| format!("echo {n}=${{{n}-unset}}"))
        .collect();
    echoes.join("; ")
}

/// From the environment, a file outside the project and a secret-looking name that is allowed:
/// the values reach a foreground command, no process's command line shows them (here nor on
/// the instance, whose `ps` the command itself runs), and no file of the synced tree or of the
/// instance's home holds them, once the command has read them.
#[test]
fn a_foreground_command_gets_the_values_which_no_command_line_nor_file_shows() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (here, from_file, token) = (unique("here"), unique("file"), unique("token"));
    let env_file = project.home().join("run.env");
    std::fs::write(
        &env_file,
        format!("# the run's\n\nFROM_FILE='{from_file}'\nFROM_HERE_TOO\n"),
    )
    .unwrap();
    project.write(
        "probe.sh",
        &format!(
            "ps -eo args > ps.txt; echo ready; while [ ! -e go ]; do sleep 0.1; done; {}",
            print_vars(&["FROM_HERE", "FROM_HERE_TOO", "FROM_FILE", "HF_TOKEN"])
        ),
    );
    let child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .env("FROM_HERE", &here)
            .env("FROM_HERE_TOO", "too")
            .env("HF_TOKEN", &token)
            .arg("--leave")
            .arg("--env-file")
            .arg(&env_file)
            .args(["-e", "FROM_HERE", "-e", "HF_TOKEN", "--allow-secret-env"])
            // Not a lone command, which the login shell would exec: it stays, with its
            // command line, while the probe runs.
            .arg("sh probe.sh; echo probe ended"),
    );
    let home = cloud.home_on(&cloud.instance_of(&project));
    for value in [&here, &from_file, &token] {
        assert_eq!(
            command_lines_holding(value),
            Vec::<String>::new(),
            "{value}"
        );
        assert_eq!(
            files_holding(&home, value),
            Vec::<PathBuf>::new(),
            "{value}"
        );
    }
    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    let run = Run::collect(child);
    run.assert_code(0);
    for line in [
        "probe ended".to_string(),
        format!("FROM_HERE={here}"),
        "FROM_HERE_TOO=too".to_string(),
        format!("FROM_FILE={from_file}"),
        format!("HF_TOKEN={token}"),
    ] {
        assert!(run.stdout.contains(&line), "{line}\n{run}");
    }
    let ps = project.read("ps.txt").unwrap_or_default();
    assert!(ps.contains("sh probe.sh"), "ps ran on the instance\n{ps}");
    assert!(
        (ps.lines()).any(|l| l.contains(" -l -c ") && l.ends_with("sh probe.sh; echo probe ended")),
        "the login shell was there to be seen\n{ps}"
    );
    for value in [&here, &from_file, &token] {
        assert!(!ps.contains(value.as_str()), "{value} in ps\n{ps}");
        assert_eq!(
            files_holding(&home, value),
            Vec::<PathBuf>::new(),
            "{value}"
        );
        assert_eq!(files_holding(project.path(), value), Vec::<PathBuf>::new());
    }
    end(&cloud, &mut project.ssh_ec2(&cloud));
    assert_nothing_left(&cloud, &project, &run);
}

/// A job in tmux gets the config file's variables, and one in screen the flags' (which replace
/// them), after ssh-ec2 has left; `--finish` brings what they wrote home.
#[test]
fn a_detached_job_in_tmux_or_screen_keeps_the_values_after_the_laptop_has_gone() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write(
        ".ssh-ec2.toml",
        "env = [\"FROM_CONFIG=config value\", \"CONFIG_HERE\"]\n",
    );
    let job = format!(
        "while [ ! -e go ]; do sleep 0.1; done; rm -f go; {{ {}; }} > \"$OUT\"",
        print_vars(&["FROM_CONFIG", "CONFIG_HERE", "FROM_FLAG"])
    );
    project.write("job.sh", &job);
    let go = || std::fs::write(cloud.remote(&project).join("go"), "").unwrap();

    let detached = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("CONFIG_HERE", "here")
            .args(["--detach", "OUT=tmux.txt sh job.sh"]),
    );
    detached.assert_code(0);
    assert!(detached.stderr.contains("in tmux"), "{detached}");
    go();
    let finished = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--finish", "--no-attach", "--leave"]),
    );
    finished.assert_code(0);
    assert_eq!(
        project.read("tmux.txt").as_deref(),
        Some("FROM_CONFIG=config value\nCONFIG_HERE=here\nFROM_FLAG=unset\n"),
        "{finished}"
    );

    let detached = Run::of(project.ssh_ec2(&cloud).args([
        "--multi",
        "screen",
        "--detach",
        "-e",
        "FROM_FLAG=it's a \"flag\" $HOME",
        "OUT=screen.txt sh job.sh",
    ]));
    detached.assert_code(0);
    assert!(detached.stderr.contains("in screen"), "{detached}");
    go();
    let finished = Run::of(project.ssh_ec2(&cloud).args(["--finish", "--no-attach"]));
    finished.assert_code(0);
    assert_eq!(
        project.read("screen.txt").as_deref(),
        Some("FROM_CONFIG=unset\nCONFIG_HERE=unset\nFROM_FLAG=it's a \"flag\" $HOME\n"),
        "-e replaces the config file's list\n{finished}"
    );
    assert_nothing_left(&cloud, &project, &finished);
}

/// Every node of a cluster gets them, beside its own variables: a foreground command, then a
/// job.
#[test]
fn every_node_of_a_cluster_gets_the_values() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let report = format!(
        "{{ echo rank=$SSH_EC2_NODE_RANK; {}; }} > \"$KIND-$SSH_EC2_NODE_RANK.txt\"",
        print_vars(&["FROM_FLAG", "FROM_HERE"])
    );
    project.write("report.sh", &report);
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("FROM_HERE", "here")
            .args(["--nodes", "2", "--leave", "-e", "FROM_FLAG=flag", "-e"])
            .args(["FROM_HERE", "KIND=run sh report.sh"]),
    );
    run.assert_code(0);
    let detach = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "2",
        "--detach",
        "-e",
        "FROM_FLAG=job flag",
        "KIND=job sh report.sh",
    ]));
    detach.assert_code(0);
    let finish = Run::of(project.ssh_ec2(&cloud).args(["--nodes", "2", "--finish"]));
    finish.assert_code(0);
    for rank in 0..2 {
        assert_eq!(
            project.read(&format!("run-{rank}.txt")).as_deref(),
            Some(format!("rank={rank}\nFROM_FLAG=flag\nFROM_HERE=here\n").as_str()),
            "{run}"
        );
        assert_eq!(
            project.read(&format!("job-{rank}.txt")).as_deref(),
            Some(format!("rank={rank}\nFROM_FLAG=job flag\nFROM_HERE=unset\n").as_str()),
            "{finish}"
        );
    }
    assert_nothing_left(&cloud, &project, &finish);
}

/// An unset name, a secret-looking one without the flag, a bad env file: refused before any
/// AWS call, saying which name or line and what to do.
#[test]
fn unset_and_secret_looking_names_and_bad_env_files_are_refused_before_aws() {
    let project = Project::new();
    refused(
        &project,
        |c| {
            c.args(["-e", "NOT_SET_ANYWHERE", "true"]);
        },
        &[
            "NOT_SET_ANYWHERE",
            "not set here",
            "-e NOT_SET_ANYWHERE=VALUE",
        ],
    );
    for (name, pattern) in [
        ("GITHUB_TOKEN", "*_TOKEN"),
        ("aws_profile", "AWS_*"),
        ("DB_PASSWORD", "*PASSWORD*"),
    ] {
        refused(
            &project,
            |c| {
                c.args(["-e", &format!("{name}=x"), "--dry-run", "true"]);
            },
            &[name, pattern, "--allow-secret-env"],
        );
    }
    project.write("bad.env", "A=1\n\nnot an assignment\n");
    refused(
        &project,
        |c| {
            c.args(["--env-file", "bad.env", "true"]);
        },
        &["bad.env:3:", "not an assignment"],
    );
    project.write(".ssh-ec2.toml", "env = [\"CLIENT_SECRET_X=1\"]\n");
    refused(
        &project,
        |c| {
            c.arg("true");
        },
        &["CLIENT_SECRET_X", "--allow-secret-env"],
    );
}

/// `--show-config` and `--dry-run` name the variables, and never show a value.
#[test]
fn show_config_and_dry_run_show_the_names_only() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let (value, from_file) = (unique("value"), unique("file"));
    project.write("run.env", &format!("FROM_FILE={from_file}\n"));
    let args = ["--env-file", "run.env", "-e", "EPOCHS", "-e"];
    let shown = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("EPOCHS", &value)
            .args(args)
            .args(["LR=0.1", "--show-config"]),
    );
    shown.assert_code(0);
    let row = (shown.stdout.lines())
        .find(|l| l.starts_with("env "))
        .unwrap_or_else(|| panic!("an env row\n{shown}"));
    assert!(
        row.contains("flag") && row.contains("FROM_FILE,EPOCHS,LR"),
        "{shown}"
    );

    let dry = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("EPOCHS", &value)
            .args(args)
            .args(["LR=0.1", "--dry-run", "--json", "make", "train"]),
    );
    dry.assert_code(0);
    let report: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(
        report["env"],
        serde_json::json!(["FROM_FILE", "EPOCHS", "LR"]),
        "{dry}"
    );
    let text = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("EPOCHS", &value)
            .args(args)
            .args(["LR=0.1", "--dry-run", "-vv", "make", "train"]),
    );
    text.assert_code(0);
    assert!(
        text.stdout
            .contains("FROM_FILE, EPOCHS, LR (values not shown)"),
        "{text}"
    );
    for run in [&shown, &dry, &text] {
        for secret in [&value, &from_file] {
            let out = format!("{}{}", run.stdout, run.stderr);
            assert!(!out.contains(secret.as_str()), "{secret} shown\n{run}");
        }
    }
    assert!(cloud.live_instances().is_empty());
}
