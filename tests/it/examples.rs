//! examples/ runs end to end: its Makefile's on-ec2-% recipe on the test bed, make's exit
//! status kept, a make variable passed on.

use crate::common;

use std::path::Path;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, state_of};

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_example_makefile_runs_recipes_on_ec2_and_keeps_makes_exit_status() {
    let cloud = TestCloud::start();
    let project = Project::new();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        project.path(),
    );
    let make = |target: &str| {
        Run::of(
            project
                .program_for(&cloud, Path::new("make"))
                .arg("--no-print-directory")
                .args(target.split_whitespace()),
        )
    };

    let trained = make("on-ec2-train");
    trained.assert_code(0);
    assert!(trained.stdout.contains("epoch 3/3"), "{trained}");
    let metrics = project.read("results/metrics.json").unwrap_or_default();
    assert!(
        metrics.contains("\"epochs\": 3"),
        "results came home\n{trained}"
    );

    // A make variable reaches the instance's `make train` (as -e EPOCHS, its value in the
    // command's environment).
    let two = make("on-ec2-train EPOCHS=2");
    two.assert_code(0);
    assert!(two.stdout.contains("epoch 2/2"), "{two}");
    let metrics = project.read("results/metrics.json").unwrap_or_default();
    assert!(metrics.contains("\"epochs\": 2"), "{two}");

    let failed = make("on-ec2-no-such-recipe");
    failed.assert_code(2);
    assert!(failed.stderr.contains("No rule to make target"), "{failed}");

    // The recipes leave the instance running for the next call: end it.
    Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--terminate", "--no-rsync", "true"]),
    )
    .assert_code(0);
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated
    );
}
