//! Each simulated instance is a machine of its own: its own address, files, host name and
//! processes; several run at once; a terminated one leaves nothing; its security groups are
//! enforced. And `--connect`, the one way left to dial another address than the instance's.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceStateName, IpPermission, UserIdGroupPair};
use common::{
    Project, Run, TestCloud, end, instance_id, processes_in, start_until_ready, state_of,
    wait_or_kill, wait_until,
};

/// A run that writes `file` on its instance, says ready, and waits for `go` there.
fn start_writing(cloud: &TestCloud, project: &Project, file: &str) -> std::process::Child {
    start_until_ready(project.ssh_ec2(cloud).arg(format!(
        "echo mine > {file}; hostname > host.txt; echo ready; \
         while [ ! -e go ]; do sleep 0.1; done"
    )))
}

#[test]
fn two_directories_instances_run_at_once_each_with_its_own_files() {
    let cloud = TestCloud::start();
    let (a, b) = (Project::new(), Project::new());
    let run_a = start_writing(&cloud, &a, "only-a.txt");
    let run_b = start_writing(&cloud, &b, "only-b.txt");

    let (id_a, id_b) = (cloud.instance_of(&a), cloud.instance_of(&b));
    assert_ne!(id_a, id_b);
    assert_eq!(cloud.instances_in(InstanceStateName::Running).len(), 2);
    let host_a = cloud.read_remote(&a, "host.txt").unwrap();
    let host_b = cloud.read_remote(&b, "host.txt").unwrap();
    assert!(host_a.starts_with("ip-172-31-"), "{host_a}");
    assert_ne!(host_a, host_b, "each its own host name");
    // Each file on its own instance only; on the laptop neither, until pulled.
    assert_eq!(
        cloud.read_remote(&a, "only-a.txt").as_deref(),
        Some("mine\n")
    );
    let name_a = a.path().file_name().unwrap();
    assert!(
        !cloud.home_on(&id_b).join(name_a).exists(),
        "b's home has no copy of a"
    );
    assert!(cloud.read_remote(&b, "only-a.txt").is_none());
    assert!(cloud.read_remote(&a, "only-b.txt").is_none());
    assert!(a.read("only-a.txt").is_none() && b.read("only-b.txt").is_none());

    for project in [&a, &b] {
        std::fs::write(cloud.remote(project).join("go"), "").unwrap();
    }
    for child in [run_a, run_b] {
        Run::collect(child).assert_code(0);
    }
    assert_eq!(a.read("only-a.txt").as_deref(), Some("mine\n"), "pulled");
    assert_eq!(b.read("only-b.txt").as_deref(), Some("mine\n"), "pulled");
    assert!(a.read("only-b.txt").is_none() && b.read("only-a.txt").is_none());
    assert!(cloud.live_instances().is_empty());
}

#[test]
fn a_terminated_instance_leaves_nothing_and_the_next_launch_sees_an_empty_home() {
    let cloud = TestCloud::start();
    let project = Project::new();
    // What a job leaves behind: a file outside the synced directory, processes that outlive
    // the session.
    let first = Run::of(project.ssh_ec2(&cloud).arg(
        "echo old > ~/leftover.txt; echo old > /tmp/leftover.txt; \
         nohup sleep 600 >/dev/null 2>&1 & tmux new-session -d sleep 601",
    ));
    first.assert_code(0);
    let id = instance_id(&cloud.instances()[0]);
    cloud.wait_for_events("disk-deleted", 1);
    assert!(!cloud.disk(&id).exists(), "its disk is deleted");
    wait_until_the_first_machine_is_empty(&cloud);

    let second =
        Run::of(project.ssh_ec2(&cloud).arg(
            "ls -A ~; cat ~/leftover.txt /tmp/leftover.txt 2>&1; tmux ls 2>&1; pgrep -c sleep",
        ));
    second.assert_code(1); // pgrep's: no sleep
    let name = project.path().file_name().unwrap().to_str().unwrap();
    let lines: Vec<&str> = second.stdout.lines().collect();
    // The skeleton's files, the login's keys, ssh-ec2's state and the synced copy: nothing else.
    assert_eq!(
        lines[..6],
        [
            ".bash_logout",
            ".bashrc",
            ".profile",
            ".ssh",
            ".ssh-ec2",
            name
        ],
        "{second}"
    );
    assert_eq!(
        lines[6..8],
        [
            "cat: /home/ubuntu/leftover.txt: No such file or directory",
            "cat: /tmp/leftover.txt: No such file or directory",
        ],
        "{second}"
    );
    assert!(lines[8].contains("/tmp/tmux-"), "no tmux server\n{second}");
    assert_eq!(lines[9..], ["0"], "no sleep\n{second}");
    assert_eq!(cloud.instances().len(), 2, "{second}");
}

