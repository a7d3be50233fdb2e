"""ssh-ec2's sync benchmark: ssh-ec2 against the same steps by hand with OpenSSH and rsync.

Starts one simulated cloud (tests/testbed/cloud.py), launches one instance with ssh-ec2
(--leave), then times each scenario both ways against the very same loopback sshd:

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
import json
import os
import random
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOUD = ROOT / "tests/testbed/cloud.py"
sys.path.insert(0, str(ROOT / "tests/testbed"))
from ports import free_port  # noqa: E402  (the test bed's, for servers that bind later)
REMOTE_USER = "ubuntu"
# What src/sync/mod.rs gives rsync each way (ssh-ec2 adds its `-e`, its report format and the
# secrets rules). By hand, one plain pull stands for ssh-ec2's manifest-checked one (a dry run,
# then the files it decided on).
COMMON_OPTIONS = ["--compress", "--secluded-args", "--modify-window=-1", "--safe-links"]
PUSH_OPTIONS = ["--archive", "--no-owner", "--no-group", *COMMON_OPTIONS]
PULL_OPTIONS = ["--recursive", "--links", "--times", "--no-perms", "--chmod=ugo=rwX",
                *COMMON_OPTIONS]
RUN_TIMEOUT = 600  # seconds, for any one command
MB = 1 << 20


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)




def median(values):
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- measuring one process tree

def proc_table():
    """pid -> (ppid, label) for every process, from /proc."""
    table = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        table[int(pid)] = (ppid, label_of([a.decode(errors="replace") for a in argv if a]))
    return table


def label_of(argv):
    if not argv:
        return "?"
    name = os.path.basename(argv[0])
    if "--rsync-transport" in argv:
        return "ssh-ec2 --rsync-transport"
    if name == "exe" or name == "ssh-ec2":
        return "ssh-ec2"
    return name


def status_kb(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class Watcher(threading.Thread):
    """Polls the root process's peak RSS (VmHWM) and thread count; with `tree`, also every
    process below it (a /proc scan costs CPU, so only on the untimed probe runs)."""

    def __init__(self, pid, tree):
        super().__init__(daemon=True)
        self.pid, self.tree = pid, tree
        self.hwm_kb = 0
        self.threads = 0
        self.seen = {}         # pid -> label, every process of the tree
        self.most_at_once = 0  # processes alive together, the root included
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.02 if self.tree else 0.05):
            self.hwm_kb = max(self.hwm_kb, status_kb(self.pid, "VmHWM") or 0)
            self.threads = max(self.threads, status_kb(self.pid, "Threads") or 0)
            if self.tree:
                table = proc_table()
                alive = {self.pid}
                frontier = [self.pid]
                while frontier:
                    parent = frontier.pop()
                    for pid, (ppid, _) in table.items():
                        if ppid == parent and pid not in alive:
                            alive.add(pid)
                            frontier.append(pid)
                for pid in alive:
                    if pid in table:
                        self.seen.setdefault(pid, table[pid][1])
                self.most_at_once = max(self.most_at_once, len(alive & table.keys()))


@dataclass
class Measure:
    """One command, or the sum of the by-hand steps."""
    seconds: float = 0.0
    cpu: float = 0.0          # user + sys of the local processes (waited-for children included)
    remote_cpu: float = 0.0   # user + sys of the instance's side: sshd and what it ran
    maxrss_kb: int = 0        # largest local process (wait4's ru_maxrss)
    root_hwm_kb: int = 0      # peak RSS of the command itself (VmHWM polled)
    threads: int = 0
    processes: dict = field(default_factory=dict)  # label -> count
    most_at_once: int = 0

    def add(self, other):
        self.seconds += other.seconds
        self.cpu += other.cpu
        self.remote_cpu += other.remote_cpu
        self.maxrss_kb = max(self.maxrss_kb, other.maxrss_kb)
        self.root_hwm_kb = max(self.root_hwm_kb, other.root_hwm_kb)
        self.threads = max(self.threads, other.threads)
        for label, count in other.processes.items():
            self.processes[label] = self.processes.get(label, 0) + count
        self.most_at_once = max(self.most_at_once, other.most_at_once)


def run_measured(argv, *, env=None, cwd=None, log_to, tree=False):
    """Runs argv to the end and measures it; fails with its output if it fails."""
    with open(log_to, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        started = time.perf_counter()
        child = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=out, start_new_session=True)
        watcher = Watcher(child.pid, tree)
        watcher.start()
        timer = threading.Timer(RUN_TIMEOUT, lambda: os.killpg(child.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
            watcher.done.set()
            watcher.join()
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = Path(log_to).read_text(errors="replace")[-3000:]
        raise SystemExit(f"bench: `{shlex.join(argv)}` exited {child.returncode}:\n{tail}")
    processes = {}
    for label in watcher.seen.values():
        processes[label] = processes.get(label, 0) + 1
    return Measure(seconds=seconds, cpu=usage.ru_utime + usage.ru_stime,
                   maxrss_kb=usage.ru_maxrss, root_hwm_kb=watcher.hwm_kb,
                   threads=watcher.threads, processes=processes,
                   most_at_once=watcher.most_at_once)


class CpuGroup:
    """CPU time of a process and of everything it ever starts, exited processes included: a
    cgroup of its own (cgroup v1 cpuacct, else v2). sshd does not wait for all of its session
    processes, so wait4-style accounting would miss them. Best effort: None when unavailable."""

    def __init__(self, pid, name):
        self.path = None
        for root, usage in ((Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage"),
                            (Path("/sys/fs/cgroup"), "cpu.stat")):
            if not (root / usage).exists() and not (root / "cgroup.controllers").exists():
                continue
            path = root / name
            try:
                path.mkdir()
                (path / "cgroup.procs").write_text(str(pid))
            except OSError:
                try:
                    path.rmdir()
                except OSError:
                    pass
                continue
            self.path, self.usage_file = path, path / usage
            return

    def seconds(self):
        if self.path is None:
            return None
        text = self.usage_file.read_text()
        if self.usage_file.name == "cpuacct.usage":
            return int(text) / 1e9
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6

    def settle(self, keep):
        """Waits (up to 10 s) until only `keep` is left: sessions outlive their client a bit."""
        if self.path is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = (self.path / "cgroup.procs").read_text().split()
            if pids == [str(keep)] or not pids:
                return
            time.sleep(0.01)

    def remove(self):
        """Once every process in it has exited."""
        if self.path is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        log(f"could not remove the cgroup {self.path}")


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
    payload: str          # "tree" or "big": what the project directory holds
    command: str          # the remote command, run in the synced directory
    repeat: int
    reset: object = None  # untimed, before every run of either side
    check: object = None  # after every run: did it really move what it should?
    goal: bool = True     # one of the goals (<= 1.0x), or a reference row
    results: dict = field(default_factory=lambda: {"ssh-ec2": [], "by hand": []})
    probes: dict = field(default_factory=dict)


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
        self.remote = Path("/home", REMOTE_USER, self.name)
        self.trash = f"{self.name}.trash"  # earlier remote copies, set aside (in the home dir)
        self.set_aside = 0
        self.cloud = None

    # -- the simulated cloud and the instance

    def start_cloud(self):
        state = self.work / "cloud"
        state.mkdir()
        port = free_port()
        python = ROOT / "tests/testbed/.venv/bin/python"
        self.cloud_stderr = open(state / "cloud.stderr", "wb")
        # Its stdin is our pipe: when we exit, however we exit, it stops its sshds.
        self.cloud = subprocess.Popen([python, CLOUD, "--state-dir", state, "--sshd-port",
                                       str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self.cloud_stderr)
        ready, _, _ = select.select([self.cloud.stdout], [], [], 90)
        line = self.cloud.stdout.readline() if ready else b""
        if not line:
            raise SystemExit("bench: the simulated cloud did not start:\n"
                             + (state / "cloud.stderr").read_text(errors="replace"))
        self.bed = json.loads(line)
        self.port = port
        self.cloud_state = state

    def sshd_pid(self):
        """The running instance's sshd (it is started once the instance runs)."""
        for line in reversed((self.cloud_state / "events.jsonl").read_text().splitlines()):
            event = json.loads(line)
            if event["event"] == "sshd-started":
                return event["pid"]
            if event["event"] == "error":
                raise SystemExit(f"bench: the simulated cloud failed: {event}")
        raise SystemExit("bench: the instance's sshd did not start")

    def stop_cloud(self):
        if self.cloud:
            self.cloud.stdin.close()
            try:
                self.cloud.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.cloud.kill()
                self.cloud.wait()
            self.cloud_stderr.close()

    def env(self, **extra):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "USER": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": self.bed["endpoint"],
            "AWS_REGION": self.bed["region"],
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "SSH_EC2_CONNECT": self.bed["connect"],
            "SSH_EC2_CHECKIP_URL": self.bed["checkip_url"],
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
        host_key = (instance / "host_ed25519.pub").read_text().split()
        self.known_hosts = self.work / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n")
        self.ssh_words = [
            "ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.key),
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-l", REMOTE_USER]
        self.host = "127.0.0.1"
        self.sshd = self.sshd_pid()
        self.instance_cpu = CpuGroup(self.sshd, self.name)

    # -- the two sides

    def run_ssh_ec2(self, command, log_to, tree=False, extra_args=(), env=None):
        return run_measured([self.ssh_ec2, "--leave", *extra_args, command],
                            env=env or self.env(), cwd=self.project, log_to=log_to, tree=tree)

    def run_by_hand(self, command, log_to, tree=False, sync=True):
        rsh = shlex.join(self.ssh_words)
        total = Measure()
        if sync:
            total.add(run_measured(["rsync", *PUSH_OPTIONS, "-e", rsh, f"{self.project}/",
                                    f"{self.host}:{self.name}/"], log_to=log_to, tree=tree))
        total.add(run_measured([*self.ssh_words, self.host, f"cd {self.name} && {command}"],
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
                     goal=False),
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
        if payload == "tree":
            (self.store / "tree").rename(self.project / "tree")
        else:
            (self.store / "big.bin").rename(self.project / "big.bin")
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

        # An untimed probe per side first: it warms the caches and counts processes.
        for side in sides:
            s.probes[side] = once(side, tree=True)
        for i in range(s.repeat):
            for side in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                m = once(side, tree=False)
                s.results[side].append(m)
                remote = "n/a" if m.remote_cpu is None else f"{m.remote_cpu:.2f}"
                log(f"  {s.key} {side}: {m.seconds:.3f} s, CPU {m.cpu:.2f}+{remote} s")
        a, b = (median([m.seconds for m in s.results[side]]) for side in sides)
        log(f"{s.title}: ssh-ec2 {a:.3f} s, by hand {b:.3f} s, {a / b:.2f}x")

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
        print(f"  one sshd on 127.0.0.1:{self.port} for both sides; by hand = rsync up + ssh + "
              "rsync back (3 OpenSSH connections), same rsync options as ssh-ec2")
        print(f"  cipher negotiated: ssh-ec2 (russh) {russh}; by hand (OpenSSH) "
              f"{', '.join(openssh) or '?'}")
        print()
        print(f"{'':<38} {'wall time (median)':^27}  {'CPU s, local+instance':^23}")
        print(f"{'scenario':<38} {'ssh-ec2':>8} {'by hand':>8} {'ratio':>7}  "
              f"{'ssh-ec2':>11} {'by hand':>11}  runs: wall min-max")
        for s in scenarios:
            ours, theirs = s.results["ssh-ec2"], s.results["by hand"]
            a, b = median([m.seconds for m in ours]), median([m.seconds for m in theirs])

            def cpu(ms):
                local = median([m.cpu for m in ms])
                if any(m.remote_cpu is None for m in ms):
                    return f"{local:.2f}+n/a"
                return f"{local:.2f}+{median([m.remote_cpu for m in ms]):.2f}"

            goal = "goal <= 1.00x" if s.goal else "reference"
            spread = (f"{min(m.seconds for m in ours):.2f}-{max(m.seconds for m in ours):.2f} / "
                      f"{min(m.seconds for m in theirs):.2f}-{max(m.seconds for m in theirs):.2f}")
            print(f"{s.title:<38} {a:>7.3f}s {b:>7.3f}s {a / b:>6.2f}x  {cpu(ours):>11} "
                  f"{cpu(theirs):>11}  {len(ours)}x: {spread} ({goal})")
        print("  wall: whole run (ssh-ec2) or the sum of its 3 steps (by hand). CPU: user+sys "
              "on this machine (ssh-ec2 or rsync+ssh,\n  with their children) + on the "
              "instance (sshd and the commands it ran), medians.")
        big = [m for s in scenarios if s.payload == "big"
               for m in s.results["ssh-ec2"] + [s.probes["ssh-ec2"]]]
        if big:
            hwm = max(m.root_hwm_kb for m in big) / 1024
            tree_max = max(m.maxrss_kb for m in big) / 1024
            print()
            print(f"peak RSS of ssh-ec2 during the {self.args.big_mb} MB transfers: {hwm:.1f} MB "
                  f"(goal <= 40 MB); largest local process of its run: {tree_max:.1f} MB")
        print()
        print("local processes of one untimed run, as a /proc scan every 20 ms saw them "
              "(it can miss short ones):")
        for s in scenarios:
            for side in ("ssh-ec2", "by hand"):
                m = s.probes[side]
                names = ", ".join(f"{count} {label}" for label, count in sorted(m.processes.items()))
                extra = f", ssh-ec2 threads: {m.threads}" if side == "ssh-ec2" else ""
                print(f"  {s.key:<9} {side:<8} {names} (at once: {m.most_at_once}{extra})")

    def cleanup(self):
        try:
            if self.cloud and self.cloud.poll() is None and hasattr(self, "ssh_words"):
                self.remote_shell(f"rm -rf {self.name} {self.trash}")
        except Exception as e:  # noqa: BLE001 - cleaning up is best effort
            log(f"could not remove {self.remote}: {e}")
        self.stop_cloud()
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
    parser.add_argument("--tmp", default="/tmp", help="where the data goes (/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    args = parser.parse_args()

    bench = Bench(args)
    # SIGTERM/SIGHUP end the run through the same cleanup as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    try:
        log(f"data in {bench.work}: {args.files} files / {args.tree_mb} MB, "
            f"and a {args.big_mb} MB file")
        make_tree(bench.store / "tree", args.files, args.tree_mb)
        make_big(bench.store / "big.bin", args.big_mb)
        bench.start_cloud()
        bench.launch()
        ciphers = bench.ciphers()
        scenarios = bench.scenarios()
        if args.only:
            keys = args.only.split(",")
            scenarios = [s for s in scenarios if s.key in keys]
        for s in scenarios:
            bench.run_scenario(s)
        bench.report(scenarios, ciphers)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
