"""ssh-ec2's sync benchmark: ssh-ec2 against the same steps by hand with OpenSSH and rsync.

Starts one simulated cloud (tests/testbed/cloud.py), launches one instance with ssh-ec2
(--leave), then times each scenario both ways against the very same sshd, dialled on loopback
or, with --profile wan or fat, through the simulated link of link.py:

- ssh-ec2: `ssh-ec2 --leave COMMAND` in the project directory (find the instance, connect,
  sync up, run, pull back), as a user runs it;
- by hand: `rsync -e ssh` up, `ssh HOST 'cd DIR && COMMAND'`, `rsync -e ssh` back: three
  OpenSSH connections, with ssh-ec2's login key and pinned host key, and the rsync options
  ssh-ec2 uses (src/sync/mod.rs), one plain rsync each way.

It prints the median wall time of each side, their ratio, and what explains it: the ciphers
negotiated, the local processes, their CPU time, and ssh-ec2's peak RSS. It never asserts a
timing: it is a measurement, not a test. See bench/README.md.
"""

import argparse
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bed import Bed
from link import PROFILES, LinkProcess
from measure import RUN_TIMEOUT, CpuGroup, Measure, log, run_measured
from timing import alternate, median

REMOTE_USER = "ubuntu"
# What src/sync/mod.rs gives rsync each way (ssh-ec2 adds its `-e`, its report format and the
# secrets rules). By hand, one plain pull stands for ssh-ec2's manifest-checked one (a dry run,
# then the files it decided on).
COMMON_OPTIONS = ["--compress", "--secluded-args", "--modify-window=-1", "--safe-links"]
PUSH_OPTIONS = ["--archive", "--no-owner", "--no-group", *COMMON_OPTIONS]
PULL_OPTIONS = ["--recursive", "--links", "--times", "--no-perms", "--chmod=ugo=rwX",
                *COMMON_OPTIONS]
MB = 1 << 20
# What a scenario's project directory holds -> its name in the data store (Bench.store).
PAYLOADS = {"tree": "tree", "big": "big.bin", "small": "small"}


# ---------------------------------------------------------------- the data

