"""Where the benchmarks meet the test bed (tests/testbed/cloud.py): the one place of bench/ that
knows how the simulated cloud is started, where its AWS endpoint and checkip are, where the
laptop is, how a running instance is reached, and where its files are seen from here.

What it assumes of the bed (tests/testbed/README.md):
- cloud.py prints one JSON ready line with `endpoint` (the AWS API, plain HTTP), `checkip_url`,
  `region` and `laptop.netns` (the network namespace where ssh-ec2 runs: the VPC's bridge is
  there, and the endpoint and checkip answer on the same loopback ports there);
- each running instance is a machine of its own, reached at its private address, port 22;
  events.jsonl says `sshd-started` with its id, address and pid 1 (its sshd, the ancestor of
  every process it runs), and `sshd-stopped` when it is off;
- its disk is the directory STATE/<id>/disk, whose home/USER is the instance's home.

Once the cloud is up, this process moves to the laptop (setns of its main thread): every
program the benchmarks start from then on (ssh-ec2, ssh, rsync, link.py) and every socket they
open is on the laptop, as a user's would be, with no nsenter in between to time.
"""

import json
import os
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / "tests/testbed/.venv/bin/python"
CLOUD = ROOT / "tests/testbed/cloud.py"
sys.path.insert(0, str(ROOT / "tests/testbed"))
from netns import _setns  # noqa: E402  (the bed's own setns: Python 3.11 has no os.setns)
from ports import free_port  # noqa: E402  (loopback ports for servers of ours)

__all__ = ["Bed", "free_port"]
SSH_PORT = 22


class Bed:
    """One simulated cloud, running until stop(); this process is on its laptop meanwhile."""

    def __init__(self, state_dir):
        self.state = Path(state_dir)
        self.state.mkdir()
        self.stderr = open(self.state / "cloud.stderr", "wb")
        # Its stdin is our pipe: when we exit, however we exit, it stops its machines.
        self.process = subprocess.Popen([PYTHON, CLOUD, "--state-dir", self.state],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr)
        ready, _, _ = select.select([self.process.stdout], [], [], 90)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            raise SystemExit("bench: the simulated cloud did not start:\n"
                             + (self.state / "cloud.stderr").read_text(errors="replace"))
        self.ready = json.loads(line)
        self.region = self.ready["region"]
        self.aws_endpoint = self.ready["endpoint"]
        self.checkip_url = self.ready["checkip_url"]
        self.home_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _setns(self.ready["laptop"]["netns"])

    def running(self):
        return self.process.poll() is None

    def instance(self):
        """The one running instance's `sshd-started` event (id, address, pid)."""
        up = self.instances()
        if len(up) != 1:
            raise SystemExit(f"bench: expected one running instance, the bed has {sorted(up)}")
        return next(iter(up.values()))

    def instances(self):
        """Instance id -> `sshd-started` event (id, address, pid), of every running instance."""
        up = {}
        for line in (self.state / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "sshd-started":
                up[event["instance"]] = event
            elif event["event"] == "sshd-stopped":
                up.pop(event["instance"], None)
            elif event["event"] == "error":
                raise SystemExit(f"bench: the simulated cloud failed: {event}")
        return up

    def sshd_address(self):
        """(host, port) at which the laptop reaches the running instance's sshd."""
        return self.instance()["address"], SSH_PORT

    def sshd_pid(self):
        """The running instance's pid 1, its sshd (for the CPU accounting of its side)."""
        return self.instance()["pid"]

    def instance_home(self, user, instance=None):
        """The home directory of `user` on `instance` (the one running instance by default),
        as a path on this machine."""
        return self.state / (instance or self.instance()["instance"]) / "disk/home" / user

    def stop(self):
        _setns(f"/proc/self/fd/{self.home_netns}")  # back home: the laptop goes with the cloud
        os.close(self.home_netns)
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()
