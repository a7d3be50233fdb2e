"""ssh-ec2's session benchmark: jobs and forwards against the same done by hand with OpenSSH.

On one simulated cloud (tests/testbed/cloud.py) and one instance launched with ssh-ec2
(--leave), against the very same sshd at the instance's private address, from the bed's
laptop, each side in turn:

- detach: `ssh-ec2 --detach JOB` in the project directory (find the instance, connect, sync up,
  start the job in tmux with its record) vs `rsync -e ssh` up + `ssh HOST tmux new -d JOB`;
- attach: from starting `ssh-ec2 --attach` (or `ssh -t HOST tmux attach`) in a terminal to the
  job's screen showing there;
- forward: 200 MB read from a server on the instance through `ssh-ec2 -L` vs `ssh -L`, from
  connecting to the last byte (the tunnel is up before the clock starts).

It prints the median wall time of each side and their ratio. It never asserts a timing: it is
a measurement, not a test. See bench/README.md.
"""

import fcntl
import hashlib
import os
import pty
import select
import shlex
import socket
import struct
import subprocess
import sys
import termios
import time

from bed import free_port
from measure import RUN_TIMEOUT, log, run_measured
from base import MB, PUSH_OPTIONS, Bench, arguments, make_tree, parse
from timing import alternate

# The job of both sides: its first screen shows the marker, then it waits to be killed.
MARK = "JOB-FIRST-SCREEN"
JOB = f"echo {MARK}; sleep 3600"
HAND = "bench-by-hand"  # the by-hand tmux session
# Serves SIZE bytes (random, so that no compression helps) to each connection, one at a time.
SERVER = """import os, socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
block = os.urandom(1 << 20)
server = socket.create_server(("127.0.0.1", port))
while True:
    client, _ = server.accept()
    with client:
        for _ in range(size // len(block)):
            client.sendall(block)
"""


def job_name(local_dir):
    """As src/remote/job.rs names the job of a directory."""
    base = "".join(c if (c.isascii() and c.isalnum()) or c == "-" else "_"
                   for c in local_dir.name)[:32]
    tag = hashlib.sha256(str(local_dir).encode()).hexdigest()[:8]
    return f"ssh-ec2-{base}-{tag}"


class Sessions(Bench):
    def __init__(self, args):
        super().__init__(args)
        self.job = job_name(self.project)

    def kill_jobs(self, sides=("ssh-ec2", "by hand")):
        """Ends the sides' jobs (only these sessions: the tmux server may hold others)."""
        kills = {"ssh-ec2": f"tmux kill-session -t ={self.job} 2>/dev/null; "
                            f"rm -rf .ssh-ec2/jobs/{self.job}",
                 "by hand": f"tmux kill-session -t ={HAND} 2>/dev/null"}
        self.remote_shell("; ".join(kills[side] for side in sides) + "; true")

    # -- detach

    def detach(self, side, log_to):
        if side == "ssh-ec2":
            return run_measured([self.ssh_ec2, "--detach", JOB], env=self.env(), cwd=self.project,
                                log_to=log_to).seconds
        rsh = shlex.join(self.ssh_words)
        total = run_measured(["rsync", *PUSH_OPTIONS, "-e", rsh, f"{self.project}/",
                              f"{self.host}:{self.name}/"], log_to=log_to)
        total.add(run_measured([*self.ssh_words, self.host,
                                f"cd {self.name} && tmux new -d -s {HAND} {shlex.quote(JOB)}"],
                               log_to=log_to))
        return total.seconds

    # -- attach

    def attach(self, side, log_to):
        """Seconds from starting the client in a 80x24 terminal to the job's screen in it."""
        if side == "ssh-ec2":
            argv, env, cwd = [self.ssh_ec2, "--attach"], self.env(TERM="xterm"), self.project
        else:
            argv = [*self.ssh_words, "-t", self.host, f"tmux attach-session -t ={HAND}"]
            env, cwd = {**os.environ, "TERM": "xterm"}, None
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))

        def controlling_terminal():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        started = time.perf_counter()
        child = subprocess.Popen(argv, env=env, cwd=cwd, stdin=slave, stdout=slave,
                                 stderr=slave, preexec_fn=controlling_terminal)
        os.close(slave)
        seen, shown = b"", None
        deadline = time.monotonic() + 30
        try:
            while shown is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: {side} never showed the job:\n{seen[-2000:]!r}")
                ready, _, _ = select.select([master], [], [], 1)
                if not ready:
                    continue
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise SystemExit(f"bench: {side} ended before showing the job:\n"
                                     f"{seen[-2000:]!r}")
                seen += chunk
                if MARK.encode() in seen:
                    shown = time.perf_counter() - started
            # Ctrl-B d: detach, as a person would; the job goes on. Again after a quiet
            # second: keys typed while the client still sets its terminal up may be dropped.
            os.write(master, b"\x02d")
            while True:
                ready, _, _ = select.select([master], [], [], 1)
                if not ready:
                    os.write(master, b"\x02d")
                try:
                    if ready and not os.read(master, 65536):
                        break
                except OSError:
                    break
                if child.poll() is not None:
                    break
            code = child.wait(timeout=RUN_TIMEOUT)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            os.close(master)
        with open(log_to, "ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode() + seen + b"\n")
        if code != 0:
            raise SystemExit(f"bench: {side} attach exited {code}: see {log_to}")
        return shown

    # -- forward

    def start_server(self, port, size):
        """The server on the instance: it ends with the instance, when the cloud stops."""
        script = f"{self.name}.serve.py"
        subprocess.run(
            [*self.ssh_words, self.host,
             f"cat > {script} && (setsid python3 {script} {port} {size} </dev/null "
             f">/dev/null 2>&1 &)"],
            input=SERVER, text=True, check=True, timeout=RUN_TIMEOUT)

    def tunnel(self, side, local, remote, log_to):
        """The side's tunnel, up: its remote command says so, and ends when stdin closes."""
        command = "echo ready; cat >/dev/null"
        forward = ["-L", f"{local}:localhost:{remote}"]
        if side == "ssh-ec2":
            argv = [self.ssh_ec2, "--leave", "--no-rsync", *forward, command]
            env, cwd = self.env(), self.project
        else:
            argv, env, cwd = [*self.ssh_words, *forward, self.host, command], None, None
        out = open(log_to, "ab")
        child = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=out, start_new_session=True)
        line = child.stdout.readline()
        if line != b"ready\n":
            child.kill()
            raise SystemExit(f"bench: the {side} tunnel did not come up: see {log_to}")
        return child, out


