"""What the benchmarks of bench/ share: one simulated cloud (bed.py), whose laptop the benchmark
runs on, and, on a profile, the simulated link between the laptop and the cloud (link.py); one
instance launched with `ssh-ec2 --leave`; the two sides timed against it (ssh-ec2, and OpenSSH +
rsync by hand), both dialling its private address; the data they move; scenarios run in
alternating rounds (timing.py); and a clean-up however a run ends.
"""

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bed import Bed
from link import PROFILES, LinkProcess
from measure import RUN_TIMEOUT, CpuGroup, Measure, log, run_measured
from timing import alternate

REMOTE_USER = "ubuntu"
# What src/sync/mod.rs gives rsync each way (ssh-ec2 adds its `-e`, its report format and the
# secrets rules). By hand, one plain pull stands for ssh-ec2's manifest-checked one (a dry run,
# then the files it decided on).
COMMON_OPTIONS = ["--compress", "--secluded-args", "--modify-window=-1", "--safe-links"]
PUSH_OPTIONS = ["--archive", "--no-owner", "--no-group", *COMMON_OPTIONS]
PULL_OPTIONS = ["--recursive", "--links", "--times", "--no-perms", "--chmod=ugo=rwX",
                *COMMON_OPTIONS]
MB = 1 << 20
# Where ssh-ec2 keeps the runs' logs in the project (they come home with the results): its own,
# not a payload.
RUN_LOGS = "ssh-ec2-logs"
# What a scenario's project directory holds -> its name in the data store (Bench.store).
PAYLOADS = {"tree": "tree", "big": "big.bin", "small": "small"}


# ---------------------------------------------------------------- the command line

