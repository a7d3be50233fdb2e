//! `--nodes N`: N instances launched together, reached through the head, each running the
//! command with its node's variables; every node's results home; nothing left.

use crate::common;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::Instance;
use common::{Project, Run, TestCloud, assert_nothing_left, instance_id, state_of, tag};

/// The live nodes of the project's cluster, in rank order (EC2's launch index).
fn nodes(cloud: &TestCloud, project: &Project) -> Vec<Instance> {
    let dir = project.path().canonicalize().unwrap();
    let mut nodes: Vec<Instance> = (cloud.live_instances().into_iter())
        .filter(|i| tag(i, "ssh-ec2:dir").as_deref() == dir.to_str())
        .collect();
    nodes.sort_by_key(|i| i.ami_launch_index());
    nodes
}

fn private_ip(instance: &Instance) -> String {
    instance.private_ip_address().unwrap().to_string()
}

/// `NAME=value` lines as a map.
fn variables(text: &str) -> BTreeMap<String, String> {
    (text.lines())
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// What every node writes: its variables, its own address, the hostfile, a file only it
/// writes, and one every node writes otherwise.
const REPORT: &str = r#"r=$SSH_EC2_NODE_RANK
for v in SSH_EC2_NODE_RANK SSH_EC2_NUM_NODES SSH_EC2_HEAD_IP SSH_EC2_GPUS_PER_NODE \
    PET_NNODES PET_NODE_RANK PET_MASTER_ADDR PET_MASTER_PORT PET_NPROC_PER_NODE \
    MASTER_ADDR MASTER_PORT; do eval "echo $v=\$$v"; done > "env-$r.txt"
printf '%s\n' "$SSH_EC2_NODE_IPS" > "ips-$r.txt"
hostname -I | tr -d ' \n' > "address-$r.txt"
cp "$SSH_EC2_HOSTFILE" "hostfile-$r.txt"
echo "from node $r" > shared.txt
echo "output of node $r"
"#;

#[test]
fn three_nodes_each_get_their_variables_and_every_node_s_results_come_home() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("report.sh", REPORT);
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--nodes", "3", "--leave", "sh report.sh"]),
    );
    run.assert_code(0);
    let nodes = nodes(&cloud, &project);
    assert_eq!(nodes.len(), 3, "{run}");
    let ips: Vec<String> = nodes.iter().map(private_ip).collect();
    let placement: Vec<_> = (nodes.iter())
        .map(|n| {
            n.placement()
                .and_then(|p| p.group_name())
                .map(str::to_string)
        })
        .collect();
    assert!(placement[0].is_some(), "in a placement group\n{run}");
    assert!(
        placement.iter().all(|p| *p == placement[0]),
        "{placement:?}"
    );
    let zones: Vec<_> = (nodes.iter())
        .map(|n| n.placement().and_then(|p| p.availability_zone()))
        .collect();
    assert!(zones.iter().all(|z| *z == zones[0]), "one zone: {zones:?}");

    for rank in 0..ips.len() {
        assert_node_s_files(&project, &run, rank, &ips);
    }
    // Where the nodes wrote one file otherwise, the head's stays; the others' beside it.
    assert_eq!(project.read("shared.txt").unwrap(), "from node 0\n");
    for rank in [1, 2] {
        assert_eq!(
            project
                .read(&format!("shared.from-node-{rank}.txt"))
                .unwrap_or_else(|| panic!("node {rank}'s copy of shared.txt came home\n{run}")),
            format!("from node {rank}\n"),
            "{run}"
        );
    }
    assert!(run.stdout.contains("output of node 0\n"), "{run}");
    for rank in [1, 2] {
        assert!(
            run.stdout
                .contains(&format!("[node {rank}] output of node {rank}\n")),
            "{run}"
        );
    }

    let end = Run::of(project.ssh_ec2(&cloud).args(["--nodes", "3", "true"]));
    end.assert_code(0);
    assert!(
        end.stderr.contains("and its 2 other nodes") && end.stderr.contains("3 instances at"),
        "the summary covers the whole cluster\n{end}"
    );
    for node in &nodes {
        let id = instance_id(node);
        let now = cloud.instances().into_iter().find(|i| instance_id(i) == id);
        assert_eq!(
            now.map(|i| state_of(&i).as_str().to_string()).as_deref(),
            Some("terminated"),
            "{end}"
        );
    }
    assert_nothing_left(&cloud, &project, &end);
}