def transfer(port, size):
    """Reads `size` bytes from a server (SERVER) through 127.0.0.1:port: (seconds from
    connecting to the last byte, seconds from the first byte to the last)."""
    buffer = bytearray(MB)
    started = time.perf_counter()
    got, first = 0, None
    with socket.create_connection(("127.0.0.1", port)) as s:
        while n := s.recv_into(buffer):
            first = first or time.perf_counter()
            got += n
    ended = time.perf_counter()
    if got != size:
        raise SystemExit(f"bench: {got} bytes came through port {port}, not {size}")
    return ended - started, ended - first


def timed(name, repeat, once):
    """The shared alternating rounds (timing.py); `once(side)` returns seconds."""
    return alternate(name, ["ssh-ec2", "by hand"], repeat, lambda side, probe: once(side))


def report(rows):
    print()
    print(f"{'scenario':<46}{'ssh-ec2':>9}{'by hand':>9}{'ratio':>8}   spread (min-max)")
    for title, rounds in rows:
        print(f"{title:<46}{rounds.median('ssh-ec2'):>8.3f}s{rounds.median('by hand'):>8.3f}s"
              f"{rounds.ratio('ssh-ec2', 'by hand'):>7.2f}x   "
              f"{rounds.spread('ssh-ec2')} / {rounds.spread('by hand')}")
    print("  ratio: the median of the ratios within each round")


def main():
    parser = arguments(__doc__)
    parser.add_argument("--files", type=int, default=1000,
                        help="files in the project directory (1000)")
    parser.add_argument("--tree-mb", type=int, default=10, help="MiB in them (10)")
    parser.add_argument("--forward-mb", type=int, default=200,
                        help="MiB through the forward (200)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side (5)")
    args, _ = parse(parser)

    bench = Sessions(args)
    return bench.run_to_end(lambda: run(bench, args))


def run(bench, args):
    rows = []
    make_tree(bench.project, args.files, args.tree_mb)
    bench.start_cloud()
    bench.launch()

    def detach(side):
        bench.kill_jobs([side])
        return bench.detach(side, bench.logs / f"detach-{side.replace(' ', '-')}.log")

    rows.append((f"--detach ({args.files} files / {args.tree_mb} MB, unchanged)",
                 timed("detach", args.repeat, detach)))
    # Both jobs run now; attaching leaves them running.
    rows.append(("--attach: to the job's first screen",
                 timed("attach", args.repeat, lambda side: bench.attach(
                     side, bench.logs / f"attach-{side.replace(' ', '-')}.log"))))
    bench.kill_jobs()

    size = args.forward_mb * MB
    remote = free_port()
    bench.start_server(remote, size)
    tunnels = {}
    for side in ("ssh-ec2", "by hand"):
        local = free_port()
        log_to = bench.logs / f"tunnel-{side.replace(' ', '-')}.log"
        tunnels[side] = (local, *bench.tunnel(side, local, remote, log_to))
    try:
        rows.append((f"{args.forward_mb} MB through -L",
                     timed("forward", args.repeat,
                           lambda side: transfer(tunnels[side][0], size)[0])))
    finally:
        for _, child, out in tunnels.values():
            child.stdin.close()
            if child.wait(timeout=60) != 0:
                log(f"a tunnel exited {child.returncode}")
            out.close()
    report(rows)


if __name__ == "__main__":
    sys.exit(main())
