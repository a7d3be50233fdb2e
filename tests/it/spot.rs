//! Spot instances: `--spot` launches a one-time spot instance, falls back to on-demand (and says
//! so) when there is no spot capacity, unless `--spot-only`; `--stop` with `--spot` is refused;
//! a spot run is priced at the spot price.

use crate::common;

use aws_sdk_ec2::types::{InstanceLifecycleType, InstanceStateName};
use common::{Project, Run, TestCloud, state_of};
use serde_json::{Value, json};

/// The parameters of each RunInstances ssh-ec2 sent, with what became of it.
/// No spot capacity anywhere: every spot RunInstances is answered so.
fn no_spot_capacity() -> Value {
    json!([{
        "action": "RunInstances",
        "params": {"InstanceMarketOptions.MarketType": "spot"},
        "error": "InsufficientInstanceCapacity",
    }])
}

fn assert_nothing_left(cloud: &TestCloud, run: &Run) {
    for instance in cloud.instances() {
        assert_eq!(state_of(&instance), InstanceStateName::Terminated, "{run}");
    }
    assert!(cloud.run_security_groups().is_empty(), "{run}");
    cloud.assert_no_bed_errors();
}

#[test]
fn spot_gives_a_one_time_spot_instance_at_most_at_the_max_price() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let run =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--spot", "--max-price", "0.42", "echo on spot"]),
        );
    run.assert_code(0);
    assert_eq!(run.stdout, "on spot\n", "{run}");
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "{run}");
    assert_eq!(
        instances[0].instance_lifecycle(),
        Some(&InstanceLifecycleType::Spot),
        "{run}"
    );
    let sent = cloud.calls("RunInstances");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let params = &sent[0]["params"];
    assert_eq!(
        params["InstanceMarketOptions.MarketType"], "spot",
        "{params}"
    );
    assert_eq!(
        params["InstanceMarketOptions.SpotOptions.SpotInstanceType"],
        "one-time"
    );
    assert_eq!(params["InstanceMarketOptions.SpotOptions.MaxPrice"], "0.42");
    assert_eq!(
        params["InstanceInitiatedShutdownBehavior"], "terminate",
        "AWS takes nothing else for a one-time spot instance"
    );
    assert!(
        run.stderr
            .contains(", spot: AWS may take it back); it terminates itself at "),
        "one word for how it ends itself\n{run}"
    );
    // moto's spot price is a fixed $0.00001, far below the on-demand $0.658.
    let price_line = format!("g4dn.xlarge in {}: $0.0000/hour (spot in ", cloud.region);
    assert!(run.stderr.contains(&price_line), "{run}");
    assert!(
        summary(&run).contains("instance at $0.0000/hour"),
        "the run is priced at the spot price\n{run}"
    );
    assert_nothing_left(&cloud, &run);
}

/// The last line of a run: its instance, fate and cost.
fn summary(run: &Run) -> &str {
    run.stderr
        .lines()
        .rfind(|l| l.contains(", terminated, "))
        .unwrap_or_else(|| panic!("no summary line\n{run}"))
}

#[test]
fn spot_without_spot_capacity_launches_on_demand_and_says_so() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let mut faults = no_spot_capacity();
    faults.as_array_mut().unwrap().push(json!({
        "action": "DescribeSpotPriceHistory",
        "error": "InternalError",
    }));
    cloud.set_faults(faults);
    let run = Run::of(project.ssh_ec2(&cloud).args(["--spot", "echo anyway"]));
    run.assert_code(0);
    assert_eq!(run.stdout, "anyway\n", "{run}");
    assert!(
        run.stderr
            .contains("$0.6580/hour (spot price unknown: on demand, "),
        "no spot price: the on-demand one, said so\n{run}"
    );
    assert_eq!(
        cloud.outcomes("DescribeSpotPriceHistory"),
        ["error InternalError"],
        "a price is asked for once, never retried"
    );
    assert!(
        summary(&run).contains("instance at $0.6580/hour"),
        "an on-demand instance is priced on demand\n{run}"
    );
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("on-demand instead"))
        .collect();
    assert_eq!(said.len(), 1, "said once, on one line\n{run}");
    assert!(said[0].contains("no spot capacity"), "{run}");
    let instances = cloud.instances();
    assert_eq!(instances.len(), 1, "{run}");
    assert_eq!(instances[0].instance_lifecycle(), None, "on-demand\n{run}");
    let sent = cloud.calls("RunInstances");
    let (last, spot) = sent.split_last().unwrap();
    assert!(
        spot.iter().all(
            |call| call["outcome"] == "error InsufficientInstanceCapacity"
                && call["params"]["InstanceMarketOptions.MarketType"] == "spot"
        ),
        "spot first, in every zone: {sent:?}"
    );
    assert!(!spot.is_empty());
    assert_eq!(
        last["params"]["InstanceMarketOptions.MarketType"],
        Value::Null
    );
    assert_eq!(last["params"]["InstanceInitiatedShutdownBehavior"], "stop");
    assert_nothing_left(&cloud, &run);
}

