"""ssh-ec2's sync benchmark: ssh-ec2 against the same steps by hand with OpenSSH and rsync.

Starts one simulated cloud (tests/testbed/cloud.py), launches one instance with ssh-ec2
(--leave), then times each scenario both ways from the bed's laptop against the very same sshd,
dialled at the instance's private address straight over the bed's bridge or, with --profile wan
or fat, through the simulated link of link.py:

- ssh-ec2: `ssh-ec2 --leave COMMAND` in the project directory (find the instance, connect,
  sync up, run, pull back), as a user runs it;
- by hand: `rsync -e ssh` up, `ssh HOST 'cd DIR && COMMAND'`, `rsync -e ssh` back: three
  OpenSSH connections, with ssh-ec2's login key and pinned host key, and the rsync options
  ssh-ec2 uses (src/sync/mod.rs), one plain rsync each way.

It prints the median wall time of each side, their ratio, and what explains it: the ciphers
negotiated, the local processes, their CPU time, and ssh-ec2's peak RSS. It never asserts a
timing: it is a measurement, not a test. See bench/README.md.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from base import MB, RUN_LOGS, Bench, Scenario, arguments, make_big, make_tree, parse
from link import PROFILES
from measure import log, run_measured
from timing import median


class SyncBench(Bench):
    """The sync benchmark's scenarios and report, on Bench's cloud, instance and sides."""

    # -- what each side negotiates

    def ciphers(self):
        probe = subprocess.run([*self.ssh_words, "-v", self.host, "true"], capture_output=True,
                               text=True, timeout=60)
        openssh = sorted({line.split("cipher:", 1)[1].split()[0]
                          for line in probe.stderr.splitlines() if " cipher: " in line})
        log_to = self.logs / "cipher-ssh-ec2.log"
        env = self.env(RUST_LOG="russh::client::kex=debug")
        run_measured([self.ssh_ec2, "--leave", "--no-rsync", "true"], env=env, cwd=self.project,
                     log_to=log_to)
        russh = "?"
        for line in log_to.read_text(errors="replace").splitlines():
            if "negotiated algorithms" in line:
                found = re.search(r'cipher: Name\("([^"]+)"\)', line)
                russh = found.group(1) if found else line.split("negotiated algorithms:")[1]
        return openssh, russh

    # -- scenarios

    def scenarios(self):
        a = self.args
        files = f"{a.files // 1000}k" if a.files % 1000 == 0 else str(a.files)
        tree_title = f"{files} files / {a.tree_mb} MB"
        probe_file = "tree/d00/f00000.dat"

        def wipe_remote():
            self.remote_shell(f"rm -rf {self.name}")

        def set_remote_aside():
            # Renamed, not deleted: creating 10k files right after deleting 10k others makes
            # ext4 search its inode bitmaps (recently_deleted), 1 to 5 s of CPU at random.
            # A new instance's disk has no such past. All of it is deleted at the end.
            self.set_aside += 1
            self.remote_shell(f"mkdir -p {self.trash} && mv {self.name} {self.trash}/"
                              f"{self.set_aside}")

        def check_tree_arrived():
            count = sum(len(f) for d, _, f in os.walk(self.remote)
                        if RUN_LOGS not in Path(d).relative_to(self.remote).parts)
            assert count == a.files, f"{count} files on the instance, expected {a.files}"

        def check_pulled():
            local = (self.project / probe_file).read_bytes()
            assert local == (self.remote / probe_file).read_bytes(), "the change was not pulled"

        def check_big_arrived():
            assert (self.remote / "big.bin").stat().st_size == a.big_mb * MB

        def big_back():
            (self.project / "out.bin").unlink(missing_ok=True)
            self.remote_shell(f"cd {self.name} && if [ -e out.bin ]; then mv out.bin big.bin; fi")

        def check_big_pulled():
            assert (self.project / "out.bin").stat().st_size == a.big_mb * MB

        return [
            Scenario("nosync", "no sync: the command alone", "tree", "true", a.repeat,
                     goal=None),
            Scenario("first", f"{tree_title}: first sync", "tree", "true", a.repeat,
                     reset=set_remote_aside, check=check_tree_arrived),
            Scenario("nochange", f"{tree_title}: no change", "tree", "true", a.repeat),
            Scenario("pull1", f"{tree_title}: pull 1 changed file", "tree",
                     f"head -c 4096 /dev/urandom > {probe_file}", a.repeat, check=check_pulled),
            Scenario("bigup", f"{a.big_mb} MB file: first sync", "big", "true", a.big_repeat,
                     reset=wipe_remote, check=check_big_arrived),
            # touch: a new result each time. The same file renamed back and forth would be, for
            # ssh-ec2's manifest, a file deleted here and untouched there, which stays deleted.
            Scenario("bigdown", f"{a.big_mb} MB file: pulled back", "big",
                     "mv big.bin out.bin && touch out.bin",
                     a.big_repeat, reset=big_back, check=check_big_pulled),
        ]

    # -- the report

    def report(self, scenarios, ciphers):
        openssh, russh = ciphers
        rsync_version = subprocess.run(["rsync", "--version"], capture_output=True,
                                       text=True).stdout.split("\n", 1)[0]
        ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
        version = subprocess.run([self.ssh_ec2, "--version"], capture_output=True,
                                 text=True).stdout.strip()
        print(f"ssh-ec2 sync benchmark: {version} ({self.ssh_ec2})")
        print(f"  {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end; "
              f"{rsync_version}; {ssh_version}")
        host, port = self.address
        print(f"  both sides dial {host}:{port} on the laptop ({self.profile_summary()}); "
              "by hand = rsync up "
              "+ ssh + rsync back (3 OpenSSH connections), same rsync options as ssh-ec2")
        print(f"  cipher negotiated: ssh-ec2 (russh) {russh}; by hand (OpenSSH) "
              f"{', '.join(openssh) or '?'}")
        self.report_table(scenarios)
        self.report_memory(scenarios)
        print()
        print("local processes of one untimed run, as a /proc scan every 20 ms saw them "
              "(it can miss short ones):")
        for s in scenarios:
            for side in ("ssh-ec2", "by hand"):
                m = s.rounds.probes[side]
                names = ", ".join(f"{count} {label}" for label, count in sorted(m.processes.items()))
                extra = f", ssh-ec2 threads: {m.threads}" if side == "ssh-ec2" else ""
                print(f"  {s.key:<9} {side:<8} {names} (at once: {m.most_at_once}{extra})")

    def report_table(self, scenarios):
        """Wall time and CPU of both sides, a row per scenario."""
        print()
        print(f"{'':<38} {'wall time (median)':^27}  {'CPU s, local+instance':^23}")
        print(f"{'scenario':<38} {'ssh-ec2':>8} {'by hand':>8} {'ratio':>7}  "
              f"{'ssh-ec2':>11} {'by hand':>11}  runs: wall min-max")
        for s in scenarios:
            ours, theirs = s.rounds.runs["ssh-ec2"], s.rounds.runs["by hand"]
            a, b = s.rounds.median("ssh-ec2"), s.rounds.median("by hand")

            def cpu(ms):
                local = median([m.cpu for m in ms])
                if any(m.remote_cpu is None for m in ms):
                    return f"{local:.2f}+n/a"
                return f"{local:.2f}+{median([m.remote_cpu for m in ms]):.2f}"

            goal = f"goal <= {s.goal:.2f}x" if s.goal else "reference"
            spread = f"{s.rounds.spread('ssh-ec2')} / {s.rounds.spread('by hand')}"
            ratio = s.rounds.ratio("ssh-ec2", "by hand")
            print(f"{s.title:<38} {a:>7.3f}s {b:>7.3f}s {ratio:>6.2f}x  {cpu(ours):>11} "
                  f"{cpu(theirs):>11}  {len(ours)}x: {spread} ({goal})")
        print("  wall: whole run (ssh-ec2) or the sum of its 3 steps (by hand); ratio: the "
              "median of the ratios within each round.\n  CPU: user+sys "
              "on this machine (ssh-ec2 or rsync+ssh,\n  with their children) + on the "
              "instance (sshd and the commands it ran), medians.")

    def report_memory(self, scenarios):
        big = [m for s in scenarios if s.payload == "big"
               for m in s.rounds.runs["ssh-ec2"] + [s.rounds.probes["ssh-ec2"]]]
        if big:
            hwm = max(m.root_hwm_kb for m in big) / 1024
            tree_max = max(m.maxrss_kb for m in big) / 1024
            print()
            print(f"peak RSS of ssh-ec2 during the {self.args.big_mb} MB transfers: {hwm:.1f} MB "
                  f"(goal <= 40 MB); largest local process of its run: {tree_max:.1f} MB")


def main():
    parser = arguments(__doc__)
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree (10000)")
    parser.add_argument("--tree-mb", type=int, default=40, help="MiB in the tree (40)")
    parser.add_argument("--big-mb", type=int, default=1024, help="MiB in the big file (1024)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side, tree (5)")
    parser.add_argument("--big-repeat", type=int, default=3,
                        help="timed runs per side, big file (3)")
    parser.add_argument("--only", help="comma-separated scenario keys: nosync, first, "
                        "nochange, pull1, bigup, bigdown")
    parser.add_argument("--profile", default="loopback", choices=PROFILES,
                        help="the link both sides go through (link.py; loopback: none, "
                        "straight over the bed's bridge)")
    args, _ = parse(parser)

    bench = SyncBench(args)
    return bench.run_to_end(lambda: run(bench, args))


def run(bench, args):
    log(f"data in {bench.work}: {args.files} files / {args.tree_mb} MB, "
        f"and a {args.big_mb} MB file")
    make_tree(bench.store / "tree", args.files, args.tree_mb)
    make_big(bench.store / "big.bin", args.big_mb)
    bench.start_cloud(args.profile)
    bench.launch()
    ciphers = bench.ciphers()
    scenarios = bench.scenarios()
    if args.only:
        keys = args.only.split(",")
        scenarios = [s for s in scenarios if s.key in keys]
    for s in scenarios:
        bench.run_scenario(s)
    bench.report(scenarios, ciphers)


if __name__ == "__main__":
    sys.exit(main())
