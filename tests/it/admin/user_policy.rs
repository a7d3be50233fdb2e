//! The user policy of policies/ under moto's IAM enforcement (what a user holding it can do, and
//! that each of its EC2 actions is needed).

use crate::common;

use aws_sdk_ec2::types::InstanceStateName;
use common::{Project, Run, TestCloud, instance_id, state_of};
use serde_json::Value;

use super::{
    USER_POLICY, User, actions, as_moto_checks_it, as_user, assert_refused, create_user, iam_cloud,
    without,
};

/// A role `--setup` makes.
const PROFILE: &str = "--instance-profile=ssh-ec2-s3-read-only";

/// Every action the policy allows, in order, once each.
fn allowed_actions(policy: &Value) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for statement in policy["Statement"].as_array().unwrap() {
        for action in actions(statement) {
            if !all.contains(&action) {
                all.push(action);
            }
        }
    }
    all
}

/// A region of the bed whose default subnets are deleted (`without_default_subnets`).
const BARE_REGION: &str = "ap-southeast-2";

/// Deletes the default subnets of `region`, as an admin may.
fn without_default_subnets(cloud: &TestCloud, region: &str) {
    let ec2 = cloud.ec2_in(region);
    cloud.block_on(async {
        let default = aws_sdk_ec2::types::Filter::builder()
            .name("default-for-az")
            .values("true")
            .build();
        let found = ec2
            .describe_subnets()
            .filters(default)
            .send()
            .await
            .unwrap();
        for subnet in found.subnets() {
            let id = subnet.subnet_id().unwrap();
            ec2.delete_subnet().subnet_id(id).send().await.unwrap();
        }
    });
}

/// One user without one action, and the run (from the state the sequence left) that needs it.
struct Refusal {
    action: &'static str,
    args: &'static [&'static str],
}

impl Refusal {
    /// Runs it as a user holding `policy` without the action; asserts that it fails naming it.
    fn check(&self, cloud: &TestCloud, project: &Project, policy: &Value, n: usize) -> Run {
        // Named by number: the user's ARN is in moto's message, the action must be too.
        let user = create_user(cloud, &format!("user-{n}"), &without(policy, self.action));
        let run = Run::of(as_user(project, cloud, &user).args(self.args));
        assert_refused(&run, self.action);
        run
    }
}

/// The user-policy test's cloud and users, and the actions it showed to be needed.
struct PolicyTest<'a> {
    cloud: &'a TestCloud,
    project: &'a Project,
    /// The user policy, as moto checks it.
    policy: Value,
    /// A user holding all of it.
    full: User,
    checked: Vec<String>,
}

impl PolicyTest<'_> {
    fn run_as_full(&self, args: &[&str]) -> Run {
        Run::of(as_user(self.project, self.cloud, &self.full).args(args))
    }

    /// Runs `refusal` as a user without its action, which it shows to be needed.
    fn check(&mut self, refusal: Refusal) -> Run {
        let run = refusal.check(self.cloud, self.project, &self.policy, self.checked.len());
        self.checked.push(refusal.action.to_string());
        run
    }

    /// The states of the instances not terminated.
    fn live_states(&self) -> Vec<InstanceStateName> {
        self.cloud.live_instances().iter().map(state_of).collect()
    }
}

#[test]
fn the_user_policy_lets_a_user_run_list_and_down_and_each_of_its_ec2_actions_is_needed() {
    let cloud = iam_cloud();
    let project = Project::new();
    let everything = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
    });
    let admin = create_user(&cloud, "admin-of-the-test", &everything);
    Run::of(as_user(&project, &cloud, &admin).arg("--setup")).assert_code(0);
    let policy = as_moto_checks_it(USER_POLICY);
    let full = create_user(&cloud, "user-full", &policy);
    let mut test = PolicyTest {
        cloud: &cloud,
        project: &project,
        policy,
        full,
        checked: Vec::new(),
    };
    setup_is_refused_and_a_dry_run_asks_ec2(&test);
    reusing_a_stopped_instance_needs(&mut test);
    a_launch_needs(&mut test);
    the_end_of_life_needs(&mut test);
    a_spot_run_goes_on_without_the_spot_price(&mut test);
    a_cluster_needs(&mut test);

    // Every EC2 action of the policy was shown to be needed.
    let mut ec2_actions: Vec<String> = allowed_actions(&test.policy)
        .into_iter()
        .filter(|a| a.starts_with("ec2:"))
        .collect();
    ec2_actions.sort();
    test.checked.retain(|a| a.starts_with("ec2:"));
    test.checked.sort();
    assert_eq!(test.checked, ec2_actions);
    cloud.assert_no_bed_errors();
}