/// What node `rank` wrote came home: its variables, the nodes' addresses (`ips`, in rank
/// order), its own address and the hostfile.
fn assert_node_s_files(project: &Project, run: &Run, rank: usize, ips: &[String]) {
    let ip = &ips[rank];
    let read = |name: &str| {
        project
            .read(&format!("{name}-{rank}.txt"))
            .unwrap_or_else(|| panic!("{name}-{rank}.txt came home\n{run}"))
    };
    let env = variables(&read("env"));
    let (rank, head) = (rank.to_string(), ips[0].as_str());
    for (name, value) in [
        ("SSH_EC2_NODE_RANK", rank.as_str()),
        ("SSH_EC2_NUM_NODES", "3"),
        ("SSH_EC2_HEAD_IP", head),
        // No GPU on the bed: one process per node.
        ("SSH_EC2_GPUS_PER_NODE", "0"),
        ("PET_NNODES", "3"),
        ("PET_NODE_RANK", rank.as_str()),
        ("PET_MASTER_ADDR", head),
        ("PET_MASTER_PORT", "29500"),
        ("PET_NPROC_PER_NODE", "1"),
        ("MASTER_ADDR", head),
        ("MASTER_PORT", "29500"),
    ] {
        assert_eq!(
            env.get(name).map(String::as_str),
            Some(value),
            "{name} on node {rank}"
        );
    }
    assert_eq!(read("ips"), ips.join("\n") + "\n", "node {rank}");
    assert_eq!(read("address"), *ip, "node {rank} runs on its own instance");
    let hostfile: String = ips.iter().map(|ip| format!("{ip} slots=1\n")).collect();
    assert_eq!(read("hostfile"), hostfile, "node {rank}");
}

/// Every rank connects to the head at PET_MASTER_ADDR:PET_MASTER_PORT and says its rank; the
/// head writes down who came (torchrun's rendezvous, without torch).
const RENDEZVOUS: &str = r#"import os, socket, sys
rank, nodes = int(os.environ["PET_NODE_RANK"]), int(os.environ["PET_NNODES"])
address = (os.environ["PET_MASTER_ADDR"], int(os.environ["PET_MASTER_PORT"]))
if rank == 0:
    server = socket.create_server(address)
    came = []
    while len(came) < nodes - 1:
        connection, _ = server.accept()
        came.append(int(connection.recv(16)))
    open("came.txt", "w").write(" ".join(str(r) for r in sorted(came)) + "\n")
else:
    for _ in range(300):
        try:
            socket.create_connection(address, timeout=1).sendall(str(rank).encode())
            break
        except OSError:
            __import__("time").sleep(0.1)
    else:
        sys.exit("no head at %s:%d" % address)
"#;

#[test]
fn mpirun_and_a_rendezvous_at_the_head_reach_every_node() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("rendezvous.py", RENDEZVOUS);
    // mpirun from the head, over SSH between the nodes with their host keys checked.
    let mpi = "if [ \"$SSH_EC2_NODE_RANK\" = 0 ]; then mpirun --hostfile \"$SSH_EC2_HOSTFILE\" \
               --map-by node -np 3 hostname | sort > hosts.txt; fi && python3 rendezvous.py";
    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--nodes", "3", "--leave", mpi]),
    );
    run.assert_code(0);
    let nodes = nodes(&cloud, &project);
    let mut hosts: Vec<String> = (nodes.iter())
        .map(|n| format!("ip-{}", private_ip(n).replace('.', "-")))
        .collect();
    hosts.sort();
    assert_eq!(
        project.read("hosts.txt").unwrap(),
        hosts.join("\n") + "\n",
        "one process on each node\n{run}"
    );
    assert_eq!(project.read("came.txt").unwrap(), "1 2\n", "{run}");
    let end = Run::of(project.ssh_ec2(&cloud).args(["--nodes", "3", "true"]));
    end.assert_code(0);
    assert_nothing_left(&cloud, &project, &end);
}

#[test]
fn a_node_that_fails_ends_the_others_at_once_and_its_status_comes_back() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let started = std::time::Instant::now();
    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "3",
        "if [ \"$SSH_EC2_NODE_RANK\" = 2 ]; then sleep 1; exit 5; fi; \
         sleep 120; echo never > never-$SSH_EC2_NODE_RANK.txt",
    ]));
    run.assert_code(5);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the others were ended, not waited for\n{run}"
    );
    assert!(run.stderr.contains("node 2 exited with status 5"), "{run}");
    assert!(project.read("never-0.txt").is_none() && project.read("never-1.txt").is_none());
    assert_nothing_left(&cloud, &project, &run);
}

