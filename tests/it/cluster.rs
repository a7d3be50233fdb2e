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

    for (rank, ip) in ips.iter().enumerate() {
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
    // Where the nodes wrote one file otherwise, the head's stays; the others' beside it.
    assert_eq!(project.read("shared.txt").unwrap(), "from node 0\n");
    for rank in [1, 2] {
        assert_eq!(
            project
                .read(&format!("shared.from-node-{rank}.txt"))
                .unwrap(),
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