/// Waits until no process is left in the network namespace of the first machine booted.
fn wait_until_the_first_machine_is_empty(cloud: &TestCloud) {
    let started = cloud
        .events()
        .into_iter()
        .find(|e| e["event"] == "sshd-started");
    let netns = started.unwrap()["netns"].as_u64().unwrap();
    wait_until("its processes to end", || processes_in(&[netns]).is_empty());
}

#[test]
fn an_instance_is_a_machine_of_its_own_with_passwordless_sudo_and_no_way_out() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let here = project.path().display().to_string();
    let run = Run::of(project.ssh_ec2(&cloud).arg(format!(
        "hostname; cat /etc/hostname; sudo -n id -u; ps -o comm= -p 1; ps -e | wc -l; \
         ip route; test -e '{here}' && echo sees-the-laptop; mpirun -n 2 hostname | sort -u"
    )));
    run.assert_code(0);
    let address = cloud.instances()[0]
        .private_ip_address()
        .unwrap()
        .to_string();
    let host = format!("ip-{}", address.replace('.', "-"));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[..3],
        [&host, &host, "0"],
        "its name; root by sudo\n{run}"
    );
    // Its own pid namespace: sshd is its first process, and there are but a few.
    assert_eq!(lines[3], "sshd", "{run}");
    assert!(lines[4].parse::<u32>().unwrap() < 16, "{run}");
    assert!(!run.stdout.contains("default"), "no default route\n{run}");
    assert!(run.stdout.contains("172.31.0.0/16 dev eth0"), "{run}");
    assert!(
        !run.stdout.contains("sees-the-laptop"),
        "the laptop's /tmp is not the instance's\n{run}"
    );
    assert_eq!(lines.last(), Some(&host.as_str()), "mpirun runs\n{run}");
    let laptop = cloud.laptop.command("/usr/sbin/ip").arg("route").output();
    let routes = String::from_utf8(laptop.unwrap().stdout).unwrap();
    assert!(
        routes.contains("172.31.0.0/16 dev vpc") && !routes.contains("default"),
        "the laptop has the VPC's bridge and nothing else: {routes}"
    );
}

/// Relays each connection to 127.0.0.1:port on the laptop to `target`, as an SSM port
/// forward or a bastion would; counts the connections.
fn relay(cloud: &TestCloud, target: SocketAddr) -> (u16, Arc<AtomicUsize>) {
    let listener: TcpListener = cloud.laptop.bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let (laptop, counted) = (cloud.laptop.clone(), count.clone());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::Relaxed);
            let Ok(server) = laptop.connect(target) else {
                continue;
            };
            pipe(&client, &server);
            pipe(&server, &client);
        }
    });
    (port, count)
}

/// Copies from `from` to `to` in a thread, then shuts `to` down for writing.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

#[test]
fn connect_dials_the_address_it_is_given_instead_of_the_instances() {
    let cloud = TestCloud::start();
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let address = cloud.instances()[0]
        .private_ip_address()
        .unwrap()
        .to_string();
    let (port, connections) = relay(&cloud, format!("{address}:22").parse().unwrap());

    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--leave",
        "echo through the relay",
    ]));
    run.assert_code(0);
    assert_eq!(run.stdout, "through the relay\n", "{run}");
    assert!(connections.load(Ordering::Relaxed) > 0, "{run}");
    assert!(
        run.stderr
            .contains(&format!("connected to ubuntu@127.0.0.1:{port}")),
        "{run}"
    );
    end(&cloud, &mut project.ssh_ec2(&cloud));
}

