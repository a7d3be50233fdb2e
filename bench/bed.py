"""Where the benchmarks meet the test bed (tests/testbed/cloud.py): the one place of bench/ that
knows how the simulated cloud is started, where its AWS endpoint and checkip are, how this
machine reaches a running instance's sshd, and where the instance's files are seen from here.

What it assumes of the bed today (the whole of it):
- cloud.py prints one JSON ready line with `endpoint` (the AWS API, plain HTTP), `checkip_url`,
  `region` and `connect` (HOST:PORT of the running instance's sshd, one at a time);
- the benchmarks, ssh-ec2 and OpenSSH run here, in this network namespace, and dial `connect`;
- events.jsonl says `sshd-started` with the pid of the running instance's sshd;
- an instance's home directory is /home/USER on this machine's filesystem.
A bed where each instance has its own address (a namespace on a bridge) changes `sshd_address`
(the relay of link.py dials it; POST /_link/target sets it while running) and perhaps
`instance_home`; the rest of bench/ asks only this class.
"""

import json
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / "tests/testbed/.venv/bin/python"
CLOUD = ROOT / "tests/testbed/cloud.py"
sys.path.insert(0, str(ROOT / "tests/testbed"))
from ports import free_port  # noqa: E402  (the bed's loopback ports, for servers of ours)

__all__ = ["Bed", "free_port"]


class Bed:
    """One simulated cloud, running until stop()."""

    def __init__(self, state_dir):
        self.state = Path(state_dir)
        self.state.mkdir()
        self.stderr = open(self.state / "cloud.stderr", "wb")
        # Its stdin is our pipe: when we exit, however we exit, it stops its sshds.
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

    def running(self):
        return self.process.poll() is None

    def sshd_address(self):
        """(host, port) at which this machine reaches the running instance's sshd."""
        host, port = self.ready["connect"].rsplit(":", 1)
        return host, int(port)

    def sshd_pid(self):
        """The running instance's sshd (for the CPU accounting of its side)."""
        for line in reversed((self.state / "events.jsonl").read_text().splitlines()):
            event = json.loads(line)
            if event["event"] == "sshd-started":
                return event["pid"]
            if event["event"] == "error":
                raise SystemExit(f"bench: the simulated cloud failed: {event}")
        raise SystemExit("bench: the instance's sshd did not start")

    def instance_home(self, user):
        """The instance's home directory of `user`, as a path on this machine."""
        return Path("/home", user)

    def stop(self):
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()
