//! For the admin: `--setup` (a dry run changes nothing, a second run changes nothing, drift is
//! repaired), the user policy of policies/ under moto's IAM enforcement (what a user holding it
//! can do, and that each of its EC2 actions is needed), and `--security-group` for accounts
//! whose users may not create security groups.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;

use aws_sdk_ec2::types::{InstanceStateName, IpPermission, IpRange};
use common::{CloudOptions, Project, Run, TestCloud, instance_id, state_of};
use serde_json::Value;

const USER_POLICY: &str = include_str!("../../policies/ssh-ec2-user.json");
/// A role `--setup` makes.
const PROFILE: &str = "--instance-profile=ssh-ec2-s3-read-only";

/// An IAM user's access key.
struct User {
    key_id: String,
    secret: String,
}

fn iam_cloud() -> TestCloud {
    TestCloud::start_with(CloudOptions {
        iam: true,
        ..Default::default()
    })
}

/// The user policy as moto can check it. moto authorizes the action only: it checks an EC2
/// request against the resource `*`, so a statement limited to ARNs never matches it, and it
/// ignores the tag conditions. Each statement's resources are widened to `*` (conditions are
/// kept; moto does not evaluate them): what is proven is the list of actions, not the resource
/// and tag limits (policies/README.md says so).
fn as_moto_checks_it(policy: &str) -> Value {
    let mut policy: Value = serde_json::from_str(policy).unwrap();
    for statement in policy["Statement"].as_array_mut().unwrap() {
        statement["Resource"] = Value::from("*");
    }
    policy
}

fn actions(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(action) => vec![action.clone()],
        Value::Array(actions) => actions
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect(),
        other => panic!("unexpected Action {other}"),
    }
}

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

/// The policy without `action`, in every statement (a statement left with none goes).
fn without(policy: &Value, action: &str) -> Value {
    let mut policy = policy.clone();
    let statements = policy["Statement"].as_array_mut().unwrap();
    for statement in statements.iter_mut() {
        let left: Vec<String> = actions(statement)
            .into_iter()
            .filter(|a| a != action)
            .collect();
        statement["Action"] = Value::from(left);
    }
    statements.retain(|s| !s["Action"].as_array().unwrap().is_empty());
    policy
}

/// A new IAM user holding only `policy` (inline), with an access key.
fn create_user(cloud: &TestCloud, name: &str, policy: &Value) -> User {
    let iam = cloud.iam();
    cloud.block_on(async {
        iam.create_user().user_name(name).send().await.unwrap();
        iam.put_user_policy()
            .user_name(name)
            .policy_name("ssh-ec2")
            .policy_document(policy.to_string())
            .send()
            .await
            .unwrap();
        let key = iam
            .create_access_key()
            .user_name(name)
            .send()
            .await
            .unwrap();
        let key = key.access_key().unwrap();
        User {
            key_id: key.access_key_id().to_string(),
            secret: key.secret_access_key().to_string(),
        }
    })
}

/// ssh-ec2 in `project` as `user`.
fn as_user(project: &Project, cloud: &TestCloud, user: &User) -> Command {
    let mut command = project.ssh_ec2(cloud);
    command
        .env("AWS_ACCESS_KEY_ID", &user.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &user.secret);
    command
}

/// Asserts that `run` failed and that its error names `action`.
fn assert_refused(run: &Run, action: &str) {
    assert_eq!(
        run.code,
        Some(255),
        "expected a failure naming {action}\n{run}"
    );
    assert!(
        run.stderr.contains(action),
        "the error does not name {action}\n{run}"
    );
}

