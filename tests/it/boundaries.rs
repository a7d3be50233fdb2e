//! What crosses ssh-ec2's boundaries: the SSH port opened wider than one site only with a
//! warning that says to whom; values that end up in the user's OpenSSH config or on a remote
//! command line (login user, host, tags, directories) kept from breaking out of their line;
//! `--install` keeping a linked `~/.ssh/config` a link; and where the host key from the
//! user-data cannot be replaced (no sudo), a run that goes on and says so once. (The key's
//! replacement itself is in host_keys.rs.)

use crate::cli::refused;
use crate::common;

use std::process::Command;

use common::{CloudOptions, Project, Run, TestCloud, assert_nothing_left};

const WIDE: &str = "opens the instance's SSH port (tcp/22) to";

#[test]
fn a_wide_ssh_cidr_opens_the_port_only_with_a_warning_saying_to_whom() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let wide =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--leave", "--ssh-cidr", "0.0.0.0/0", "true"]),
        );
    wide.assert_code(0);
    assert_eq!(
        wide.stderr.matches(WIDE).count(),
        1,
        "said once, when the rule is written\n{wide}"
    );
    assert!(
        wide.stderr.contains("every IPv4 address on the internet"),
        "{wide}"
    );
    let groups = cloud.run_security_groups();
    let opened: Vec<_> = (groups.iter())
        .flat_map(|g| g.ip_permissions())
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip())
        .collect();
    assert_eq!(opened, ["0.0.0.0/0"], "accepted as given\n{wide}");

    // A /24 is one site: no warning, and the rule follows the run. The laptop's own /24: one
    // that shut it out would race the swap of the rules against the connection.
    let (site, _) = cloud.laptop.address.rsplit_once('.').unwrap();
    let narrow =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--ssh-cidr", &format!("{site}.0/24"), "true"]),
        );
    narrow.assert_code(0);
    assert!(!narrow.stderr.contains(WIDE), "{narrow}");
    assert_nothing_left(&cloud, &project, &narrow);
}

#[test]
fn a_value_that_would_break_out_of_its_line_is_refused_naming_its_setting() {
    let project = Project::new();
    let flag = |args: &'static [&'static str]| {
        move |command: &mut Command| {
            command.args(args).arg("true");
        }
    };
    let variable = |name: &'static str, value: &'static str| {
        move |command: &mut Command| {
            command.env(name, value).arg("true");
        }
    };
    refused(
        &project,
        flag(&["--user", "ubuntu\nProxyCommand touch pwned"]),
        &["--user"],
    );
    refused(
        &project,
        variable("AWS_INSTANCE_USER", "ubuntu -oProxyCommand=x"),
        &["AWS_INSTANCE_USER"],
    );
    refused(
        &project,
        flag(&["--connect", "evil host:22"]),
        &["--connect"],
    );
    refused(
        &project,
        variable("SSH_EC2_CONNECT", "127.0.0.1\n:22"),
        &["SSH_EC2_CONNECT"],
    );
    refused(&project, flag(&["--tag", "team=a\nb"]), &["--tag"]);
    refused(
        &project,
        flag(&["--remote-dir", "~/x\ry"]),
        &["remote directory"],
    );
    // Said escaped: the refusal itself must not drive the terminal.
    let run = refused(
        &project,
        variable("SSH_EC2_TAGS", "team=\u{1b}]0;owned\u{7}"),
        &["SSH_EC2_TAGS", "control characters"],
    );
    assert!(!run.stderr.contains(['\u{1b}', '\u{7}']), "{run}");
    // A config file names its key.
    project.write(".ssh-ec2.toml", "user = \"a\\tb\"\n");
    refused(
        &project,
        |command: &mut Command| {
            command.arg("true");
        },
        &["user", ".ssh-ec2.toml"],
    );
}