#[test]
fn no_capacity_for_the_whole_cluster_in_a_zone_moves_every_node_to_the_next() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let zones = crate::faults::default_subnets(&cloud);
    // EC2's own pick, then the first zone, have room for two instances: not for three.
    let room_for_two = |params: serde_json::Value| serde_json::json!({"action": "RunInstances", "params": params, "capacity": 2});
    cloud.set_faults(serde_json::json!([
        room_for_two(serde_json::json!({"SubnetId": null})),
        room_for_two(serde_json::json!({"SubnetId": zones[0].1})),
    ]));
    let run =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--nodes", "3", "--no-rsync", "--leave", "true"]),
        );
    run.assert_code(0);
    let nodes = nodes(&cloud, &project);
    assert_eq!(nodes.len(), 3, "{run}");
    for node in &nodes {
        assert_eq!(node.subnet_id(), Some(zones[1].1.as_str()), "{run}");
    }
    assert_eq!(
        cloud.instances().len(),
        3,
        "nothing was launched where the cluster did not fit\n{run}"
    );
    // The same zone has room for one instance alone.
    let single = Project::new();
    let alone = Run::of(single.ssh_ec2(&cloud).args(["--no-rsync", "true"]));
    alone.assert_code(0);
    let end = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--nodes", "3", "--no-rsync", "true"]),
    );
    end.assert_code(0);
    assert_nothing_left(&cloud, &project, &end);
}

#[test]
fn only_the_head_takes_ssh_from_outside_the_cluster() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let run =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["--nodes", "2", "--no-rsync", "--leave", "true"]),
        );
    run.assert_code(0);
    let nodes = nodes(&cloud, &project);
    let ssh_to = |node: &Instance| {
        let address = format!("{}:22", private_ip(node)).parse().unwrap();
        cloud
            .laptop
            .connect_timeout(address, std::time::Duration::from_secs(2))
    };
    assert!(ssh_to(&nodes[0]).is_ok(), "the head lets this machine in");
    assert!(ssh_to(&nodes[1]).is_err(), "a worker does not\n{run}");
    let end = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--nodes", "2", "--no-rsync", "true"]),
    );
    end.assert_code(0);
    assert_nothing_left(&cloud, &project, &end);
}

#[test]
fn a_cluster_job_detaches_lists_as_one_and_finishes_with_every_node_s_results() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let detach = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "2",
        "--detach",
        "sleep 2; echo done > done-$SSH_EC2_NODE_RANK.txt",
    ]));
    detach.assert_code(0);
    let ids: Vec<String> = nodes(&cloud, &project).iter().map(instance_id).collect();
    assert_eq!(ids.len(), 2, "{detach}");

    let list = Run::of(project.ssh_ec2(&cloud).args(["--list", "--json"]));
    list.assert_code(0);
    let rows: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "one entry per cluster\n{list}");
    assert_eq!(rows[0]["instances"], serde_json::json!(ids), "{list}");

    // The cluster is found whole, whatever --nodes says.
    let finish = Run::of(project.ssh_ec2(&cloud).arg("--finish"));
    finish.assert_code(0);
    // Its cost is the nodes' life so far, which is what the bill shows, not this run's.
    assert!(
        finish.stderr.contains("since it started, terminated")
            && finish.stderr.contains("for 2 instances at"),
        "{finish}"
    );
    for rank in 0..2 {
        assert_eq!(
            project.read(&format!("done-{rank}.txt")).as_deref(),
            Some("done\n"),
            "{finish}"
        );
    }
    assert_nothing_left(&cloud, &project, &finish);
}

#[test]
fn down_ends_a_left_cluster_whole_and_a_reuse_with_another_size_is_refused() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let left = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "2",
        "--leave",
        "echo mine > out-$SSH_EC2_NODE_RANK.txt",
    ]));
    left.assert_code(0);
    let other = Run::of(project.ssh_ec2(&cloud).args(["--nodes", "3", "true"]));
    other.assert_code(255);
    assert!(
        other.stderr.contains("has 2 nodes, not the 3 asked")
            && other.stderr.contains("ssh-ec2 --down"),
        "{other}"
    );
    let down = Run::of(project.ssh_ec2(&cloud).arg("--down"));
    down.assert_code(0);
    assert_eq!(
        project.read("out-1.txt").as_deref(),
        Some("mine\n"),
        "{down}"
    );
    assert_nothing_left(&cloud, &project, &down);
}