/// A user of the policy may not run --setup; --dry-run asks EC2 itself, with its DryRun
/// flag, whether the launch would be allowed.
fn setup_is_refused_and_a_dry_run_asks_ec2(test: &PolicyTest) {
    let not_admin = test.run_as_full(&["--setup", "--dry-run"]);
    assert_refused(&not_admin, "iam:ListPolicies");
    assert!(
        not_admin
            .stderr
            .contains("it needs an AWS admin's credentials"),
        "{not_admin}"
    );
    let allowed = test.run_as_full(&[PROFILE, "--dry-run", "true"]);
    allowed.assert_code(0);
    assert!(allowed.stdout.contains("DryRunOperation"), "{allowed}");
    let cannot_launch = create_user(
        test.cloud,
        "user-dry-run",
        &without(&test.policy, "ec2:RunInstances"),
    );
    let denied =
        Run::of(as_user(test.project, test.cloud, &cannot_launch).args(["--dry-run", "true"]));
    denied.assert_code(1);
    assert!(denied.stdout.contains("ec2:RunInstances"), "{denied}");
    assert!(test.cloud.live_instances().is_empty(), "{denied}");
}

/// What reusing a stopped instance needs: each refusal leaves it stopped; then the run that
/// reuses it, and terminates it.
fn reusing_a_stopped_instance_needs(test: &mut PolicyTest) {
    // A launch (with an instance profile) that stops the instance.
    let stop = test.run_as_full(&[PROFILE, "--stop", "echo", "one"]);
    stop.assert_code(0);
    assert_eq!(stop.stdout, "one\n", "{stop}");
    let instances = test.cloud.live_instances();
    assert_eq!(instances.len(), 1, "{stop}");
    assert_eq!(
        state_of(&instances[0]),
        InstanceStateName::Stopped,
        "{stop}"
    );
    let id = instance_id(&instances[0]);

    // Reusing it needs these; each refusal leaves it stopped. This machine forgets which
    // address it let in, so that the group is read and opened again (a run that knows it
    // changes nothing there).
    let ingress = (test.project.home().join(".local/state/ssh-ec2/instances"))
        .join(&id)
        .join("ingress");
    for (action, args) in [
        ("ec2:StartInstances", &["true"][..]),
        ("ec2:DescribeSecurityGroups", &["true"]),
        ("ec2:AuthorizeSecurityGroupIngress", &["true"]),
        // Another address than the launch's: the old one's rule goes.
        (
            "ec2:RevokeSecurityGroupIngress",
            &["--ssh-cidr=10.1.2.3/32", "true"],
        ),
        // Each run keeps the ssh-ec2:expires-at tag in step with its --max-lifetime.
        ("ec2:CreateTags", &["--max-lifetime=2d", "true"]),
        ("ec2:DeleteTags", &["--max-lifetime=off", "true"]),
    ] {
        let _ = std::fs::remove_file(&ingress);
        test.check(Refusal { action, args });
    }
    assert_eq!(test.live_states(), [InstanceStateName::Stopped]);

    // The run that reuses the stopped instance, and terminates it.
    let reuse = test.run_as_full(&["echo", "two"]);
    reuse.assert_code(0);
    assert_eq!(reuse.stdout, "two\n", "{reuse}");
    assert!(reuse.stderr.contains(&format!("reusing {id}")), "{reuse}");
    assert!(test.cloud.live_instances().is_empty(), "{reuse}");
    assert!(test.cloud.run_security_groups().is_empty(), "{reuse}");
}