#[test]
fn address_private_dials_the_private_one_and_public_is_refused_naming_the_setting() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let private = Run::of(project.ssh_ec2(&cloud).args([
        "--address",
        "private",
        "--leave",
        "echo by its private address",
    ]));
    private.assert_code(0);
    let address = cloud.instances()[0]
        .private_ip_address()
        .unwrap()
        .to_string();
    assert_eq!(private.stdout, "by its private address\n", "{private}");
    assert!(
        (private.stderr).contains(&format!("connected to ubuntu@{address}:22")),
        "{private}"
    );

    // The bed's instances have no public address, as in a private subnet.
    let public = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--address", "public", "--leave", "true"]),
    );
    public.assert_code(255);
    for said in [
        "has no public address (--address public, SSH_EC2_ADDRESS)",
        &format!("--address private dials {address}"),
    ] {
        assert!(public.stderr.contains(said), "{said}\n{public}");
    }
    let shown = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--address", "private", "--show-config"]),
    );
    let row = |l: &str| l.split_whitespace().collect::<Vec<_>>() == ["address", "flag", "private"];
    assert!(shown.stdout.lines().any(row), "{shown}");
    let dry = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--address", "private", "--dry-run"]),
    );
    assert!(
        dry.stdout.contains("the instance's private address"),
        "{dry}"
    );
    end(&cloud, &mut project.ssh_ec2(&cloud));
}

/// Whether `from`'s instance reaches `to`'s sshd (as a cluster's nodes would), asked on it.
fn reaches(cloud: &TestCloud, from: &Project, address: &str) -> bool {
    let probe = format!(
        "timeout 1 bash -c 'exec 3<>/dev/tcp/{address}/22 && head -c 7 <&3' || echo unreached"
    );
    let run = Run::of(from.ssh_ec2(cloud).args(["--leave", "--no-rsync", &probe]));
    run.assert_code(0);
    run.stdout == "SSH-2.0"
}

/// Whether the laptop reaches `address`'s sshd within a second.
fn laptop_reaches(cloud: &TestCloud, address: &str) -> bool {
    let target: SocketAddr = format!("{address}:22").parse().unwrap();
    let Ok(mut stream) = cloud.laptop.connect_timeout(target, Duration::from_secs(1)) else {
        return false;
    };
    let mut banner = [0u8; 7];
    stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0" && stream.flush().is_ok()
}

#[test]
fn security_groups_let_in_only_what_they_allow() {
    let cloud = TestCloud::start();
    let (a, b) = (Project::new(), Project::new());
    for project in [&a, &b] {
        Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    }
    let instance = |project: &Project| {
        let id = cloud.instance_of(project);
        let found = cloud.instances().into_iter().find(|i| instance_id(i) == id);
        let found = found.unwrap();
        let group = found.security_groups()[0].group_id().unwrap().to_string();
        (found.private_ip_address().unwrap().to_string(), group)
    };
    let ((address_a, group_a), (_, group_b)) = (instance(&a), instance(&b));

    // Its own group lets in the laptop's address, and nothing else.
    assert!(laptop_reaches(&cloud, &address_a));
    assert!(!reaches(&cloud, &b, &address_a), "b is not let in");

    // A rule naming b's group lets in b's instance (what a cluster's group does).
    let from_b = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .user_id_group_pairs(UserIdGroupPair::builder().group_id(&group_b).build())
        .build();
    let ec2 = cloud.ec2();
    let authorize = ec2.authorize_security_group_ingress().group_id(&group_a);
    cloud
        .block_on(authorize.ip_permissions(from_b).send())
        .unwrap();
    wait_until("b to be let in", || reaches(&cloud, &b, &address_a));

    // Without its rule, the laptop is not let in any more.
    let laptop = format!("{}/32", cloud.laptop.address);
    let revoke = ec2.revoke_security_group_ingress().group_id(&group_a);
    let revoked = revoke
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .cidr_ip(laptop);
    cloud.block_on(revoked.send()).unwrap();
    wait_until("the laptop to be shut out", || {
        !laptop_reaches(&cloud, &address_a)
    });

    // ssh-ec2 opens its group to the caller again on every run: it ends both.
    Run::of(
        a.ssh_ec2(&cloud)
            .args(["--terminate", "--no-rsync", "true"]),
    )
    .assert_code(0);
    end(&cloud, &mut b.ssh_ec2(&cloud));
}

