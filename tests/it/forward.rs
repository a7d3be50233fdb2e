//! -L and -R: ports forwarded over the run's one SSH connection. The laptop and each instance
//! have loopbacks of their own: any port, the same on both sides if need be.

use crate::common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceStateName;
use common::{
    Pane, Project, RUN_TIMEOUT, Run, TestCloud, start_until_ready, state_of, wait_or_kill,
};

/// `GET path` on the laptop's 127.0.0.1:port, retried until the server answers (it starts
/// with the command).
pub(crate) fn http_get(cloud: &TestCloud, port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = (|| {
            let mut stream = cloud.laptop.connect(("127.0.0.1", port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok::<_, std::io::Error>(answer)
        })();
        match attempt {
            Ok(answer) if answer.lines().next().is_some_and(|l| l.contains(" 200 ")) => {
                return answer;
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer on port {port}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn local_forward_carries_http_to_a_server_on_the_instance() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("page.txt", "served from the instance\n");
    let (local, remote) = (8001, 8000);

    // The command serves this directory until the test says it is done.
    let child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .args(["-L", &format!("{local}:localhost:{remote}")])
            .arg(format!(
                "python3 -m http.server {remote} --bind 127.0.0.1 >/dev/null 2>&1 & \
                 echo ready; while [ ! -e done ]; do sleep 0.1; done; kill $!"
            )),
    );

    let answer = http_get(&cloud, local, "/page.txt");
    std::fs::write(cloud.remote(&project).join("done"), "").unwrap();
    let status = wait_or_kill(child, RUN_TIMEOUT).expect("ssh-ec2 hung");
    assert!(answer.ends_with("served from the instance\n"), "{answer}");
    assert_eq!(status.code(), Some(0));
    assert!(
        cloud.laptop.bind(("127.0.0.1", local)).is_ok(),
        "the local port is free again after the run"
    );
}

#[test]
fn remote_forward_carries_a_request_from_the_instance_to_a_server_here() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let server = cloud.laptop.bind("127.0.0.1:0").unwrap();
    let here = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in server.incoming().flatten() {
            let mut stream = stream;
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nanswered from the laptop\n");
        }
    });
    let there = 9000;

    let run = Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["-R", &format!("{there}:127.0.0.1:{here}")])
            .arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{there} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && \
                 cat <&3 > got.txt"
            )),
    );
    run.assert_code(0);
    assert!(
        project
            .read("got.txt")
            .unwrap_or_default()
            .ends_with("answered from the laptop\n"),
        "{run}"
    );
}

#[test]
fn a_taken_local_port_is_refused_before_anything_is_launched() {
    let cloud = TestCloud::start();
    let project = Project::new();
    let taken = cloud.laptop.bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();

    let run =
        Run::of(
            project
                .ssh_ec2(&cloud)
                .args(["-L", &format!("{port}:localhost:80"), "true"]),
        );
    run.assert_code(255);
    assert!(
        run.stderr.contains(&format!("port {port}")) && run.stderr.contains("taken"),
        "{run}"
    );
    assert!(cloud.instances().is_empty(), "nothing launched\n{run}");
}

