"""One simulated AWS cloud for one test.

moto_server answers the EC2/IAM API; a boot simulator watches moto's instances and gives each
running one a real OpenSSH server on 127.0.0.1:--sshd-port, set up from the instance's
#cloud-config user-data the way cloud-init would (host key, authorized keys); a tiny HTTP
server stands in for https://checkip.amazonaws.com. With --faults, a fault-injecting proxy
(faults.py) stands between the product and moto. Prints one JSON "ready" line on stdout, logs
events to STATE_DIR/events.jsonl, and exits, stopping everything it started, when stdin reaches
EOF or on SIGTERM. See README.md beside this file.
"""

import argparse
import base64
import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import yaml
from botocore.exceptions import ClientError

import faults
import ports

# Ready-line key -> (AMI id, name, creation date). The Ubuntu DLAMI name pattern matches the
# first two; the newest of them (20261015) is the one the product must pick.
AMIS = {
    "ubuntu_old": ("ami-0a1b2c3d4e5f60001",
                   "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20260301", "2026-03-01"),
    "ubuntu_new": ("ami-0a1b2c3d4e5f60002",
                   "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261015", "2026-10-15"),
    "al2023_dl": ("ami-0a1b2c3d4e5f60003",
                  "Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) 20261101", "2026-11-01"),
    "al2023": ("ami-0a1b2c3d4e5f60004", "al2023-ami-2023.6.20261101.0-kernel-6.1-x86_64", "2026-11-01"),
}
# Every process of a simulated instance's sessions carries this variable (sshd's SetEnv), so
# stopping the instance can find and kill them even after they left sshd's process group
# (sshd puts each session in its own; tmux and screen daemonize).
MARK_VAR = "SSH_EC2_TESTBED_INSTANCE"
POLL_SECONDS = 0.05
SSHD_START_TIMEOUT = 10.0


class Events:
    """STATE_DIR/events.jsonl: one JSON object per line, flushed at once so tests can read it."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def emit(self, event, **fields):
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str)
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()

    def error(self, message, **fields):
        self.emit("error", message=message, **fields)
        print(f"cloud.py: error: {message} {fields or ''}", file=sys.stderr)


def write_amis_file(path):
    """The AMI list moto loads (MOTO_AMIS_PATH) instead of its defaults, in moto's amis.json format.
    moto marks every AMI loaded this way with owner_alias "amazon", so Owners=["amazon"] finds them."""
    amis = [{
        "ami_id": ami_id, "name": name, "description": name, "creation_date": f"{date}T00:00:00.000Z",
        "state": "available", "public": True, "owner_id": "898082745236",
        "image_location": f"amazon/{name}", "image_type": "machine", "architecture": "x86_64",
        "root_device_type": "ebs", "root_device_name": "/dev/sda1", "virtualization_type": "hvm",
        "hypervisor": "xen", "sriov": "simple",
    } for ami_id, name, date in AMIS.values()]
    path.write_text(json.dumps(amis, indent=1))


def start_checkip(events):
    """Stand-in for https://checkip.amazonaws.com: any GET answers the caller's address."""
    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                count[0] += 1
                n = count[0]
            events.emit("checkip", count=n, path=self.path)
            body = b"127.0.0.1\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # stdout is for the ready line only, stderr stays readable

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Box:
    """What the simulator keeps for one instance: its files, its sshd, its boot progress."""

    def __init__(self, instance_id, directory):
        self.id = instance_id
        self.dir = directory
        self.ready = False         # files written from valid user-data
        self.sshd = None           # Popen while the instance's sshd runs
        self.running_since = None  # when the simulator first saw it running (for --boot-delay)
        self.failed = False        # sshd failed or port taken: no retry until the next start
        self.mark = f"{MARK_VAR}={directory}".encode()


