"""ssh-ec2 where its users are: issue 15's goals, measured through a simulated link.

One simulated cloud (tests/testbed/cloud.py) behind link.py (AWS round trips, EC2's state
changes at a tenth of their real pace, SSH through a relay that delays and caps the rate), and
scenarios, each on the profile its goal names:

- relay: what the relay itself carries on this machine (no delay, then `fat`);
- help: `ssh-ec2 --help`;
- calls: cold runs on loopback, counting AWS requests;
- cold: cold runs on `wan`: wall time split into the instance's boot and the rest, the wait
  from the command's last byte to the prompt, the AWS round trips before RunInstances;
- warm: `ssh-ec2 --leave true` on `wan` against OpenSSH + rsync by hand and through an open
  ControlMaster;
- files: a 10k-file tree's first run on loopback and on `wan`, against rsync over OpenSSH;
- big: one 300 MB file's first run on `fat`, against rsync over OpenSSH; ssh-ec2's peak RSS.

It prints figures and ratios (medians; ratios pair by pair, sides alternating) and asserts
nothing. See bench/README.md.
"""

import dataclasses
import os
import subprocess
import sys
import time

import runlog
from bed import free_port
from link import PROFILES
from measure import cpu_seconds, log, run_measured
from report import report
from sessions import SERVER, transfer
from sync import SyncBench
from base import MB, arguments, make_big, make_tree, parse
from timing import alternate, median

SCENARIOS = ["relay", "help", "calls", "cold", "warm", "files", "big"]
# A cold run's command: it writes a result to pull, and prints last, so that its last byte
# is the end of the command as the user sees it.
COLD_COMMAND = "ls -lR > listing.txt; echo done"


class Feel(SyncBench):
    def __init__(self, args):
        super().__init__(args)
        self.cold_project = self.work / f"{self.name}-cold"
        self.results = {}  # scenario key -> what report.py prints for it

    # -- relay

    def relay(self):
        """Bytes/s the relay carries, one way, from a local server: bare, then `fat`."""
        size = self.args.relay_mb * MB
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(size)])
        try:
            wait_for_port(port)
            self.link.call("/_link/target", {"host": "127.0.0.1", "port": port})
            for profile in ("bare", "fat"):
                self.set_profile(profile)
                cpu = cpu_seconds(self.link.process.pid)
                total, seconds = transfer(self.link.relay_address[1], size)
                cpu = (cpu_seconds(self.link.process.pid) - cpu) / total
                self.results[f"relay-{profile}"] = (size * 8 / seconds, cpu)
                log(f"relay, {profile}: {size * 8 / seconds / 1e6:.0f} Mbit/s, "
                    f"{cpu:.0%} of a core")
        finally:
            self.link.call("/_link/target", None)  # each connection's own destination again
            server.kill()
            server.wait()

    # -- help

    def help(self):
        def spawn(argv):
            started = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - started

        self.results["help"] = median(spawn([self.ssh_ec2, "--help"]) for _ in range(21))
        self.results["true"] = median(spawn(["true"]) for _ in range(21))

    # -- cold runs

    def cold(self, profile, repeat):
        """`repeat` cold runs in a directory of its own (no instance left between them: each
        run's is a new machine, with an empty disk)."""
        self.set_profile(profile)
        measures = []
        self.link.new_entries()
        for i in range(repeat):
            os.sync()
            measures.append(run_measured(
                [self.ssh_ec2, COLD_COMMAND], env=self.env(), cwd=self.cold_project,
                log_to=self.logs / f"cold-{profile}.log", lines=True))
            log(f"  cold run, {profile}: {measures[-1].seconds:.3f} s")
        time.sleep(1)  # what it left working (a helper) has had its say
        return runlog.runs_of(measures, self.link.new_entries(), PROFILES[profile])

    # -- warm runs

    def warm(self):
        """`ssh-ec2 --leave true` against the same by hand, and by hand through a ControlMaster
        opened before (untimed), on a small unchanged tree."""
        self.set_profile("wan")
        self.hold("small")
        control = ["-o", f"ControlPath={self.work}/master.sock"]
        # ControlPersist: it ends itself if this benchmark dies before closing it.
        subprocess.run([*self.ssh_words, *control, "-o", "ControlMaster=yes", "-o",
                        "ControlPersist=600", "-f", "-N", self.host], check=True,
                       stdin=subprocess.DEVNULL, timeout=60)
        mastered = [*self.ssh_words, *control, "-o", "ControlMaster=no"]
        by_hand = f"{self.name}.by-hand"
        sides = {
            "ssh-ec2": lambda log_to: run_measured(
                [self.ssh_ec2, "--leave", "true"], env=self.env(), cwd=self.project,
                log_to=log_to, lines=True),
            # A directory of their own on the instance: what they write there (rsync sets the
            # directory's times) would otherwise be news to ssh-ec2's next run, which asks the
            # instance whether anything changed since its last pull (in real use nobody else
            # syncs the same directory between two runs).
            "by hand": lambda log_to: self.run_by_hand("true", log_to, remote=by_hand),
            "ControlMaster": lambda log_to: self.run_by_hand(
                "true", log_to, ssh_words=mastered, remote=by_hand),
        }

        def once(side, probe):
            os.sync()
            return sides[side](self.logs / f"warm-{side.replace(' ', '-')}.log")

        self.link.new_entries()
        try:
            self.results["warm"] = alternate("warm", list(sides), self.args.repeat, once)
            # What each ssh-ec2 run asked AWS, for the report.
            self.results["warm-runs"] = runlog.runs_of(
                self.results["warm"].runs["ssh-ec2"], self.link.new_entries(),
                PROFILES["wan"], until_next=False)
        finally:
            subprocess.run([*mastered, "-O", "exit", self.host], stdin=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)

    # -- the sync benchmark's scenarios, on a profile

    def synced(self, key, profile, goal, repeat):
        """sync.py's scenario `key` on `profile`, with the issue's goal for its ratio."""
        self.set_profile(profile)
        s = next(s for s in self.scenarios() if s.key == key)
        s = dataclasses.replace(s, key=f"{key}-{profile}", title=f"{s.title}, {profile}",
                                goal=goal, repeat=repeat)
        self.run_scenario(s)
        self.results.setdefault("synced", []).append(s)