def make_tree(path, files, total_mb, seed=1):
    """`files` files in 100 directories, `total_mb` MiB in all; half of them random bytes,
    half text (so rsync's compression has work of both kinds)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex() for _ in range(300)]
    text = " ".join(rng.choice(words) for _ in range(400_000)).encode()
    mean = total_mb * MB // files
    for i in range(files):
        directory = path / f"d{i % 100:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(0, 2 * mean)
        if i % 2:
            start = rng.randrange(0, len(text) - size)
            data = text[start:start + size]
        else:
            data = rng.randbytes(size)
        (directory / f"f{i:05d}.dat").write_bytes(data)


def make_big(path, size_mb):
    """Random bytes: like a checkpoint of float weights, it does not compress."""
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MB))


# ---------------------------------------------------------------- the bench

@dataclass
class Scenario:
    key: str
    title: str
    payload: str          # what the project directory holds: a key of PAYLOADS
    command: str          # the remote command, run in the synced directory
    repeat: int
    reset: object = None  # untimed, before every run of either side
    check: object = None  # after every run: did it really move what it should?
    goal: float = 1.0     # the goal for the ratio (at most), or None: a reference row
    rounds: object = None  # timing.Rounds, once it has run


class Bench:
    def __init__(self, args):
        self.args = args
        self.ssh_ec2 = str(Path(args.ssh_ec2).resolve())
        self.work = Path(tempfile.mkdtemp(prefix="ssh-ec2-bench-", dir=args.tmp))
        self.work.chmod(0o711)  # sshd reads authorized_keys (in the cloud state dir) as ubuntu
        self.name = self.work.name  # the project directory's name, hence the remote one's
        self.project = self.work / self.name
        self.store = self.work / "data"
        self.home = self.work / "home"
        self.logs = self.work / "logs"
        for d in (self.project, self.store, self.home, self.logs):
            d.mkdir()
        self.trash = f"{self.name}.trash"  # earlier remote copies, set aside (in the home dir)
        self.set_aside = 0
        self.bed = self.link = None

    # -- the simulated cloud, the link to it and the instance

    def start_cloud(self, profile="loopback"):
        """The cloud, and with a profile other than loopback the simulated link (link.py) in
        front of it, which both sides then go through."""
        self.bed = Bed(self.work / "cloud")
        self.remote = self.bed.instance_home(REMOTE_USER) / self.name
        if profile != "loopback":
            self.start_link(profile)

    def start_link(self, profile):
        self.link = LinkProcess(self.bed, profile, self.logs / "link.stderr")

    def instance_up(self):
        """Has the instance been launched, and does the cloud still run?"""
        return bool(self.bed and self.bed.running() and hasattr(self, "key"))

    def profile_summary(self):
        if not self.link or not self.link.profile.relay:
            return "loopback, straight to sshd"
        p = self.link.profile
        rate = f"{p.rate / 1e6:.0f} Mbit/s" if p.rate else "no rate cap"
        return f"profile {p.name}: relay, {p.rtt * 1000:.0f} ms RTT, {rate}"

    def ssh_address(self):
        """(host, port) both sides dial: the relay of the link, or the instance's sshd."""
        return self.link.ssh_address() if self.link else self.bed.sshd_address()

    @property
    def host(self):
        return self.ssh_address()[0]

    @property
    def ssh_words(self):
        """OpenSSH as the by-hand side runs it: ssh-ec2's login key, the pinned host key."""
        return ["ssh", "-F", "/dev/null", "-p", str(self.ssh_address()[1]), "-i", str(self.key),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-l", REMOTE_USER]

    def env(self, **extra):
        aws = self.link or self.bed
        host, port = self.ssh_address()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "USER": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": aws.aws_endpoint,
            "AWS_REGION": self.bed.region,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "SSH_EC2_CONNECT": f"{host}:{port}",
            "SSH_EC2_CHECKIP_URL": aws.checkip_url,
        }
        env.update(extra)
        return env

    def launch(self):
        log("launching the instance (ssh-ec2 --leave true)")
        run_measured([self.ssh_ec2, "--leave", "true"], env=self.env(), cwd=self.project,
                     log_to=self.logs / "launch.log")
        instances = self.home / ".local/state/ssh-ec2/instances"
        (instance,) = [d for d in instances.iterdir() if d.is_dir()]
        self.key = instance / "login_ed25519"
        host_key = " ".join((instance / "host_ed25519.pub").read_text().split()[:2])
        # Pinned at every address OpenSSH may dial: sshd itself, and the relay.
        addresses = {self.bed.sshd_address()} | ({self.link.relay_address} if self.link else set())
        self.known_hosts = self.work / "known_hosts"
        self.known_hosts.write_text("".join(f"[{h}]:{p} {host_key}\n" for h, p in addresses))
        self.sshd = self.bed.sshd_pid()
        self.instance_cpu = CpuGroup(self.sshd, self.name)

    # -- the two sides

    def run_ssh_ec2(self, command, log_to, tree=False, extra_args=(), env=None):
        return run_measured([self.ssh_ec2, "--leave", *extra_args, command],
                            env=env or self.env(), cwd=self.project, log_to=log_to, tree=tree)

    def run_by_hand(self, command, log_to, tree=False, sync=True, ssh_words=None):
        """rsync up, ssh, rsync back; `ssh_words`: another OpenSSH command line (with a
        ControlPath, say) than self.ssh_words."""
        ssh_words = ssh_words or self.ssh_words
        rsh = shlex.join(ssh_words)
        total = Measure()
        if sync:
            total.add(run_measured(["rsync", *PUSH_OPTIONS, "-e", rsh, f"{self.project}/",
                                    f"{self.host}:{self.name}/"], log_to=log_to, tree=tree))
        total.add(run_measured([*ssh_words, self.host, f"cd {self.name} && {command}"],
                               log_to=log_to, tree=tree))
        if sync:
            total.add(run_measured(["rsync", *PULL_OPTIONS, "-e", rsh,
                                    f"{self.host}:{self.name}/", f"{self.project}/"],
                                   log_to=log_to, tree=tree))
        return total

    def remote_shell(self, command):
        """Untimed set-up on the instance, as its user."""
        subprocess.run([*self.ssh_words, self.host, command], check=True, timeout=RUN_TIMEOUT,
                       stdin=subprocess.DEVNULL)

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
            count = sum(len(f) for _, _, f in os.walk(self.remote))
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

    def hold(self, payload):
        """Puts this payload (only) in the project directory, and none on the instance."""
        if getattr(self, "holding", None) == payload:
            return
        for item in list(self.project.iterdir()):
            if item.name != "out.bin":
                item.rename(self.store / item.name)
        (self.project / "out.bin").unlink(missing_ok=True)
        item = PAYLOADS[payload]
        (self.store / item).rename(self.project / item)
        self.remote_shell(f"rm -rf {self.name} && mkdir {self.name}")
        self.holding = payload

    def run_scenario(self, s):
        self.hold(s.payload)
        sides = {
            "ssh-ec2": lambda log_to, tree: self.run_ssh_ec2(
                s.command, log_to, tree, ("--no-rsync",) if s.key == "nosync" else ()),
            "by hand": lambda log_to, tree: self.run_by_hand(
                s.command, log_to, tree, sync=s.key != "nosync"),
        }

        def once(side, tree):
            if s.reset:
                s.reset()
            os.sync()  # earlier writes are not flushed during the timed run
            self.instance_cpu.settle(self.sshd)
            remote_before = self.instance_cpu.seconds()
            measure = sides[side](self.logs / f"{s.key}-{side.replace(' ', '-')}.log", tree)
            self.instance_cpu.settle(self.sshd)
            if remote_before is not None:
                measure.remote_cpu = self.instance_cpu.seconds() - remote_before
            else:
                measure.remote_cpu = None
            if s.check:
                s.check()
            return measure

        # The untimed probe of each side also counts its processes (tree=True).
        s.rounds = alternate(s.key, sides, s.repeat, once)
        log(f"{s.title}: ssh-ec2 {s.rounds.median('ssh-ec2'):.3f} s, by hand "
            f"{s.rounds.median('by hand'):.3f} s, {s.rounds.ratio('ssh-ec2', 'by hand'):.2f}x")

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
        host, port = self.ssh_address()
        print(f"  both sides dial {host}:{port} ({self.profile_summary()}); by hand = rsync up "
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

    def run_to_end(self, work):
        """Runs work(), then cleans up however it ends: done, failed, Ctrl-C, SIGTERM or
        SIGHUP. Returns the exit status."""
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupted)
        try:
            work()
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        finally:
            self.cleanup()
        return 0

    def cleanup(self):
        try:
            if self.instance_up():
                self.remote_shell(f"rm -rf {self.name} {self.trash}")
        except Exception as e:  # noqa: BLE001 - cleaning up is best effort
            log(f"could not remove {self.remote}: {e}")
        if self.link:
            self.link.stop()
        if self.bed:
            self.bed.stop()
        if hasattr(self, "instance_cpu"):
            self.instance_cpu.remove()
        if self.args.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def interrupted(*_):
    raise KeyboardInterrupt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssh-ec2", required=True, help="the ssh-ec2 binary to measure")
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree (10000)")
    parser.add_argument("--tree-mb", type=int, default=40, help="MiB in the tree (40)")
    parser.add_argument("--big-mb", type=int, default=1024, help="MiB in the big file (1024)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side, tree (5)")
    parser.add_argument("--big-repeat", type=int, default=3,
                        help="timed runs per side, big file (3)")
    parser.add_argument("--only", help="comma-separated scenario keys: nosync, first, "
                        "nochange, pull1, bigup, bigdown")
    parser.add_argument("--profile", default="loopback", choices=PROFILES,
                        help="the link both sides go through (link.py; loopback: none)")
    parser.add_argument("--tmp", default="/tmp", help="where the data goes (/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    args = parser.parse_args()

    bench = Bench(args)
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