/// What `--setup` manages, as text: the account's own policies (default document and number
/// of versions), groups and their policies, roles (trust and inline policies), and instance
/// profiles with their roles.
fn iam_state(cloud: &TestCloud) -> String {
    let iam = cloud.iam();
    cloud.block_on(async {
        let mut state = BTreeMap::new();
        policies_state(&iam, &mut state).await;
        for group in iam.list_groups().send().await.unwrap().groups() {
            let name = group.group_name();
            let attached = iam
                .list_attached_group_policies()
                .group_name(name)
                .send()
                .await
                .unwrap();
            let arns: Vec<_> = attached
                .attached_policies()
                .iter()
                .map(|p| p.policy_arn())
                .collect();
            state.insert(format!("group {name}"), format!("{arns:?}"));
        }
        roles_state(&iam, &mut state).await;
        let profiles = iam.list_instance_profiles().send().await.unwrap();
        for profile in profiles.instance_profiles() {
            let roles: Vec<_> = profile.roles().iter().map(|r| r.role_name()).collect();
            state.insert(
                format!("profile {}", profile.instance_profile_name()),
                format!("{roles:?}"),
            );
        }
        state
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

/// A policy document as IAM hands it back (URL-encoded), as JSON (or the text, if not JSON).
fn decode(doc: &str) -> Value {
    let text = percent_encoding::percent_decode_str(doc)
        .decode_utf8_lossy()
        .into_owned();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The account's own policies: their versions and default document.
async fn policies_state(iam: &aws_sdk_iam::Client, state: &mut BTreeMap<String, String>) {
    let policies = iam
        .list_policies()
        .scope(aws_sdk_iam::types::PolicyScopeType::Local)
        .send()
        .await
        .unwrap();
    for policy in policies.policies() {
        let arn = policy.arn().unwrap();
        let versions = iam
            .list_policy_versions()
            .policy_arn(arn)
            .send()
            .await
            .unwrap();
        let default = versions
            .versions()
            .iter()
            .find(|v| v.is_default_version())
            .unwrap();
        let document = iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(default.version_id().unwrap())
            .send()
            .await
            .unwrap();
        let ids: Vec<_> = versions.versions().iter().map(|v| v.version_id()).collect();
        state.insert(
            format!("policy {arn}"),
            format!(
                "versions {ids:?}, default {:?}: {}",
                default.version_id(),
                decode(document.policy_version().unwrap().document().unwrap())
            ),
        );
    }
}

/// The roles: their trust and inline policies.
async fn roles_state(iam: &aws_sdk_iam::Client, state: &mut BTreeMap<String, String>) {
    for role in iam.list_roles().send().await.unwrap().roles() {
        let name = role.role_name();
        let full = iam.get_role().role_name(name).send().await.unwrap();
        let trust = decode(full.role().unwrap().assume_role_policy_document().unwrap());
        let mut inline = Vec::new();
        let names = iam
            .list_role_policies()
            .role_name(name)
            .send()
            .await
            .unwrap();
        for policy in names.policy_names() {
            let found = iam
                .get_role_policy()
                .role_name(name)
                .policy_name(policy)
                .send()
                .await
                .unwrap();
            inline.push(format!("{policy}: {}", decode(found.policy_document())));
        }
        state.insert(format!("role {name}"), format!("trust {trust}; {inline:?}"));
    }
}

/// The lines of a `--setup` output that report a change (or a would-be change).
fn changes(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.contains(": ") && !l.ends_with(": unchanged"))
        .filter(|l| !l.starts_with("dry run") && !l.starts_with("Users of"))
        .map(str::to_string)
        .collect()
}

#[test]
fn setup_dry_run_changes_nothing_a_second_setup_changes_nothing_and_drift_is_repaired() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let empty = iam_state(&cloud);

    let dry = Run::of(project.ssh_ec2(&cloud).args(["--setup", "--dry-run"]));
    dry.assert_code(0);
    assert_eq!(iam_state(&cloud), empty, "a dry run changed IAM\n{dry}");
    let expected = [
        "policy SshEc2Access",
        "group SshEc2",
        "policy SshEc2Access attached to group SshEc2",
        "role ssh-ec2-s3-read-only (trusted by EC2)",
        "policy s3-read-only of role ssh-ec2-s3-read-only",
        "instance profile ssh-ec2-s3-read-only (holding role ssh-ec2-s3-read-only)",
        "role ssh-ec2-s3-read-write (trusted by EC2)",
        "policy s3-read-write of role ssh-ec2-s3-read-write",
        "instance profile ssh-ec2-s3-read-write (holding role ssh-ec2-s3-read-write)",
    ];
    let would: Vec<String> = expected
        .iter()
        .map(|what| format!("{what}: would create"))
        .collect();
    assert_eq!(changes(&dry), would, "{dry}");

    let first = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    first.assert_code(0);
    assert_eq!(changes(&first).len(), expected.len(), "{first}");
    assert!(
        changes(&first).iter().all(|l| l.ends_with(": created")),
        "{first}"
    );
    let set_up = iam_state(&cloud);
    assert!(
        set_up.contains("profile ssh-ec2-s3-read-write = [\"ssh-ec2-s3-read-write\"]"),
        "{set_up}"
    );
    let user_policy: Value = serde_json::from_str(USER_POLICY).unwrap();
    assert!(
        set_up.contains(&format!("default Some(\"v1\"): {user_policy}")),
        "the policy is the file's\n{set_up}"
    );

    let second = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    second.assert_code(0);
    assert_eq!(changes(&second), Vec::<String>::new(), "{second}");
    assert_eq!(iam_state(&cloud), set_up, "a second --setup changed IAM");

    drift(&cloud);
    let drifted = iam_state(&cloud);
    let dry = Run::of(project.ssh_ec2(&cloud).args(["--setup", "--dry-run"]));
    dry.assert_code(0);
    assert_eq!(iam_state(&cloud), drifted, "a dry run changed IAM\n{dry}");
    let repairs = [
        "policy SshEc2Access (arn:aws:iam::123456789012:policy/SshEc2Access): would update",
        "role ssh-ec2-s3-read-only (trusted by EC2): would update",
        "policy s3-read-write of role ssh-ec2-s3-read-write: would create",
        "instance profile ssh-ec2-s3-read-write (holding role ssh-ec2-s3-read-write): would update",
    ];
    assert_eq!(changes(&dry), repairs, "{dry}");

    let repair = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    repair.assert_code(0);
    assert_eq!(changes(&repair), done(&repairs), "{repair}");
    let repaired = iam_state(&cloud);
    // Five versions still: the oldest (v1) made room for v6, the file's again.
    assert!(
        repaired.contains(&format!(
            "versions [Some(\"v2\"), Some(\"v3\"), Some(\"v4\"), Some(\"v5\"), Some(\"v6\")], \
             default Some(\"v6\"): {user_policy}"
        )),
        "{repaired}"
    );
    assert_eq!(
        without_policies(&repaired),
        without_policies(&set_up),
        "roles, profiles and group are as --setup made them"
    );
    let again = Run::of(project.ssh_ec2(&cloud).arg("--setup"));
    assert_eq!(changes(&again), Vec::<String>::new(), "{again}");
    assert_eq!(iam_state(&cloud), repaired);
}

/// What someone does behind --setup's back: edits the policy four times (IAM keeps five
/// versions at most), the trust of a role, and removes the other role's permissions and
/// profile's role.
fn drift(cloud: &TestCloud) {
    let iam = cloud.iam();
    cloud.block_on(async {
        let arn = "arn:aws:iam::123456789012:policy/SshEc2Access";
        for n in 0..4 {
            let edited = format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"ec2:DescribeRegions","Resource":"*","Sid":"Edit{n}"}}]}}"#
            );
            iam.create_policy_version()
                .policy_arn(arn)
                .policy_document(edited)
                .set_as_default(true)
                .send()
                .await
                .unwrap();
        }
        iam.update_assume_role_policy()
            .role_name("ssh-ec2-s3-read-only")
            .policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
            )
            .send()
            .await
            .unwrap();
        iam.delete_role_policy()
            .role_name("ssh-ec2-s3-read-write")
            .policy_name("s3-read-write")
            .send()
            .await
            .unwrap();
        iam.remove_role_from_instance_profile()
            .instance_profile_name("ssh-ec2-s3-read-write")
            .role_name("ssh-ec2-s3-read-write")
            .send()
            .await
            .unwrap();
    });
}