def wait_for_port(port, timeout=10):
    """Until something listens on 127.0.0.1:port (a probe connection would cost the server
    its one client)."""
    needle = f"0100007F:{port:04X} "
    deadline = time.monotonic() + timeout
    while not any(needle in line and line.split()[3] == "0A"  # 0A: LISTEN
                  for line in open("/proc/net/tcp")):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: nothing listens on port {port}")
        time.sleep(0.05)


def run(bench, keys):
    a = bench.args
    log("making the data")
    make_tree(bench.store / "small", a.small_files, a.small_mb, seed=2)
    if "cold" in keys or "calls" in keys:
        make_tree(bench.cold_project, a.small_files, a.small_mb, seed=3)
    if "files" in keys:
        make_tree(bench.store / "tree", a.files, a.tree_mb)
    if "big" in keys:
        make_big(bench.store / "big.bin", a.big_mb)
    bench.start_cloud()
    bench.start_link("loopback")
    steps = [
        ("relay", bench.relay),
        ("help", bench.help),
        # Cold runs first: the rest share one instance left running, the bed's only one then.
        ("calls", lambda: bench.results.update(calls=bench.cold("loopback", a.cold_repeat))),
        ("cold", lambda: bench.results.update(cold=bench.cold("wan", a.cold_repeat))),
        ("launch", bench.launch),
        ("warm", bench.warm),
        ("files", lambda: (bench.synced("first", "loopback", 1.0, a.files_repeat),
                           bench.synced("first", "wan", 1.0, a.files_repeat))),
        ("big", lambda: bench.synced("bigup", "fat", 0.5, a.big_repeat)),
    ]
    needs_instance = {"warm", "files", "big"} & set(keys)
    for key, step in steps:
        if key in keys or (key == "launch" and needs_instance):
            log(f"{key}")
            bench.set_profile("loopback")
            step()


def main():
    parser = arguments(__doc__, SCENARIOS)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of the warm runs (5)")
    parser.add_argument("--files-repeat", type=int, default=3,
                        help="rounds of the 10k-file tree, on each profile (3)")
    parser.add_argument("--cold-repeat", type=int, default=3,
                        help="cold runs, on loopback and on wan (3)")
    parser.add_argument("--big-repeat", type=int, default=2, help="rounds of the big file (2)")
    parser.add_argument("--small-files", type=int, default=100,
                        help="files in the small tree of the cold and warm runs (100)")
    parser.add_argument("--small-mb", type=int, default=1, help="MiB in them (1)")
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree (10000)")
    parser.add_argument("--tree-mb", type=int, default=40, help="MiB in the tree (40)")
    parser.add_argument("--big-mb", type=int, default=300, help="MiB in the big file (300)")
    parser.add_argument("--relay-mb", type=int, default=500,
                        help="MiB through the relay to measure it (500)")
    args, keys = parse(parser, SCENARIOS)

    bench = Feel(args)
    return bench.run_to_end(lambda: (run(bench, keys), report(bench)))


if __name__ == "__main__":
    sys.exit(main())