class Simulator(threading.Thread):
    """Polls moto and keeps one sshd per running instance. It starts every sshd itself, so the
    sshds' parent-death signal (tied to this thread) fires if the process dies unexpectedly."""

    def __init__(self, args, ec2, events):
        super().__init__(daemon=True)
        self.args, self.ec2, self.events = args, ec2, events
        self.user = pwd.getpwnam(args.user)
        self.boxes = {}
        self.halt = threading.Event()

    def run(self):
        try:
            while not self.halt.wait(POLL_SECONDS):
                try:
                    self.poll()
                except Exception as e:  # keep simulating: a test may reset moto or race it
                    self.events.error(f"boot simulator: {type(e).__name__}: {e}")
        finally:
            for box in self.boxes.values():
                if box.sshd:
                    self.stop_sshd(box, "cloud-exit")

    def poll(self):
        seen = {}
        for page in self.ec2.get_paginator("describe_instances").paginate():
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    seen[instance["InstanceId"]] = instance
        for instance_id, instance in seen.items():
            box = self.boxes.get(instance_id)
            if box is None:
                # Read user-data and key pair at first sight, as cloud-init does at first boot.
                box = self.boxes[instance_id] = Box(instance_id, self.args.state_dir / instance_id)
                self.prepare(box, instance.get("KeyName"))
            self.step(box, instance["State"]["Name"])
        for box in self.boxes.values():
            if box.id not in seen and box.sshd:
                self.stop_sshd(box, "gone")

    def step(self, box, state):
        if state != "running":
            box.running_since, box.failed = None, False
            if box.sshd:
                self.stop_sshd(box, state)
            return
        if box.sshd or box.failed or not box.ready:
            return
        box.running_since = box.running_since or time.monotonic()
        if time.monotonic() - box.running_since < self.args.boot_delay:
            return
        owner = next((b.id for b in self.boxes.values() if b.sshd), None)
        if owner:
            box.failed = True
            self.events.error(f"port {self.args.sshd_port} is taken by {owner}'s sshd: "
                              "only one instance at a time can run", instance=box.id)
            return
        self.start_sshd(box)

    def prepare(self, box, key_name):
        """Writes host key, authorized keys and sshd config from the user-data."""
        attribute = self.ec2.describe_instance_attribute(InstanceId=box.id, Attribute="userData")
        encoded = (attribute.get("UserData") or {}).get("Value", "")
        text = base64.b64decode(encoded).decode("utf-8", "replace")
        if text.split("\n", 1)[0].strip() != "#cloud-config":
            self.events.error("user-data is not #cloud-config", instance=box.id, head=text[:80])
            return
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            config = f"invalid YAML: {e}"
        if not isinstance(config, dict):
            self.events.error(f"user-data is not a YAML mapping: {config}", instance=box.id)
            return
        keys = config.get("ssh_keys")
        private_key = keys.get("ed25519_private") if isinstance(keys, dict) else None
        if not isinstance(private_key, str) and not self.args.wrong_host_key:
            self.events.error("user-data has no ssh_keys.ed25519_private", instance=box.id)
            return
        authorized = [k for k in config.get("ssh_authorized_keys") or [] if isinstance(k, str)]
        if key_name:
            # AWS copies the key at launch; moto keeps only its name, so a key pair deleted
            # before the simulator's first look (within one poll) is lost.
            try:
                pairs = self.ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)
                authorized += [p["PublicKey"] for p in pairs["KeyPairs"] if p.get("PublicKey")]
            except ClientError as e:
                self.events.error(f"key pair {key_name!r}: {e}", instance=box.id)
        if not authorized:
            self.events.error("no authorized key in user-data nor key pair", instance=box.id)
        self.events.emit("runcmd", instance=box.id, runcmd=config.get("runcmd"))

        box.dir.mkdir(exist_ok=True)
        box.dir.chmod(0o755)  # sshd reads authorized_keys as the login user
        host_key = box.dir / "host_key"
        host_key.unlink(missing_ok=True)
        if self.args.wrong_host_key:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wrong-host-key",
                            "-f", str(host_key)], check=True, stdin=subprocess.DEVNULL)
        else:
            host_key.write_text(private_key if private_key.endswith("\n") else private_key + "\n")
        host_key.chmod(0o600)  # sshd ignores a host key others can read
        keys_file = box.dir / "authorized_keys"
        keys_file.write_text("".join(k.strip() + "\n" for k in authorized))
        keys_file.chmod(0o644)
        # tmux and screen sockets per instance: parallel tests log in as the same local user.
        sockets = box.dir / "sockets"
        sockets.mkdir(exist_ok=True)
        os.chown(sockets, self.user.pw_uid, self.user.pw_gid)
        sockets.chmod(0o700)
        (box.dir / "sshd_config").write_text("\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {self.args.sshd_port}",
            f'HostKey "{host_key}"',
            f'AuthorizedKeysFile "{keys_file}"',
            f'PidFile "{box.dir / "sshd.pid"}"',
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",  # authorized_keys is root's, in a dir the user does not own
            f"AllowUsers {self.args.user}",
            "PermitRootLogin no",
            "AllowTcpForwarding yes",
            f'SetEnv "{MARK_VAR}={box.dir}" "TMUX_TMPDIR={sockets}" "SCREENDIR={sockets}/screen"',
            "Subsystem sftp internal-sftp",
            "PrintMotd no",
            "PrintLastLog no",
            "LogLevel VERBOSE",
            "AcceptEnv LANG LC_*",
            ""]))
        box.ready = True

    def start_sshd(self, box):
        os.makedirs("/run/sshd", exist_ok=True)
        log = box.dir / "sshd.log"
        offset = log.stat().st_size if log.exists() else 0  # -E appends across restarts
        with open(box.dir / "sshd.stderr", "ab") as stderr:
            # setpriv: sshd gets SIGTERM if this thread dies without stopping it (SIGKILL etc.).
            # Own session: sshd's per-connection children can be killed with it as one group.
            box.sshd = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "--", "/usr/sbin/sshd", "-D", "-e",
                 "-f", str(box.dir / "sshd_config"), "-E", str(log)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True)
        # sshd logs this line right after listen(); a bind failure makes it exit instead. A
        # connect probe could be answered by whoever else holds the port.
        listening = f"Server listening on 127.0.0.1 port {self.args.sshd_port}.".encode()
        deadline = time.monotonic() + SSHD_START_TIMEOUT
        delay = 0.005
        while True:
            if box.sshd.poll() is not None:
                problem = f"sshd exited with status {box.sshd.returncode}"
                break
            if log.exists() and listening in log.read_bytes()[offset:]:  # bytes: sshd writes \r\n
                self.events.emit("sshd-started", instance=box.id, port=self.args.sshd_port,
                                 pid=box.sshd.pid)
                return
            if time.monotonic() > deadline or self.halt.is_set():
                problem = f"sshd not listening after {SSHD_START_TIMEOUT} s"
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self.stop_sshd(box, None)
        box.failed = True
        tail = (box.dir / "sshd.stderr").read_bytes()[-2000:]
        if log.exists():
            tail += log.read_bytes()[offset:][-2000:]
        self.events.error(problem, instance=box.id, log=tail.decode(errors="replace"))

    def stop_sshd(self, box, state):
        """Power-off: sshd with its connections, then every process left from its sessions."""
        # Each connection's sshd runs in a session of its own: outside the listener's group.
        for pid in descendants(box.sshd.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(box.sshd.pid, signal.SIGTERM)
            box.sshd.wait(timeout=2)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(box.sshd.pid, signal.SIGKILL)  # stragglers in the group, or a stuck sshd
        except ProcessLookupError:
            pass
        box.sshd.wait()
        box.sshd = None
        kill_marked(box.mark)
        if state:
            self.events.emit("sshd-stopped", instance=box.id, state=state)


def descendants(pid):
    """Every process below PID, from /proc (children of children too)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            # The command name may hold spaces and parentheses: the fields follow the last ")".
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_marked(mark):
    """SIGKILLs every process whose environment holds MARK (VAR=value), until none is left."""
    needle = b"\0" + mark + b"\0"
    for _ in range(50):
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if needle in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
                    found = True
            except OSError:
                pass  # gone already, or a kernel thread
        if not found:
            return
        time.sleep(0.02)


def enforce_iam(endpoint):
    """Creates an IAM user allowed everything, then turns on moto's IAM enforcement: from then
    on every request must be signed by an IAM user's access key and allowed by its policies
    (moto's /moto-api/reset-auth, what set_initial_no_auth_action_count does in server mode).
    Returns the admin's key, for the ready line.

    moto checks signatures against the form body as boto3 would re-encode it (werkzeug has
    consumed the raw body), so it rejects the Rust SDK's valid signature of any value with a
    space or `*` in it (a policy document, a group description). The caller is still known by
    its access key id, which must be an IAM user's, and each action is still authorized
    against that user's policies; only the signature check is skipped."""
    from moto.iam.access_control import IAMRequestBase
    IAMRequestBase.check_signature = lambda self: None
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=endpoint)
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="everything", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request) as answer:
        answer.read()
    return {"admin_access_key_id": key["AccessKeyId"],
            "admin_secret_access_key": key["SecretAccessKey"]}


