"""Measuring one command of a benchmark: its wall time, CPU time, peak memory and processes.

Shared by the benchmarks of bench/ (see bench/README.md). Nothing here asserts a timing.
"""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN_TIMEOUT = 600  # seconds, for any one command


STARTED = time.monotonic()


def log(message):
    """A progress line on stderr, with the seconds since the benchmark started."""
    print(f"bench: [{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


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


def cpu_seconds(pid):
    """User + system CPU time a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    started_at: float = 0.0   # time.time() at start and end (to match other logs' clocks)
    ended_at: float = 0.0
    lines: list = field(default_factory=list)  # with lines=True: (time, stream, text)

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


def run_measured(argv, *, env=None, cwd=None, log_to, tree=False, lines=False):
    """Runs argv to the end and measures it; fails with its output if it fails. With `lines`,
    also notes when each line of its stdout and stderr arrived (Measure.lines), to place its
    output in time: when the remote command's last byte came, when a phase began."""
    with open(log_to, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        pipe = subprocess.PIPE if lines else out
        started_at, started = time.time(), time.perf_counter()
        child = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=pipe,
                                 stderr=pipe, start_new_session=True)
        readers = [LineReader(stream, name, out) for stream, name in
                   ((child.stdout, "stdout"), (child.stderr, "stderr")) if stream]
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
        ended_at = time.time()
        for reader in readers:
            # A helper it left running may hold the pipes open: do not wait for it.
            reader.join(timeout=2)
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
                   most_at_once=watcher.most_at_once, started_at=started_at,
                   ended_at=ended_at,
                   lines=sorted(line for reader in readers for line in reader.lines))


class LineReader(threading.Thread):
    """Reads one output pipe of a command: each line with the time it arrived, also copied to
    the command's log."""
    lock = threading.Lock()  # the log file is shared by both pipes

    def __init__(self, stream, name, log_file):
        super().__init__(daemon=True)
        self.stream, self.name, self.log_file = stream, name, log_file
        self.lines = []  # (time.time(), "stdout"|"stderr", text)
        self.start()

    def run(self):
        for raw in iter(self.stream.readline, b""):
            self.lines.append((time.time(), self.name, raw.decode(errors="replace").rstrip("\n")))
            with self.lock:
                self.log_file.write(raw)
        self.stream.close()


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