#[test]
fn spot_only_without_spot_capacity_fails_and_leaves_nothing() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(no_spot_capacity());
    let run = Run::of(project.ssh_ec2(&cloud).args(["--spot-only", "true"]));
    run.assert_code(255);
    assert!(run.stderr.contains("drop --spot-only"), "{run}");
    assert!(!run.stderr.contains("on-demand instead"), "{run}");
    assert!(cloud.instances().is_empty(), "{run}");
    assert!(
        cloud
            .calls("RunInstances")
            .iter()
            .all(|call| call["params"]["InstanceMarketOptions.MarketType"] == "spot"),
        "never on-demand"
    );
    assert!(cloud.key_pair_names().is_empty(), "{run}");
    assert_nothing_left(&cloud, &run);
    assert!(
        project.kept_instance_keys().is_empty(),
        "no launch left in the journal"
    );
}

#[test]
fn stop_with_spot_is_refused_before_any_aws_call() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .env("SSH_EC2_SPOT", "true")
            .args(["--stop", "true"]),
    );
    run.assert_code(255);
    assert!(
        run.stderr
            .contains("AWS cannot stop a one-time spot instance"),
        "{run}"
    );
    assert!(cloud.aws_calls().is_empty(), "{run}");
    let priced = Run::of(project.ssh_ec2(&cloud).args(["--max-price", "0.3", "true"]));
    priced.assert_code(255);
    assert!(priced.stderr.contains("add --spot"), "{priced}");
    assert!(cloud.aws_calls().is_empty(), "{priced}");
}

/// A stand-in for the instance metadata service (IMDSv2) on loopback: a token for a PUT, then
/// `instance_action` (AWS's notice, or 404 with none) for a GET that carries the token.
struct FakeMetadata {
    url: String,
}

impl FakeMetadata {
    fn start(instance_action: Option<&'static str>) -> FakeMetadata {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_string());
                }
                let request = head.first().cloned().unwrap_or_default();
                let has = |header: &str| head.iter().any(|h| h.eq_ignore_ascii_case(header));
                let (status, body) = if request.starts_with("PUT /latest/api/token ")
                    && has("X-aws-ec2-metadata-token-ttl-seconds: 300")
                {
                    ("200 OK", "TOKEN")
                } else if request.starts_with("GET /latest/meta-data/spot/instance-action ") {
                    match (has("X-aws-ec2-metadata-token: TOKEN"), instance_action) {
                        (false, _) => ("401 Unauthorized", ""),
                        (true, Some(notice)) => ("200 OK", notice),
                        (true, None) => ("404 Not Found", ""),
                    }
                } else {
                    ("400 Bad Request", "")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeMetadata { url }
    }
}

/// This directory's job record on the instance (see src/remote/job.rs).
fn job_record(cloud: &TestCloud, project: &Project) -> std::path::PathBuf {
    cloud
        .remote_state_entries(project, "jobs")
        .into_iter()
        .next()
        .expect("this directory's job record")
}