def admin_credentials(admin):
    """boto3 arguments for the admin's key; none (the default test key) without --iam."""
    if not admin:
        return {}
    return {"aws_access_key_id": admin["admin_access_key_id"],
            "aws_secret_access_key": admin["admin_secret_access_key"]}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="directory for events.jsonl, the AMI list and one folder per instance")
    parser.add_argument("--sshd-port", type=int,
                        help="127.0.0.1 port the running instance's sshd listens on "
                             "(default: a free one below the ephemeral range; see ports.py)")
    parser.add_argument("--user", default="ubuntu", help="the only user sshd lets in")
    parser.add_argument("--region", default="eu-central-1", help="the region whose instances boot")
    parser.add_argument("--boot-delay", type=float, default=0.0,
                        help="seconds from 'running' to sshd listening")
    parser.add_argument("--wrong-host-key", action="store_true",
                        help="sshd uses a fresh host key, not the one in the user-data")
    parser.add_argument("--faults", action="store_true",
                        help="put the fault-injecting proxy (faults.py) in front of moto")
    parser.add_argument("--iam", action="store_true",
                        help="moto authorizes every request against the caller's IAM policies; "
                             "the ready line gives an admin's access key")
    args = parser.parse_args()
    if args.sshd_port is None:
        args.sshd_port = ports.free_port()
    return args