#[test]
fn the_bed_boots_no_instance_with_a_public_address() {
    let cloud = TestCloud::start();
    // ssh-ec2 names no subnet: the proxy puts it in the zone's default subnet, as AWS does,
    // where the bed turned public addresses off.
    let project = Project::new();
    Run::of(project.ssh_ec2(&cloud).args(["--leave", "true"])).assert_code(0);
    let launched = cloud.instances().remove(0);
    assert_eq!(launched.public_ip_address(), None);
    assert!(launched.subnet_id().is_some());
    end(&cloud, &mut project.ssh_ec2(&cloud));

    // One with a public address, launched past the proxy: the bed says so, and boots nothing.
    let user_data = "#cloud-config\nssh_keys:\n  ed25519_private: not-used\n\
                     ssh_authorized_keys: [ssh-ed25519 AAAA not-used]\n";
    let interface = aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder()
        .device_index(0)
        .associate_public_ip_address(true)
        .subnet_id(launched.subnet_id().unwrap())
        .build();
    let run = cloud
        .ec2()
        .run_instances()
        .image_id(&cloud.amis["ubuntu_new"]);
    let run = run.min_count(1).max_count(1).network_interfaces(interface);
    use base64::Engine;
    let run = run.user_data(base64::engine::general_purpose::STANDARD.encode(user_data));
    let public = cloud.block_on(run.send()).unwrap();
    let public = public.instances()[0].clone();
    assert!(public.public_ip_address().is_some(), "moto gave it one");
    wait_until("the bed to refuse it", || cloud.count_events("error") > 0);
    let errors = cloud.take_bed_errors();
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("the bed boots no instance with a public IP"),
        "{errors:?}"
    );
    assert_eq!(errors[0]["instance"], instance_id(&public).as_str());
    assert_eq!(cloud.count_events("sshd-started"), 1, "only ssh-ec2's");
    let terminate = cloud.ec2().terminate_instances();
    let terminated = terminate.instance_ids(instance_id(&public)).send();
    cloud.block_on(terminated).unwrap();
    assert_eq!(
        state_of(&cloud.instances()[1]),
        InstanceStateName::Terminated
    );
}

#[test]
fn a_stopped_instance_keeps_its_disk_and_ends_every_process_it_ran() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = start_until_ready(project.ssh_ec2(&cloud).args([
        "--stop",
        "echo kept > kept.txt; sudo touch /root/by-root; (setsid sleep 602 >/dev/null 2>&1 &); echo ready; \
         while [ ! -e go ]; do sleep 0.1; done",
    ]));
    let id = cloud.instance_of(&project);
    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    wait_or_kill(child, common::RUN_TIMEOUT).expect("ssh-ec2 hung");
    cloud.wait_for_events("sshd-stopped", 1);
    wait_until_the_first_machine_is_empty(&cloud);
    assert!(
        cloud.file_on(&id, "/root/by-root").exists(),
        "the disk stays"
    );

    let again = Run::of(project.ssh_ec2(&cloud).arg("cat kept.txt; pgrep -c sleep"));
    again.assert_code(1); // pgrep's: no sleep left from before
    assert_eq!(again.stdout, "kept\n0\n", "{again}");
    assert_eq!(cloud.instances().len(), 1, "the same instance\n{again}");
}