/// jupyter_server's venv (/opt/ssh-ec2-testbed/jupyter), built by tests/testbed/install the
/// first time a test asks for it (it is big, and only the Jupyter tests use it).
fn jupyter_server() -> &'static str {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let jupyter = "/opt/ssh-ec2-testbed/jupyter/bin/jupyter-server";
    let built = BUILT.get_or_init(|| {
        let install = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testbed/install");
        let out = std::process::Command::new(install)
            .arg("--jupyter")
            .output()
            .map_err(|e| format!("cannot run {install}: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "`{install} --jupyter` failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    jupyter
}

#[test]
fn the_seeds_jupyter_recipe_answers_through_the_tunnel_on_the_same_port_on_both_sides() {
    let jupyter = jupyter_server();
    let cloud = TestCloud::start();
    let project = Project::new();

    // The recipe: `ssh-ec2 --stop -L 8888:localhost:8888 jupyter ...`; the laptop's port 8888
    // and the instance's are two ports of two machines.
    let child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .args(["--stop", "-L", "8888:localhost:8888"])
            .arg(format!(
                "{jupyter} --no-browser --port 8888 --ServerApp.ip=127.0.0.1 \
                 --IdentityProvider.token=sesame > jupyter.log 2>&1 & echo ready; \
                 while [ ! -e done ]; do sleep 0.1; done; kill $!; wait"
            )),
    );

    // The URL Jupyter prints, with its token, on the laptop's end of the tunnel.
    let answer = http_get(&cloud, 8888, "/api/status?token=sesame");
    std::fs::write(cloud.remote(&project).join("done"), "").unwrap();
    let status = wait_or_kill(child, RUN_TIMEOUT).expect("ssh-ec2 hung");
    assert!(answer.contains("\"started\""), "{answer}");
    assert_eq!(status.code(), Some(0));
    let log = project.read("jupyter.log").unwrap_or_default();
    assert!(
        log.contains("http://127.0.0.1:8888/?token="),
        "Jupyter printed its URL:\n{log}"
    );
    // --stop, as the recipe: clean up.
    Run::of(project.ssh_ec2(&cloud).args(["--no-rsync", "true"])).assert_code(0);
}

/// What the flood server sends: a pattern the test can check byte by byte.
fn flood_pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Serves one connection with SIZE bytes of the pattern (as much as it takes, if that
/// connection is cut), then leaves `sent` behind.
const FLOOD: &str = "import pathlib, socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
server = socket.create_server(('127.0.0.1', port))
pathlib.Path('listening').touch()
client, _ = server.accept()
try:
    client.sendall((bytes(range(251)) * (size // 251 + 1))[:size])
    client.close()
except OSError:
    pass
pathlib.Path('sent').touch()
";

/// What came of a flood sent to a local client that read nothing until the end.
struct Flooded {
    /// The command's line once the flood was sent.
    said: Result<String, std::sync::mpsc::RecvTimeoutError>,
    /// Through a second forward, meanwhile.
    answer: String,
    /// What the idle client read at last.
    flooded: Vec<u8>,
    status: Option<std::process::ExitStatus>,
    stderr: String,
}

/// Runs a command that floods a `-L` client with `size` bytes, while a second `-L` serves
/// HTTP; the client connects, reads nothing until the rest is checked, then reads it all.
fn flood_an_idle_client(size: usize) -> Flooded {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("flood.py", FLOOD);
    project.write("page.txt", "the other forward answers\n");
    // Laptop and instance share this machine's loopback: each end its own port.
    let (flood, flood_there, web, web_there) = (8001, 8002, 8003, 8004);

    let mut child = start_until_ready(
        project
            .ssh_ec2(&cloud)
            .args(["-L", &format!("{flood}:localhost:{flood_there}")])
            .args(["-L", &format!("{web}:localhost:{web_there}")])
            .arg(format!(
                "python3 flood.py {flood_there} {size} & \
                 python3 -m http.server {web_there} --bind 127.0.0.1 >/dev/null 2>&1 & web=$!; \
                 while [ ! -e listening ]; do sleep 0.1; done; echo ready; \
                 while [ ! -e sent ]; do sleep 0.1; done; echo the-command-still-speaks; \
                 while [ ! -e done ]; do sleep 0.1; done; kill $web; wait"
            )),
    );
    // The command's output, line by line, as it comes.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut idle = cloud.laptop.connect(("127.0.0.1", flood)).unwrap();
    let said = lines.recv_timeout(Duration::from_secs(60));
    // (Only when the session goes on: a failing test must still stop ssh-ec2 below.)
    let answer = match said {
        Ok(_) => http_get(&cloud, web, "/page.txt"),
        Err(_) => String::new(),
    };
    let mut flooded = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // A cut connection ends in a reset: what came before it counts.
    let _ = idle.read_to_end(&mut flooded);
    std::fs::write(cloud.remote(&project).join("done"), "").unwrap();
    let status = wait_or_kill(child, RUN_TIMEOUT);
    Flooded {
        said,
        answer,
        flooded,
        status,
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn a_local_client_that_does_not_read_stalls_neither_the_output_nor_another_forward() {
    // More than every buffer between the flood and the idle client holds (sockets, sshd,
    // russh's channel queue): a session that waited for that client would stop here.
    const SIZE: usize = 48 << 20;
    let f = flood_an_idle_client(SIZE);

    assert_eq!(
        f.said.as_deref(),
        Ok("the-command-still-speaks"),
        "the command's output went on while the idle client held {SIZE} bytes unread\n{}",
        f.stderr
    );
    assert!(
        f.answer.ends_with("the other forward answers\n"),
        "{}",
        f.answer
    );
    assert_eq!(
        f.flooded.len(),
        SIZE,
        "the idle client gets everything once it reads\n{}",
        f.stderr
    );
    assert!(f.flooded == flood_pattern(SIZE), "and unchanged");
    assert_eq!(f.status.and_then(|s| s.code()), Some(0), "{}", f.stderr);
}

#[test]
fn a_local_client_that_never_reads_is_cut_off_past_its_backlog_and_the_session_goes_on() {
    // Past the 64 MiB one connection may hold, with room for every buffer on the way.
    const SIZE: usize = 160 << 20;
    let f = flood_an_idle_client(SIZE);

    assert_eq!(
        f.said.as_deref(),
        Ok("the-command-still-speaks"),
        "{}",
        f.stderr
    );
    assert!(
        f.answer.ends_with("the other forward answers\n"),
        "{}",
        f.answer
    );
    assert!(
        f.stderr.contains("stopped reading with 64 MiB waiting"),
        "says which connection was closed and why\n{}",
        f.stderr
    );
    assert!(
        f.flooded.len() < SIZE && f.flooded[..] == flood_pattern(f.flooded.len())[..],
        "the idle client got {} bytes, the start of the flood, then the end",
        f.flooded.len()
    );
    assert_eq!(f.status.and_then(|s| s.code()), Some(0), "{}", f.stderr);
}

#[test]
fn a_local_forward_works_while_attached_while_finishing_and_again_after_a_reconnect() {
    let cloud = TestCloud::start();
    let project = Project::new();
    project.write("page.txt", "served by the job\n");
    // The job serves this directory until the test's go, then ends with 5.
    project.write(
        "job.sh",
        "python3 -m http.server \"$1\" --bind 127.0.0.1 >/dev/null 2>&1 & echo job-started; \
         while [ ! -e go ]; do sleep 0.1; done; kill $!; echo result > result.txt; exit 5",
    );
    let there = 8000;
    Run::of(
        project
            .ssh_ec2(&cloud)
            .args(["--detach", &format!("sh job.sh {there}")]),
    )
    .assert_code(0);

    // --attach, in a terminal: the forward lasts while attached, and ends with it.
    let here = 8001;
    let pane = Pane::shell(&project, &cloud);
    pane.type_line(&format!(
        "ssh-ec2 --attach -L {here}:localhost:{there}; echo \"attach=$?\""
    ));
    pane.wait_for("job-started");
    let attached = http_get(&cloud, here, "/page.txt");
    pane.tmux(&["send-keys", "C-b", "d"]);
    pane.wait_for("attach=0");
    assert!(attached.ends_with("served by the job\n"), "{attached}");
    assert!(
        cloud.laptop.bind(("127.0.0.1", here)).is_ok(),
        "the local port is free again after --attach"
    );

    // --finish: the forward while it waits, and again once a dropped connection is back.
    let here = 8002;
    let child = project
        .ssh_ec2(&cloud)
        .args([
            "--finish",
            "--no-attach",
            "-L",
            &format!("{here}:localhost:{there}"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let finishing = http_get(&cloud, here, "/page.txt");
    let dropped = cloud.drop_connections();
    // Served by a new connection: the old one's sshd is gone.
    let reconnected = http_get(&cloud, here, "/page.txt");
    std::fs::write(cloud.remote(&project).join("go"), "").unwrap();
    let run = Run::collect(child);

    run.assert_code(5);
    assert!(
        finishing.ends_with("served by the job\n"),
        "{finishing}\n{run}"
    );
    assert!(dropped > 0, "there was a connection to cut\n{run}");
    assert!(run.stderr.contains("reconnecting"), "{run}");
    assert!(
        reconnected.ends_with("served by the job\n"),
        "{reconnected}\n{run}"
    );
    assert_eq!(
        project.read("result.txt").as_deref(),
        Some("result\n"),
        "{run}"
    );
    assert_eq!(
        state_of(&cloud.instances()[0]),
        InstanceStateName::Terminated,
        "{run}"
    );
}