def main():
    args = parse_args()
    args.state_dir = args.state_dir.resolve()
    ready_out, sys.stdout = sys.stdout, sys.stderr  # stray prints must not reach the ready line
    # These signals end the process through the same cleanup as EOF on stdin.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        pwd.getpwnam(args.user)
    except KeyError:
        sys.exit(f"cloud.py: no local user {args.user!r}: run tests/testbed/install")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    # Sessions run as args.user and read files below the state dir (a 0700 temp dir, often).
    args.state_dir.chmod(args.state_dir.stat().st_mode | 0o011)
    for parent in args.state_dir.parents:
        if not parent.stat().st_mode & 0o001:
            sys.exit(f"cloud.py: {parent} is not searchable by others; {args.user} could not log in")
    events = Events(args.state_dir / "events.jsonl")

    # moto and boto3 must see neither the caller's AWS settings nor real credentials.
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_EC2_METADATA_DISABLED="true")
    amis_path = args.state_dir / "amis.json"
    write_amis_file(amis_path)
    os.environ["MOTO_AMIS_PATH"] = str(amis_path)  # read when moto's EC2 models are imported
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    # moto and checkip serve from daemon threads: their sockets close when the process exits.
    # Shutting them down first would only add their 0.5 s poll interval to every test.
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: kernel picks
    simulator = None
    try:
        moto.start()
        endpoint = "http://%s:%d" % moto.get_host_and_port()
        admin = enforce_iam(endpoint) if args.iam else {}
        ec2 = boto3.client("ec2", region_name=args.region, endpoint_url=endpoint,
                           **admin_credentials(admin))
        images = ec2.describe_images(Owners=["amazon"])["Images"]
        missing = {ami_id for ami_id, _, _ in AMIS.values()} - {i["ImageId"] for i in images}
        if missing:
            sys.exit(f"cloud.py: moto did not load AMIs {sorted(missing)}")
        checkip = start_checkip(events)
        simulator = Simulator(args, ec2, events)
        simulator.start()
        ready = {
            # The product's endpoint; the simulator and the tests' own checks use moto's.
            "endpoint": faults.start(endpoint) if args.faults else endpoint,
            "moto_endpoint": endpoint,
            "checkip_url": "http://127.0.0.1:%d/" % checkip.server_address[1],
            "connect": f"127.0.0.1:{args.sshd_port}",
            "region": args.region,
            "amis": {key: ami_id for key, (ami_id, _, _) in AMIS.items()},
            **admin,
        }
        ready_out.write(json.dumps(ready) + "\n")
        ready_out.flush()
        # The test holds our stdin; EOF means it is done (or died).
        while sys.stdin.buffer.read1(65536):
            pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        if simulator:  # it stops every sshd on its way out
            simulator.halt.set()
            simulator.join()


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    # Cleanup is done: skip interpreter teardown, which takes ~0.5 s with moto's many modules.
    sys.stderr.flush()
    os._exit(0)