def arguments(doc, scenarios=None):
    """A benchmark's parser, with what every benchmark takes (and `--only`, given its
    scenarios); it adds its own options, then calls `parse`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--ssh-ec2", required=True, help="the ssh-ec2 binary to measure")
    parser.add_argument("--tmp", default="/tmp", help="where the data goes (/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    if scenarios:
        parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(scenarios))
    return parser


def parse(parser, scenarios=None):
    """(args, the scenarios to run: those of `--only`, or all of them)."""
    args = parser.parse_args()
    if not scenarios:
        return args, None
    keys = args.only.split(",") if args.only else scenarios
    if unknown := set(keys) - set(scenarios):
        parser.error(f"no scenario {', '.join(sorted(unknown))}")
    return args, keys


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
        self.work.chmod(0o711)  # the instances' disks are in it (the cloud's state dir)
        self.name = self.work.name  # the project directory's name, hence the remote one's
        self.project = self.work / self.name
        self.store = self.work / "data"
        self.home = self.work / "home"
        self.logs = self.work / "logs"
        for d in (self.project, self.store, self.home, self.logs):
            d.mkdir()
        self.trash = f"{self.name}.trash"  # earlier remote copies, set aside (in the home dir)
        self.address = None  # (private address, 22) of the instance (launch)
        self.remote = None   # the project's copy on the instance, as a path here (launch)
        self.set_aside = 0
        self.bed = self.link = None

    # -- the simulated cloud, the link to it and the instance

    def start_cloud(self, profile="loopback"):
        """The cloud, and with a profile other than loopback the simulated link (link.py) in
        front of it, which both sides then go through."""
        self.bed = Bed(self.work / "cloud")
        if profile != "loopback":
            self.start_link(profile)

    def set_profile(self, name):
        """Switches the link's profile. A connection ssh-ec2 kept after a run (its holder's, see
        docs/how-it-works.md) was made under the profile before and would carry later runs past
        the new one's relay (or through the old one): it is ended first, and the next run makes
        one through the new profile's link."""
        self.end_kept_connections()
        self.link.set_profile(name)

    def end_kept_connections(self):
        """Ends every holder of this ssh-ec2, those still connecting too (a run's holder starts
        as the run ends), and takes their sockets away: the next run dials, and keeps anew."""
        holders = []
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [self.ssh_ec2.encode(), b"--hold-connection"]:
                holders.append(int(entry.name))
                os.kill(int(entry.name), signal.SIGTERM)
        for socket in (self.home / ".local/state/ssh-ec2/instances").glob("*/held.sock"):
            socket.with_suffix(".json").unlink(missing_ok=True)
            socket.unlink(missing_ok=True)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in holders):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ssh-ec2's holders {holders} did not end")
            time.sleep(0.05)

    def start_link(self, profile):
        self.link = LinkProcess(self.bed, profile, self.logs / "link.stderr")

    def profile_summary(self):
        if not self.link or not self.link.profile.relay:
            return "straight to sshd over the VPC's bridge"
        p = self.link.profile
        rate = f"{p.rate / 1e6:.0f} Mbit/s" if p.rate else "no rate cap"
        return f"profile {p.name}: through the relay, {p.rtt * 1000:.0f} ms RTT, {rate}"

    @property
    def host(self):
        """The address both sides dial: the instance's private one (port 22: self.address)."""
        return self.address[0]

    @property
    def ssh_words(self):
        """OpenSSH as the by-hand side runs it: ssh-ec2's login key, the pinned host key."""
        return ["ssh", "-F", "/dev/null", "-p", str(self.address[1]), "-i", str(self.key),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-l", REMOTE_USER]

    def env(self, **extra):
        aws = self.link or self.bed
        env = {
            # ssh-ec2 finds the instance's address itself: the private one (the bed's
            # instances have no other); the link's relay, if any, is in the way on the laptop.
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "USER": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": aws.aws_endpoint,
            "AWS_REGION": self.bed.region,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
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
        self.address = self.bed.sshd_address()
        self.remote = self.bed.instance_home(REMOTE_USER) / self.name
        self.known_hosts = self.work / "known_hosts"
        self.known_hosts.write_text(f"{self.host} {host_key}\n")  # port 22: no [host]:port
        # The instance's pid 1: every process of the instance descends from it.
        self.sshd = self.bed.sshd_pid()
        self.instance_cpu = CpuGroup(self.sshd, self.name)

    # -- the two sides

    def run_ssh_ec2(self, command, log_to, tree=False, extra_args=(), env=None):
        return run_measured([self.ssh_ec2, "--leave", *extra_args, command],
                            env=env or self.env(), cwd=self.project, log_to=log_to, tree=tree)

    def run_by_hand(self, command, log_to, tree=False, sync=True, ssh_words=None, remote=None):
        """rsync up, ssh, rsync back; `ssh_words`: another OpenSSH command line (with a
        ControlPath, say) than self.ssh_words; `remote`: another directory on the instance
        than ssh-ec2's (by default the same)."""
        ssh_words = ssh_words or self.ssh_words
        remote = remote or self.name
        rsh = shlex.join(ssh_words)
        total = Measure()
        if sync:
            total.add(run_measured(["rsync", *PUSH_OPTIONS, "-e", rsh, f"{self.project}/",
                                    f"{self.host}:{remote}/"], log_to=log_to, tree=tree))
        total.add(run_measured([*ssh_words, self.host, f"cd {remote} && {command}"],
                               log_to=log_to, tree=tree))
        if sync:
            total.add(run_measured(["rsync", *PULL_OPTIONS, "-e", rsh,
                                    f"{self.host}:{remote}/", f"{self.project}/"],
                                   log_to=log_to, tree=tree))
        return total

    def remote_shell(self, command):
        """Untimed set-up on the instance, as its user."""
        subprocess.run([*self.ssh_words, self.host, command], check=True, timeout=RUN_TIMEOUT,
                       stdin=subprocess.DEVNULL)

    # -- one scenario, both sides in alternating rounds

    def hold(self, payload):
        """Puts this payload (only) in the project directory, and none on the instance."""
        if getattr(self, "holding", None) == payload:
            return
        for item in list(self.project.iterdir()):
            if item.name == RUN_LOGS:
                shutil.rmtree(item)
            elif item.name != "out.bin":
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

    def print_header(self, title, profiles):
        """A report's first lines: the binary, the machine, the link's profiles it used."""
        version = subprocess.run([self.ssh_ec2, "--version"], capture_output=True,
                                 text=True).stdout.strip()
        print(f"{title}: {version} ({self.ssh_ec2})")
        print(f"  {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end")
        for name in profiles:
            p = PROFILES[name]
            print(f"  profile {name}: SSH through the relay, {p.rtt * 1000:.0f} ms RTT, "
                  f"{p.rate / 1e6:.0f} Mbit/s each way on one line for every connection; AWS "
                  f"requests {p.rtt * 1000:.0f} ms each, +{p.tls_rtts} round trips per new "
                  f"HTTPS connection; EC2 states at {p.pace:g} of the real pace")

    # -- the end

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
        """The instance's disk is in the work directory: it goes with it."""
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