#[test]
fn a_dry_run_shows_the_cluster_and_asks_for_every_node_at_once_with_efa() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let dry = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "4",
        "--efa",
        "--instance-type",
        "g5.12xlarge",
        "--dry-run",
        "--json",
    ]));
    dry.assert_code(0);
    let report: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(report["launch"]["nodes"], 4, "{dry}");
    assert!(
        report["launch"]["placement"]
            .as_str()
            .is_some_and(|p| p.contains("cluster placement group")),
        "{dry}"
    );
    let asked = cloud.calls("RunInstances");
    let params = &asked.last().expect("asked EC2 whether it would launch")["params"];
    for (name, value) in [
        ("DryRun", "true"),
        ("MinCount", "4"),
        ("MaxCount", "4"),
        ("NetworkInterface.1.InterfaceType", "efa"),
        ("NetworkInterface.1.DeviceIndex", "0"),
    ] {
        assert_eq!(params[name], value, "{name}: {params}");
    }
    assert!(cloud.live_instances().is_empty());

    let text = Run::of(project.ssh_ec2(&cloud).args(["--nodes", "4", "--dry-run"]));
    text.assert_code(0);
    assert!(
        text.stdout.contains("× 4 nodes"),
        "the price of all four\n{text}"
    );

    // A type without EFA is refused before anything is made.
    let refused = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--nodes", "2", "--efa", "true"]),
    );
    refused.assert_code(255);
    assert!(
        refused.stderr.contains("has no Elastic Fabric Adapter"),
        "{refused}"
    );
    assert!(cloud.instances().is_empty(), "{refused}");
    assert_nothing_left(&cloud, &project, &refused);
}

#[test]
fn a_node_lost_mid_run_fails_it_with_its_rank_and_the_others_results_still_come_home() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let child = common::start_until_ready(project.ssh_ec2(&cloud).args([
        "--nodes",
        "2",
        "echo mine > from-$SSH_EC2_NODE_RANK.txt; \
         if [ $SSH_EC2_NODE_RANK = 0 ]; then sleep 1; echo ready; fi; sleep 300",
    ]));
    let worker = instance_id(&nodes(&cloud, &project)[1]);
    cloud
        .block_on(
            cloud
                .ec2()
                .terminate_instances()
                .instance_ids(&worker)
                .send(),
        )
        .unwrap();
    let run = Run::collect(child);
    run.assert_code(255);
    assert!(run.stderr.contains("node 1"), "names the lost node\n{run}");
    assert_eq!(
        project.read("from-0.txt").as_deref(),
        Some("mine\n"),
        "{run}"
    );
    assert_nothing_left(&cloud, &project, &run);
}

/// Bytes the laptop has sent onto the VPC's bridge so far (its side of every connection to
/// the nodes).
fn laptop_bytes_onto_the_bridge(cloud: &TestCloud) -> u64 {
    let out = cloud
        .laptop
        .command("/usr/sbin/ip")
        .args(["-j", "-s", "link", "show", "dev", "vpc"])
        .output()
        .expect("ip on the laptop");
    assert!(out.status.success(), "{out:?}");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .expect("tx bytes")
}

#[test]
fn the_directory_crosses_the_laptop_s_link_once_for_three_nodes() {
    use std::io::Read;
    let cloud = TestCloud::start();
    let project = Project::new();
    let size = 40 << 20;
    let mut random = vec![0; size];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut random)
        .unwrap();
    std::fs::write(project.path().join("data.bin"), &random).unwrap();
    let before = laptop_bytes_onto_the_bridge(&cloud);
    let run = Run::of(project.ssh_ec2(&cloud).args([
        "--nodes",
        "3",
        "cmp data.bin data.bin && wc -c < data.bin > size-$SSH_EC2_NODE_RANK.txt",
    ]));
    let sent = laptop_bytes_onto_the_bridge(&cloud) - before;
    run.assert_code(0);
    for rank in 0..3 {
        let size_there = project.read(&format!("size-{rank}.txt"));
        assert_eq!(size_there, Some(format!("{size}\n")), "node {rank}\n{run}");
    }
    assert!(
        sent < size as u64 * 16 / 10,
        "the laptop sent {sent} bytes onto the bridge for a {size}-byte file on 3 nodes\n{run}"
    );
    assert_nothing_left(&cloud, &project, &run);
}