/// A launch needs these: each refusal leaves nothing behind. What AWS said of the type is
/// forgotten each time, so that it is asked.
fn a_launch_needs(test: &mut PolicyTest) {
    let known = test.project.home().join(".local/state/ssh-ec2/known.json");
    for (action, args) in [
        ("ec2:DescribeInstances", &["true"][..]),
        ("ec2:DescribeImages", &["true"]),
        ("ec2:DescribeInstanceTypes", &["true"]),
        ("ec2:DescribeSubnets", &["true"]),
        ("ec2:CreateSecurityGroup", &["true"]),
        ("ec2:RunInstances", &["true"]),
        ("iam:GetInstanceProfile", &[PROFILE, "true"]),
    ] {
        let _ = std::fs::remove_file(&known);
        let run = test.check(Refusal { action, args });
        assert!(test.cloud.live_instances().is_empty(), "{run}");
        assert!(test.cloud.run_security_groups().is_empty(), "{run}");
    }
    // The default VPC is asked for only in a region without default subnets to name it.
    without_default_subnets(test.cloud, BARE_REGION);
    test.check(Refusal {
        action: "ec2:DescribeVpcs",
        args: &["--region", BARE_REGION, "true"],
    });
}

/// What the end of life needs: refused, it leaves the instance running, which the user sees
/// with --list and ends with --down.
fn the_end_of_life_needs(test: &mut PolicyTest) {
    let run = test.check(Refusal {
        action: "ec2:DeleteSecurityGroup",
        args: &["true"],
    });
    assert!(
        test.cloud.live_instances().is_empty(),
        "terminated all the same\n{run}"
    );
    let left = test.cloud.run_security_groups();
    assert_eq!(left.len(), 1, "{run}");
    test.cloud
        .block_on(
            test.cloud
                .ec2()
                .delete_security_group()
                .group_id(left[0].group_id().unwrap())
                .send(),
        )
        .unwrap();
    test.check(Refusal {
        action: "ec2:TerminateInstances",
        args: &["true"],
    });
    test.check(Refusal {
        action: "ec2:StopInstances",
        args: &["--stop", "true"],
    });
    assert_eq!(
        test.live_states(),
        [InstanceStateName::Running],
        "refused, the end of life left it running"
    );
    // The user sees it with --list (in every region too), and ends it with --down.
    let list = test.run_as_full(&["--list", "--json"]);
    list.assert_code(0);
    let running = instance_id(&test.cloud.live_instances()[0]);
    assert!(list.stdout.contains(&running), "{list}");
    let everywhere = test.run_as_full(&["--list", "--json", "--all-regions"]);
    everywhere.assert_code(0);
    assert!(everywhere.stdout.contains(&running), "{everywhere}");
    test.check(Refusal {
        action: "ec2:DescribeRegions",
        args: &["--list", "--all-regions"],
    });
    test.run_as_full(&["--down"]).assert_code(0);
    assert!(test.cloud.live_instances().is_empty());
    assert!(test.cloud.run_security_groups().is_empty());
}

/// Prices are only shown: without the spot price a spot run is priced on demand, says so,
/// and goes on.
fn a_spot_run_goes_on_without_the_spot_price(test: &mut PolicyTest) {
    let spot_dry_run = |user: &User| {
        Run::of(as_user(test.project, test.cloud, user).args(["--dry-run", "--spot", "true"]))
    };
    let priced = spot_dry_run(&test.full);
    priced.assert_code(0);
    assert!(priced.stdout.contains("/hour (spot in "), "{priced}");
    let action = "ec2:DescribeSpotPriceHistory";
    let blind = create_user(
        test.cloud,
        "user-no-spot-price",
        &without(&test.policy, action),
    );
    // The spot price just shown is kept for an hour: forgotten, to be asked.
    let known = test.project.home().join(".local/state/ssh-ec2/known.json");
    std::fs::remove_file(&known).unwrap();
    let unpriced = spot_dry_run(&blind);
    unpriced.assert_code(0);
    assert!(
        unpriced
            .stdout
            .contains("/hour (spot price unknown: on demand"),
        "{unpriced}"
    );
    test.checked.push(action.to_string());
}

/// A cluster (`--nodes 2`) puts its head in the run's SSH group: refused, nothing is left.
/// Its placement groups are answered by the bed's proxy, which moto's IAM never sees: their
/// statements' conditions are checked in policies.rs.
fn a_cluster_needs(test: &mut PolicyTest) {
    let run = test.check(Refusal {
        action: "ec2:ModifyInstanceAttribute",
        args: &["--nodes", "2", "true"],
    });
    assert!(test.cloud.live_instances().is_empty(), "{run}");
    test.checked.extend(
        [
            "ec2:CreatePlacementGroup",
            "ec2:DeletePlacementGroup",
            "ec2:DescribePlacementGroups",
        ]
        .map(String::from),
    );
}
