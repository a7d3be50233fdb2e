"""One simulated AWS cloud for one test (or for try-it).

moto_server answers the EC2/IAM API, behind a proxy (faults.py) that mends what moto does
otherwise than AWS and injects faults on request. A boot simulator (simulator.py) gives each
running instance a machine of its own made of Linux namespaces (machines.py): its private
address on a bridge standing for the VPC, its own disk, processes and host name, and a real
OpenSSH sshd set up from its #cloud-config user-data as cloud-init would (cloudinit.py). The
bridge lives in a network namespace standing for the laptop, where the ssh-ec2 under test runs;
the proxy and a stand-in for https://checkip.amazonaws.com answer on the same loopback ports
there and here. Prints one JSON "ready" line on stdout, logs events to STATE_DIR/events.jsonl,
and exits, stopping everything it started, when stdin reaches EOF or on SIGTERM. See README.md
beside this file.
"""

import argparse
import json
import logging
import os
import pwd
import shutil
import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import boto3

import faults
import netns
from machines import Laptop
from simulator import Simulator

DEFAULT_REGION = "eu-central-1"
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


# What the machines need from this machine, by the Debian package that has it.
PROGRAMS = {"unshare": "util-linux", "nsenter": "util-linux", "setpriv": "util-linux",
            "ip": "iproute2", "nft": "nftables", "/usr/sbin/sshd": "openssh-server",
            "sudo": "sudo", "rsync": "rsync", "tmux": "tmux", "screen": "screen"}


def check_machine(user):
    """Exits saying what to do if this machine cannot run the bed."""
    if os.geteuid() != 0:
        sys.exit("cloud.py: run it as root: its instances are namespaces and mounts")
    missing = sorted({package for program, package in PROGRAMS.items()
                      if not shutil.which(program)})
    if missing:
        sys.exit(f"cloud.py: missing {', '.join(missing)}: run tests/testbed/install")
    try:
        pwd.getpwnam(user)
    except KeyError:
        sys.exit(f"cloud.py: no local user {user!r}: run tests/testbed/install")


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


def start_checkip(events, address, namespaces):
    """Stand-in for https://checkip.amazonaws.com: any GET answers `address`, the laptop's as
    the instances see it (its "public" address, that the security group lets in)."""
    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # head and body are two writes: no delayed-ACK stall

        def do_GET(self):
            with lock:
                count[0] += 1
                n = count[0]
            events.emit("checkip", count=n, path=self.path)
            body = f"{address}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # stdout is for the ready line only, stderr stays readable

    return "http://127.0.0.1:%d/" % netns.serve(Handler, namespaces)


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


class MotoLookups:
    """What faults.py asks moto directly, in any region: the subnet AWS launches in when a
    RunInstances names none, and the security groups of instances."""

    def __init__(self, endpoint, home_region, credentials):
        self.endpoint, self.home_region, self.credentials = endpoint, home_region, credentials
        self.clients = {}
        self.lock = threading.Lock()

    def ec2(self, region):
        region = region or self.home_region
        with self.lock:
            if region not in self.clients:
                self.clients[region] = boto3.client("ec2", region_name=region,
                                                    endpoint_url=self.endpoint, **self.credentials)
            return self.clients[region]

    def default_subnet(self, region, zone):
        """The default subnet of the zone asked for, else of the first zone."""
        default = [{"Name": "default-for-az", "Values": ["true"]}]
        subnets = [s for s in self.ec2(region).describe_subnets(Filters=default)["Subnets"]
                   if zone in (None, s["AvailabilityZone"])]
        return min(subnets, key=lambda s: s["AvailabilityZone"])["SubnetId"] if subnets else None

    def security_groups(self, region, instance_ids):
        """{instance id: the ids of its security groups}."""
        found = self.ec2(region).describe_instances(InstanceIds=instance_ids)["Reservations"]
        return {i["InstanceId"]: [g["GroupId"] for g in i.get("SecurityGroups", [])]
                for r in found for i in r["Instances"]}