/// Runs the watch script against `metadata`, with `home` as the only home directory.
fn watch(script: &std::path::Path, metadata: &FakeMetadata, home: &std::path::Path) {
    let out = std::process::Command::new("/bin/sh")
        .arg(script)
        .env("SSH_EC2_IMDS_URL", &metadata.url)
        .env("SSH_EC2_WATCHDOG_HOMES", home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_interruption_notice_marks_running_jobs_and_finish_pulls_what_exists_then_fails() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let detach = Run::of(project.ssh_ec2(&cloud).args([
        "--spot",
        "--detach",
        "echo partial > out.txt && sleep 600",
    ]));
    detach.assert_code(0);
    let instance = cloud.instances().remove(0);
    assert_eq!(
        instance.instance_lifecycle(),
        Some(&InstanceLifecycleType::Spot)
    );

    // The watch that the user-data installs, against a fake metadata service and fake jobs.
    let config = common::cloud_config(&cloud.user_data(&common::instance_id(&instance)));
    let start = config["runcmd"][0].to_string();
    assert!(start.contains("ssh-ec2-spot-watch.timer"), "{start}");
    let timer = common::written_file(&config, "/etc/systemd/system/ssh-ec2-spot-watch.timer");
    assert!(timer.contains("OnUnitActiveSec=5s"), "{timer}");
    let bench = tempfile::tempdir().unwrap();
    let script = bench.path().join("ssh-ec2-spot-watch");
    std::fs::write(
        &script,
        common::written_file(&config, "/usr/local/sbin/ssh-ec2-spot-watch"),
    )
    .unwrap();
    let home = bench.path().join("home");
    let running = home.join(".ssh-ec2/jobs/running");
    let ended = home.join(".ssh-ec2/jobs/ended");
    let foreground = home.join(".ssh-ec2/runs/ssh-ec2-x-01234567/0123456789abcdef");
    for record in [&running, &ended, &foreground] {
        std::fs::create_dir_all(record).unwrap();
    }
    std::fs::write(ended.join("exit"), "0\n").unwrap();
    watch(&script, &FakeMetadata::start(None), &home);
    assert!(!running.join("interrupted").exists(), "no notice, no mark");
    assert!(
        !foreground.join("interrupted").exists(),
        "no notice, no mark"
    );
    let notice = r#"{"action": "terminate", "time": "2026-11-22T08:22:00Z"}"#;
    watch(&script, &FakeMetadata::start(Some(notice)), &home);
    for record in [&running, &foreground] {
        assert_eq!(
            std::fs::read_to_string(record.join("interrupted")).unwrap(),
            format!("{notice}\n"),
            "the running job and the foreground run are marked with AWS's notice"
        );
    }
    assert!(!ended.join("interrupted").exists(), "an ended job is not");

    // What the watch does on the instance, to this directory's job: --finish then pulls what
    // exists and says that the job was cut short.
    let record = job_record(&cloud, &project);
    let remote_out = cloud.remote(&project).join("out.txt");
    common::wait_until("the job's out.txt", || remote_out.exists());
    std::fs::write(record.join("interrupted"), format!("{notice}\n")).unwrap();
    let finish = Run::of(project.ssh_ec2(&cloud).args(["--finish", "--no-attach"]));
    finish.assert_code(255);
    assert_eq!(
        project.read("out.txt").as_deref(),
        Some("partial\n"),
        "what the job wrote came home\n{finish}"
    );
    assert!(
        finish.stderr.contains("AWS is taking back spot instance"),
        "{finish}"
    );
    assert!(finish.stderr.contains("was cut short"), "{finish}");
    assert!(!record.exists(), "the record is forgotten once pulled");
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{finish}"
    );
    cloud.assert_no_bed_errors();
}

#[test]
fn an_attached_finish_sees_the_interruption_pulls_what_exists_and_fails() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let pane = common::Pane::shell(&project, &cloud);
    pane.type_line(
        "ssh-ec2 --spot --detach 'echo job-started; echo partial > out.txt; sleep 600'; \
         echo \"detach=$?\"",
    );
    pane.wait_for("detach=0");
    pane.type_line("ssh-ec2 --finish; echo \"finish=$?\"");
    pane.wait_for("job-started");
    // What the spot watch does on AWS's notice (its script is tested above).
    let record = job_record(&cloud, &project);
    std::fs::write(record.join("interrupted"), "{\"action\": \"terminate\"}\n").unwrap();
    let screen = pane.wait_for("finish=255");
    assert!(screen.contains("was cut short"), "{screen}");
    assert_eq!(
        project.read("out.txt").as_deref(),
        Some("partial\n"),
        "{screen}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{screen}"
    );
    cloud.assert_no_bed_errors();
}

#[test]
fn a_foreground_run_on_an_interrupted_spot_instance_ends_the_command_and_pulls_what_exists() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = common::start_until_ready(project.ssh_ec2(&cloud).args([
        "--spot",
        "echo $$ > pid.txt; trap 'echo ended-by-term > term.txt; exit 143' TERM; \
         echo partial > out.txt; echo ready; while :; do sleep 0.1; done",
    ]));
    // What the spot watch does on AWS's notice (its script is tested above), to this run's
    // record: the one that names the command's process.
    let pid = std::fs::read_to_string(cloud.remote(&project).join("pid.txt")).unwrap();
    let record = crate::earlier::run_records(&cloud, &project)
        .into_iter()
        .find(|record| std::fs::read_to_string(record.join("pid")).ok().as_ref() == Some(&pid))
        .expect("the foreground run's record");
    std::fs::write(record.join("interrupted"), "{\"action\": \"terminate\"}\n").unwrap();
    let run = Run::collect(child);

    run.assert_code(255);
    assert!(
        run.stderr.contains("AWS is taking back spot instance"),
        "{run}"
    );
    assert!(run.stderr.contains("was cut short"), "{run}");
    assert_eq!(
        project.read("out.txt").as_deref(),
        Some("partial\n"),
        "what the command wrote came home\n{run}"
    );
    assert_eq!(
        project.read("term.txt").as_deref(),
        Some("ended-by-term\n"),
        "the command was ended before the pull\n{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
    cloud.assert_no_bed_errors();
}