/// The lines --setup prints having made `would` (its dry run's lines) happen.
fn done(would: &[&str]) -> Vec<String> {
    (would.iter())
        .map(|l| {
            l.replace("would ", "")
                .replace(": update", ": updated")
                .replace(": create", ": created")
        })
        .collect()
}

/// An `iam_state` without its policies (and their versions).
fn without_policies(state: &str) -> String {
    state
        .lines()
        .filter(|l| !l.starts_with("policy "))
        .collect::<Vec<_>>()
        .join("\n")
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
    assert_eq!(
        test.cloud
            .live_instances()
            .iter()
            .map(state_of)
            .collect::<Vec<_>>(),
        [InstanceStateName::Stopped]
    );

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
        test.cloud
            .live_instances()
            .iter()
            .map(state_of)
            .collect::<Vec<_>>(),
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

/// The admin's group: its id, and its rules as text (to see that they never change).
fn admin_group(cloud: &TestCloud, name: &str) -> Option<(String, String)> {
    let found = cloud
        .block_on(
            cloud
                .ec2()
                .describe_security_groups()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("group-name")
                        .values(name)
                        .build(),
                )
                .send(),
        )
        .unwrap();
    let group = found.security_groups().first()?;
    Some((
        group.group_id().unwrap().to_string(),
        format!("{:?}", group.ip_permissions()),
    ))
}