def prepare_region(ec2):
    """Checks moto's AMIs, turns public addresses off on every subnet of the bed's region, and
    returns the default VPC's CIDR."""
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    missing = {ami_id for ami_id, _, _ in AMIS.values()} - {i["ImageId"] for i in images}
    if missing:
        sys.exit(f"cloud.py: moto did not load AMIs {sorted(missing)}")
    for subnet in ec2.describe_subnets()["Subnets"]:
        ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"],
                                    MapPublicIpOnLaunch={"Value": False})
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    return vpcs[0]["CidrBlock"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="directory for events.jsonl, the AMI list and one folder per instance")
    parser.add_argument("--user", default="ubuntu", help="the only user sshd lets in")
    parser.add_argument("--region", default=DEFAULT_REGION,
                        help="the region whose instances boot")
    parser.add_argument("--boot-delay", type=float, default=0.0,
                        help="seconds from 'running' to sshd listening")
    parser.add_argument("--wrong-host-key", action="store_true",
                        help="sshd uses a fresh host key, not the one in the user-data")
    parser.add_argument("--no-sudo", action="store_true",
                        help="the login user may not use sudo (as on some custom images)")
    parser.add_argument("--iam", action="store_true",
                        help="moto authorizes every request against the caller's IAM policies; "
                             "the ready line gives an admin's access key")
    return parser.parse_args()


def isolate_from_aws():
    """moto and boto3 must see neither the caller's AWS settings nor real credentials."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_EC2_METADATA_DISABLED="true")


def start_moto(state_dir):
    """moto_server on a free loopback port, with the bed's AMIs; returns its endpoint. It serves
    from daemon threads, whose sockets close when the process exits: shutting it down first
    would only add its 0.5 s poll interval to every test."""
    isolate_from_aws()
    amis_path = state_dir / "amis.json"
    write_amis_file(amis_path)
    os.environ["MOTO_AMIS_PATH"] = str(amis_path)  # read when moto's EC2 models are imported
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: kernel picks
    moto.start()
    return "http://%s:%d" % moto.get_host_and_port()


def serve(args, events, laptop):
    """Starts moto, the proxy, checkip and the simulator; returns the ready line and the
    simulator."""
    moto = start_moto(args.state_dir)
    admin = enforce_iam(moto) if args.iam else {}
    credentials = admin_credentials(admin)
    ec2 = boto3.client("ec2", region_name=args.region, endpoint_url=moto, **credentials)
    vpc = prepare_region(ec2)
    laptop.join(vpc)
    address = Laptop.address_in(vpc)
    lookups = MotoLookups(moto, args.region, credentials)
    simulator = Simulator(args, ec2, events, laptop)
    simulator.start()
    ready = {
        # The product's endpoint; the simulator and the tests' own checks use moto's.
        "endpoint": faults.start(moto, lookups, simulator.wake, [laptop.netns]),
        "moto_endpoint": moto,
        "checkip_url": start_checkip(events, address, [laptop.netns]),
        # Where ssh-ec2 runs: enter this network namespace (nsenter --net=...).
        "laptop": {"netns": laptop.netns, "pid": laptop.holder.pid, "address": address},
        "region": args.region,
        "amis": {key: ami_id for key, (ami_id, _, _) in AMIS.items()},
        **admin,
    }
    return ready, simulator


def main():
    args = parse_args()
    args.state_dir = args.state_dir.resolve()
    ready_out, sys.stdout = sys.stdout, sys.stderr  # stray prints must not reach the ready line
    # These signals end the process through the same cleanup as EOF on stdin.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    check_machine(args.user)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    events = Events(args.state_dir / "events.jsonl")
    laptop = simulator = None
    try:
        laptop = Laptop()
        ready, simulator = serve(args, events, laptop)
        ready_out.write(json.dumps(ready) + "\n")
        ready_out.flush()
        # The test holds our stdin; EOF means it is done (or died).
        while sys.stdin.buffer.read1(65536):
            pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        if simulator:  # it stops every machine on its way out
            simulator.stop()
        if laptop:
            laptop.stop()


def run():
    """main(), then the process's end (here or in a child of forks.py)."""
    try:
        main()
    except SystemExit as e:
        if e.code not in (None, 0):
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else 1)
    # Cleanup is done: skip interpreter teardown, which takes ~0.5 s with moto's many modules.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    run()
