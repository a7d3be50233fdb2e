//! No AWS request hangs, and every wait can be left: an answer that stalls (the proxy holds it)
//! is given up and asked again like a throttled one, Ctrl-C ends the wait that settles an
//! earlier launch at once, and a second Ctrl-C during a launch stops waiting and ends what the
//! launch made.

use crate::common;
use crate::watched::Watched;

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceStateName;
use common::{
    Project, Run, TestCloud, assert_nothing_left, signal, start_until_held, wait_or_kill,
    wait_until,
};
use nix::sys::signal::Signal::SIGINT;
use serde_json::json;

/// Far less than a run that waits out its AWS retries would take, far more than one that is
/// ended at once takes on a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(5);

#[test]
fn a_stalled_answer_is_asked_again_and_the_run_goes_on() {
    let cloud = TestCloud::start();
    let project = Project::new();
    cloud.set_faults(json!([{"action": "DescribeInstances", "hold": true, "times": 1}]));

    let run = Watched::start(project.ssh_ec2(&cloud).arg("echo through"));
    let run = run.collect(Duration::from_secs(90));
    run.assert_code(0);
    assert_eq!(run.stdout, "through\n", "{run}");
    let lookups = cloud.outcomes("DescribeInstances");
    assert_eq!(lookups[0], "held (forwarded 200)", "{lookups:?}");
    assert_eq!(lookups[1], "forwarded 200", "asked again: {lookups:?}");
    cloud.set_faults(json!([]));
    assert_nothing_left(&cloud, &project, &run);
    cloud.assert_no_bed_errors();
}

#[test]
fn ctrl_c_ends_the_wait_that_settles_an_earlier_launch_at_once() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // A run killed while its launch's answer was held: the launch is in the journal.
    cloud.set_faults(json!([{"action": "RunInstances", "hold": true}]));
    let mut killed = start_until_held(&cloud, project.ssh_ec2(&cloud).arg("true"), "RunInstances");
    killed.kill().unwrap();
    wait_or_kill(killed, Duration::from_secs(10)).expect("SIGKILL ends it");

    // The next run settles it first, and AWS does not answer.
    cloud.set_faults(json!([{"action": "DescribeInstances", "hold": true}]));
    let next = start_until_held(
        &cloud,
        project.ssh_ec2(&cloud).arg("true"),
        "DescribeInstances",
    );
    let asked = Instant::now();
    signal(&next, SIGINT);
    let next = Run::collect(next);
    let took = asked.elapsed();
    next.assert_code(130);
    assert!(took < AT_ONCE, "ended after {took:?}\n{next}");
    cloud.set_faults(json!([]));
    assert_eq!(
        cloud.outcomes("RunInstances"),
        ["held (forwarded 200)"],
        "it launched nothing\n{next}"
    );
    assert_eq!(cloud.run_security_groups().len(), 1, "made nothing\n{next}");

    // What the killed run launched is still in the journal: the next one ends it.
    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_nothing_left(&cloud, &project, &down);
    cloud.assert_no_bed_errors();
}

#[test]
fn a_second_ctrl_c_during_a_launch_stops_waiting_and_ends_what_it_made() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // The instance is launched, but the answer never comes.
    cloud.set_faults(json!([{"action": "RunInstances", "hold": true}]));
    let run = Watched::start(project.ssh_ec2(&cloud).arg("true"));
    wait_until("RunInstances to be held", || {
        cloud
            .outcomes("RunInstances")
            .iter()
            .any(|o| o.starts_with("held"))
    });
    run.signal(SIGINT);
    run.wait_for("again to stop waiting and end it now");
    assert_eq!(cloud.live_instances().len(), 1, "the launch goes on");
    run.signal(SIGINT);
    let run = run.collect(Duration::from_secs(30));
    run.assert_code(130);
    assert!(run.stderr.contains("terminated i-"), "{run}");
    assert_eq!(cloud.instances().len(), 1, "{run}");
    assert_eq!(
        common::state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated
    );
    cloud.set_faults(json!([]));
    assert_nothing_left(&cloud, &project, &run);
    cloud.assert_no_bed_errors();
}