#[test]
fn an_admin_made_security_group_is_used_as_it_is_and_outlives_the_instance() {
    let cloud = iam_cloud();
    let project = Project::new();
    let group_id = make_admin_group(&cloud, "team-ssh");
    let (_, rules) = admin_group(&cloud, "team-ssh").unwrap();
    let user = create_user(&cloud, "locked-down", &locked_down_policy());
    let run_as_user = |args: &[&str]| Run::of(as_user(&project, &cloud, &user).args(args));

    let own_group = run_as_user(&["true"]);
    assert_refused(&own_group, "ec2:CreateSecurityGroup");

    // By name, from the environment (the original's AWS_SECURITY_GROUP); stopped.
    let stop = Run::of(
        as_user(&project, &cloud, &user)
            .env("AWS_SECURITY_GROUP", "team-ssh")
            .args(["--stop", "echo", "one"]),
    );
    stop.assert_code(0);
    assert_eq!(stop.stdout, "one\n", "{stop}");
    let instances = cloud.live_instances();
    assert_eq!(instances.len(), 1, "{stop}");
    let groups: Vec<_> = instances[0]
        .security_groups()
        .iter()
        .map(|g| g.group_id().unwrap())
        .collect();
    assert_eq!(groups, [group_id.as_str()], "{stop}");
    assert!(
        !instances[0]
            .tags()
            .iter()
            .any(|t| t.key() == Some("ssh-ec2:security-group")),
        "the group is not the instance's own: {:?}",
        instances[0].tags()
    );

    // Reused (nothing to say about the group), then terminated: the group stays as it was.
    let reuse = run_as_user(&["echo", "two"]);
    reuse.assert_code(0);
    assert_eq!(reuse.stdout, "two\n", "{reuse}");
    assert!(cloud.live_instances().is_empty(), "{reuse}");
    assert_eq!(
        admin_group(&cloud, "team-ssh"),
        Some((group_id.clone(), rules.clone())),
        "the admin's group survives unchanged\n{reuse}"
    );

    // By id, with the flag; terminated at once.
    let by_id = run_as_user(&["--security-group", &group_id, "echo", "three"]);
    by_id.assert_code(0);
    assert_eq!(by_id.stdout, "three\n", "{by_id}");
    assert!(cloud.live_instances().is_empty(), "{by_id}");
    assert_eq!(
        admin_group(&cloud, "team-ssh"),
        Some((group_id.clone(), rules.clone())),
        "{by_id}"
    );

    dry_run_shows_the_admin_group(&cloud, &project, &user, &group_id);

    let unknown = run_as_user(&["--security-group", "no-such-group", "true"]);
    assert_eq!(unknown.code, Some(255), "{unknown}");
    assert!(
        unknown
            .stderr
            .contains("there is no security group no-such-group in"),
        "{unknown}"
    );
    assert_eq!(cloud.instances().len(), 2, "nothing launched\n{unknown}");
    assert_eq!(cloud.run_security_groups().len(), 1, "only the admin's");
    cloud.assert_no_bed_errors();
}

/// Makes, as an admin would, a security group `name` in the default VPC that opens tcp/22 to
/// 172.31.0.0/16; returns its id.
fn make_admin_group(cloud: &TestCloud, name: &str) -> String {
    let ec2 = cloud.ec2();
    let vpc = cloud.block_on(async {
        let vpcs = ec2
            .describe_vpcs()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("is-default")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        vpcs.vpcs()[0].vpc_id().unwrap().to_string()
    });
    cloud.block_on(async {
        let created = ec2
            .create_security_group()
            .group_name(name)
            .description("SSH from the office")
            .vpc_id(&vpc)
            .send()
            .await
            .unwrap();
        let id = created.group_id().unwrap().to_string();
        ec2.authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(22)
                    .to_port(22)
                    .ip_ranges(IpRange::builder().cidr_ip("172.31.0.0/16").build())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        id
    })
}

/// A locked-down account's user policy: users may not make, open or delete security groups.
fn locked_down_policy() -> Value {
    let mut policy = as_moto_checks_it(USER_POLICY);
    for action in [
        "ec2:CreateSecurityGroup",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:DeleteSecurityGroup",
    ] {
        policy = without(&policy, action);
    }
    policy
}

/// A dry run shows the admin's group a launch would use, and asks no checkip (a run does
/// not); an unknown group is refused.
fn dry_run_shows_the_admin_group(
    cloud: &TestCloud,
    project: &Project,
    user: &User,
    group_id: &str,
) {
    let checkip = common::Tripwire::on(&cloud.laptop);
    let dry_run = Run::of(
        as_user(project, cloud, user)
            .env("SSH_EC2_CHECKIP_URL", checkip.url())
            .args(["--security-group", "team-ssh", "--dry-run", "true"]),
    );
    dry_run.assert_code(0);
    assert!(
        dry_run
            .stdout
            .contains(&format!("{group_id} (admin-made, used as it is)")),
        "{dry_run}"
    );
    assert!(
        dry_run.stdout.contains("its security group's own rules"),
        "{dry_run}"
    );
    assert!(!checkip.was_called(), "{dry_run}");
    let unknown_dry_run = Run::of(as_user(project, cloud, user).args([
        "--security-group",
        "no-such-group",
        "--dry-run",
        "true",
    ]));
    assert_eq!(unknown_dry_run.code, Some(255), "{unknown_dry_run}");
    assert!(
        unknown_dry_run
            .stderr
            .contains("there is no security group no-such-group in"),
        "{unknown_dry_run}"
    );
}
