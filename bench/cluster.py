"""Clusters (issue 12) where users are: what `--nodes 4` costs over one machine, measured on
the test bed's machines through the simulated link (link.py):

- launch, on `wan`: cold runs of `ssh-ec2 --nodes 4 'echo started'` against the same with one
  node, in directories of 100 files / 1 MB and no instance (launch, sync, run, pull,
  terminate), sides alternating. The launch is the time from ssh-ec2's start to the last
  node's `started` line: what the user waits for before the work begins on every node. The
  whole run's wall time is given too.
- upload, on `uplink` (20 Mbit/s each way, one line shared by every connection, as a home
  upload is): a 4-node cluster left running; `ssh-ec2 --nodes 4 --leave true` in a directory
  the nodes do not have (every node's copy set aside before each run), against four rsyncs
  started at once from the laptop, one to each node, with the login key, the pinned host keys
  and the rsync options ssh-ec2 uses (the workers through the head, as ssh-ec2 reaches them:
  they take SSH from nowhere else). ssh-ec2's side is its whole run; by hand, the uploads alone.

Prints figures and ratios (medians; ratios pair by pair, sides alternating) and asserts
nothing. See bench/README.md.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from base import PUSH_OPTIONS, REMOTE_USER, Bench, arguments, make_tree, parse
from measure import RUN_TIMEOUT, log, run_measured
from timing import alternate, median

SCENARIOS = ["launch", "upload"]
NODES = 4
STARTED = "started"


@dataclass
class Launch:
    seconds: float  # from ssh-ec2's start to the last node's `started` line
    wall: float     # the whole run


@dataclass
class Upload:
    seconds: float  # the upload: ssh-ec2's sync phase (the push, then the fan-out), or the rsyncs
    whole: float    # the whole run (ssh-ec2), or the rsyncs again (by hand)
    bytes_up: int   # SSH bytes from the laptop onto the link during the run


class ClusterBench(Bench):
    def __init__(self, args):
        super().__init__(args)
        self.results = {}
        self.nodes = []   # the cluster's private addresses, rank order (launch_cluster)
        self.copies = []  # the project's copy on each node, as paths here
        self.uploaded = []  # the files to upload, relative to the project (make_upload)

    # -- launch

    def launches(self):
        """Cold runs of one node and of NODES, alternating, each in a directory of its own."""
        self.set_profile("wan")
        projects = {}
        for nodes in (1, NODES):
            projects[nodes] = self.work / f"{self.name}-{nodes}"
            make_tree(projects[nodes], self.args.small_files, self.args.small_mb, seed=3)
        sides = {"1 node": 1, f"{NODES} nodes": NODES}

        def once(side, probe):
            nodes = sides[side]
            os.sync()
            m = run_measured([self.ssh_ec2, "--nodes", str(nodes), f"echo {STARTED}"],
                             env=self.env(), cwd=projects[nodes],
                             log_to=self.logs / f"launch-{nodes}.log", lines=True)
            started = [t for t, stream, text in m.lines
                       if stream == "stdout" and text.endswith(STARTED)]
            if len(started) != nodes:
                raise SystemExit(f"bench: {len(started)} `{STARTED}` lines from {nodes} "
                                 f"nodes: see {self.logs}/launch-{nodes}.log")
            return Launch(max(started) - m.started_at, m.seconds)

        self.results["launch"] = alternate("launch", list(sides), self.args.launch_repeat, once)

    # -- upload

    def launch_cluster(self):
        """A cluster left running for the uploads (on loopback, untimed), and what the by-hand
        side needs of it: addresses, the login key, every node's pinned host key."""
        log(f"launching a {NODES}-node cluster (ssh-ec2 --nodes {NODES} --leave true)")
        self.set_profile("loopback")
        run_measured([self.ssh_ec2, "--nodes", str(NODES), "--leave", "true"], env=self.env(),
                     cwd=self.project, log_to=self.logs / "cluster-launch.log")
        listing = subprocess.run([self.ssh_ec2, "--list", "--json"], env=self.env(),
                                 cwd=self.project, capture_output=True, text=True, check=True)
        (row,) = [r for r in json.loads(listing.stdout)
                  if r["directory"] == str(self.project) and r["state"] == "running"]
        ids = row["instances"]  # rank order: the head first
        up = self.bed.instances()
        keys = self.home / ".local/state/ssh-ec2/instances"
        self.nodes = [up[i]["address"] for i in ids]
        self.address = (self.nodes[0], 22)
        self.key = keys / ids[0] / "login_ed25519"
        self.known_hosts = self.work / "known_hosts"
        self.known_hosts.write_text("".join(
            f"{up[i]['address']} {' '.join((keys / i / 'host_ed25519.pub').read_text().split()[:2])}\n"
            for i in ids))
        self.copies = [self.bed.instance_home(REMOTE_USER, i) / self.name for i in ids]

    def set_copies_aside(self):
        """Renamed, not deleted (see sync.py: ext4's cost of files created next to many just
        deleted); all of it goes with the work directory."""
        for copy in self.copies:
            if copy.exists():
                self.set_aside += 1
                trash = copy.parent / self.trash
                trash.mkdir(exist_ok=True)
                copy.rename(trash / str(self.set_aside))

    def make_upload(self):
        make_tree(self.project, self.args.files, self.args.upload_mb, seed=4)
        self.uploaded = [p.relative_to(self.project) for p in self.project.rglob("*")
                         if p.is_file()]

    def check_copies(self):
        for rank, copy in enumerate(self.copies):
            missing = [f for f in self.uploaded if not (copy / f).is_file()]
            assert not missing, f"node {rank} lacks {len(missing)} files, {missing[0]} first"

    def four_rsyncs(self, log_to):
        """One rsync per node, started together; seconds until the last has finished."""
        jump = shlex.join([*self.ssh_words, "-W", "%h:%p", self.nodes[0]])
        with open(log_to, "ab") as out:
            started = time.perf_counter()
            rsyncs = []
            for rank, address in enumerate(self.nodes):
                ssh = self.ssh_words if rank == 0 else [*self.ssh_words, "-o",
                                                        f"ProxyCommand={jump}"]
                argv = ["rsync", *PUSH_OPTIONS, "-e", shlex.join(ssh), f"{self.project}/",
                        f"{address}:{self.name}/"]
                out.write(f"$ {shlex.join(argv)}\n".encode())
                rsyncs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=out))
            codes = [r.wait(timeout=RUN_TIMEOUT) for r in rsyncs]
            seconds = time.perf_counter() - started
        if any(codes):
            raise SystemExit(f"bench: an rsync by hand failed ({codes}): see {log_to}")
        return seconds

    def ssh_ec2_upload(self, log_to):
        """A whole run; (its sync phase, from `syncing` to `synced` on stderr, the whole)."""
        m = run_measured([self.ssh_ec2, "--nodes", str(NODES), "--leave", "true"],
                         env=self.env(), cwd=self.project, log_to=log_to, lines=True)

        def at(words):
            return next(t for t, stream, text in m.lines if stream == "stderr" and words in text)

        return at("synced to") - at("syncing this directory"), m.seconds

    def uploads(self):
        self.set_profile("uplink")
        def by_hand(log_to):
            seconds = self.four_rsyncs(log_to)
            return seconds, seconds

        sides = {"ssh-ec2": self.ssh_ec2_upload, "by hand": by_hand}

        def once(side, probe):
            self.set_copies_aside()
            os.sync()
            self.link.new_entries()
            upload, whole = sides[side](self.logs / f"upload-{side.replace(' ', '-')}.log")
            self.check_copies()
            time.sleep(0.5)  # the relay notes a connection once both its ends have closed
            sent = sum(e["up"] for e in self.link.new_entries() if e["kind"] == "ssh")
            return Upload(upload, whole, sent)

        self.results["upload"] = alternate("upload", list(sides), self.args.upload_repeat, once)

    # -- the report

    def report(self):
        r = self.results
        self.print_header("ssh-ec2 clusters", ("wan", "uplink"))
        print()
        print(f"  {'goal':<66} {'today':>7}   target")
        if "launch" in r:
            ratio = r["launch"].ratio(f"{NODES} nodes", "1 node")
            print(f"  {f'launch to the command on every node, wan: {NODES} nodes / 1':<66} "
                  f"{ratio:>6.2f}x   <= 1.3x")
        if "upload" in r:
            rounds = r["upload"]
            ratio = rounds.ratio("ssh-ec2", "by hand")
            print(f"  {f'upload to {NODES} nodes, uplink: ssh-ec2 / {NODES} rsyncs at once':<66} "
                  f"{ratio:>6.2f}x   <= 0.35x")
            whole = median(a.whole / b.whole for a, b in
                           zip(rounds.runs["ssh-ec2"], rounds.runs["by hand"]))
            print(f"  {'  the same with the whole ssh-ec2 run':<66} {whole:>6.2f}x")
        if "launch" in r:
            rounds = r["launch"]
            print(f"\ncold runs (`ssh-ec2 --nodes N 'echo {STARTED}'`, {self.args.small_files} "
                  f"files / {self.args.small_mb} MB), wan, {len(rounds.runs['1 node'])} rounds:")
            for side, runs in rounds.runs.items():
                print(f"  {side:<9} to the command on every node {rounds.median(side):6.3f} s "
                      f"(spread {rounds.spread(side)}), whole run "
                      f"{median(m.wall for m in runs):6.3f} s")
        if "upload" in r:
            rounds = r["upload"]
            print(f"\nupload of {self.args.files} files / {self.args.upload_mb} MB to {NODES} "
                  f"nodes, uplink, {len(rounds.runs['ssh-ec2'])} rounds:")
            for side, runs in rounds.runs.items():
                sent = median(m.bytes_up for m in runs) / 1e6
                print(f"  {side:<8} upload {rounds.median(side):7.3f} s (spread "
                      f"{rounds.spread(side)}), whole {median(m.whole for m in runs):7.3f} s, "
                      f"{sent:.1f} MB up the link")
            print("  ssh-ec2's upload: its sync phase (the push to the head, then the copy from "
                  "the head to the others);\n  its whole run adds finding the cluster, reaching "
                  "its nodes, `true` and the pull; by hand: the four rsyncs")


def run(bench, keys):
    if "upload" in keys:
        bench.make_upload()
    bench.start_cloud()
    bench.start_link("loopback")
    if "launch" in keys:  # first: the bed then has no other instance
        log("launch")
        bench.launches()
    if "upload" in keys:
        bench.launch_cluster()
        log("upload")
        bench.uploads()
    bench.report()


def main():
    parser = arguments(__doc__, SCENARIOS)
    parser.add_argument("--launch-repeat", type=int, default=3,
                        help="rounds of cold runs, one node and four (3)")
    parser.add_argument("--upload-repeat", type=int, default=3, help="rounds of uploads (3)")
    parser.add_argument("--small-files", type=int, default=100,
                        help="files in the cold runs' directories (100)")
    parser.add_argument("--small-mb", type=int, default=1, help="MiB in them (1)")
    parser.add_argument("--files", type=int, default=200, help="files uploaded (200)")
    parser.add_argument("--upload-mb", type=int, default=24, help="MiB in them (24)")
    args, keys = parse(parser, SCENARIOS)

    bench = ClusterBench(args)
    return bench.run_to_end(lambda: run(bench, keys))


if __name__ == "__main__":
    sys.exit(main())