#[test]
fn an_installed_entry_stays_one_host_s_and_a_linked_ssh_config_stays_a_link() {
    let cloud = TestCloud::start();
    // The remote directory goes inside this project's, which its drop removes.
    let holder = Project::new();
    let name = format!(
        "sshec2-nl-{}\nProxyCommand touch pwned #",
        std::process::id()
    );
    let project = Project::named(&name);
    let remote_dir = format!(
        "~/{}/odd",
        holder.path().file_name().unwrap().to_str().unwrap()
    );
    let ssh_ec2 = || {
        let mut command = project.ssh_ec2(&cloud);
        command.args(["--remote-dir", &remote_dir]);
        command
    };
    Run::of(ssh_ec2().args(["--leave", "true"])).assert_code(0);

    // ~/.ssh/config is a dotfiles repository's file, linked in.
    let dotfiles = project.home().join("dotfiles");
    std::fs::create_dir_all(&dotfiles).unwrap();
    std::fs::write(
        dotfiles.join("ssh_config"),
        "Host elsewhere\n    User nobody\n",
    )
    .unwrap();
    let ssh_dir = project.home().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let config = ssh_dir.join("config");
    std::os::unix::fs::symlink("../dotfiles/ssh_config", &config).unwrap();

    let install = Run::of(ssh_ec2().args(["--ssh-config", "--install"]));
    install.assert_code(0);
    assert!(
        std::fs::symlink_metadata(&config).unwrap().is_symlink(),
        "~/.ssh/config is still a link\n{install}"
    );
    let linked = std::fs::read_to_string(dotfiles.join("ssh_config")).unwrap();
    assert!(linked.starts_with("# Added by ssh-ec2"), "{linked}");
    assert!(linked.contains("Include "), "{linked}");
    assert!(
        linked.ends_with("Host elsewhere\n    User nobody\n"),
        "{linked}"
    );

    let id = common::instance_id(&cloud.instances()[0]);
    let entry = std::fs::read_to_string(ssh_dir.join("ssh-ec2").join(format!("{id}.conf")));
    let entry = entry.unwrap();
    let directives: Vec<&str> = (entry.lines())
        .map(str::trim_start)
        .filter(|line| !line.starts_with('#'))
        .collect();
    assert!(
        !directives
            .iter()
            .any(|line| line.starts_with("ProxyCommand")),
        "the directory's newline started a directive:\n{entry}"
    );
    assert!(
        entry.starts_with(&format!("# ssh-ec2: instance {id} of ")),
        "{entry}"
    );
    assert!(
        entry.contains("\\nProxyCommand touch pwned #"),
        "escaped:\n{entry}"
    );

    let end = Run::of(ssh_ec2().arg("true"));
    end.assert_code(0);
    assert_nothing_left(&cloud, &project, &end);
    assert!(
        std::fs::symlink_metadata(&config).unwrap().is_symlink(),
        "{end}"
    );
}

/// What a run says where the login user has no sudo.
const STAYS_LIVE: &str = "may not use sudo without a password, so the host key its user-data \
                          carried stays in use";

#[test]
fn without_sudo_a_run_goes_on_and_says_once_that_the_user_data_s_host_key_stays_live() {
    let cloud = TestCloud::start_with(CloudOptions {
        no_sudo: true,
        ..Default::default()
    });
    let project = Project::new();
    project.write("in.txt", "up\n");
    let first = Run::of(project.ssh_ec2(&cloud).args(["--leave", "cat in.txt"]));
    first.assert_code(0);
    assert_eq!(first.stdout, "up\n", "the run went on\n{first}");
    assert_eq!(first.stderr.matches(STAYS_LIVE).count(), 1, "{first}");
    assert!(
        first.stderr.contains("ec2:DescribeInstanceAttribute"),
        "says who can read it\n{first}"
    );
    let again = Run::of(project.ssh_ec2(&cloud).arg("true"));
    again.assert_code(0);
    assert!(!again.stderr.contains("sudo"), "said once\n{again}");
    // Nor for the next instance: a note on every run would soon be ignored.
    let next = Run::of(project.ssh_ec2(&cloud).arg("true"));
    next.assert_code(0);
    assert!(!next.stderr.contains("sudo"), "said once\n{next}");
    assert_nothing_left(&cloud, &project, &next);
}
