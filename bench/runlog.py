"""What one ssh-ec2 run's wall time is made of, from its time-stamped output lines
(measure.run_measured with lines=True) and the link's log of its AWS requests and SSH
connections (link.py): the figures of issue 15's goals for a cold run, and a timeline.
"""

from dataclasses import dataclass, field

from ec2pace import REAL_SECONDS

# ssh-ec2's own words around its pull (src/commands): where the pull begins and ends.
PULL_BEGINS = "pulling results back"
PULL_ENDS = "ssh-ec2: pulled "  # "pulled 2 files (12.1 KiB) (1.4s)"


@dataclass
class Run:
    measure: object             # measure.Measure, with lines
    log: list                   # the link's entries during the run
    profile: object             # link.Profile
    calls: list = field(init=False)  # AWS requests (checkip is not one)

    def __post_init__(self):
        self.calls = [e for e in self.log if e["kind"] == "http" and e["listener"] == "aws"]

    @property
    def seconds(self):
        return self.measure.seconds

    def first(self, action):
        return next((e for e in self.calls if e["action"] == action), None)

    def boot(self):
        """The instance's own pending -> running, as the link paced it (0 on loopback)."""
        return self.profile.pace * REAL_SECONDS["pending"] if self.first("RunInstances") else 0.0

    def line_time(self, words, stream="stderr"):
        return next((t for t, s, text in self.measure.lines if s == stream and words in text),
                    None)

    def after_command(self):
        """(seconds from the remote command's last output byte to the prompt, of which the
        pull): the command must print something last."""
        out = [t for t, s, _ in self.measure.lines if s == "stdout"]
        begins, ends = self.line_time(PULL_BEGINS), self.line_time(PULL_ENDS)
        wait = self.measure.ended_at - out[-1] if out else float("nan")
        pull = ends - begins if begins and ends else float("nan")
        return wait, pull

    def critical_path(self):
        """The requests RunInstances waited for, one after another: from RunInstances back,
        each step is the request (AWS or checkip) answered last before the next one left.
        Returns (chain, round trips counting new connections' handshakes)."""
        run = self.first("RunInstances")
        if run is None:
            return [], 0
        http = [e for e in self.log if e["kind"] == "http"]
        chain, bound = [], run["arrived"]
        while True:
            before = [e for e in http if e["answered"] <= bound and e not in chain]
            if not before:
                break
            step = max(before, key=lambda e: e["answered"])
            chain.insert(0, step)
            bound = step["arrived"]
        return chain, sum(e["rtts"] for e in chain)

    def seen_running_late(self):
        """Seconds from the instance being running to ssh-ec2 learning it (poll overshoot)."""
        run = self.first("RunInstances")
        if run is None or not self.profile.pace:
            return None
        running_at = run["at_aws"] + self.boot()
        seen = [e["answered"] for e in self.calls if e["action"] == "DescribeInstances"
                and e["arrived"] > run["answered"] and e["at_aws"] >= running_at]
        return min(seen) - running_at if seen else None

    def timeline(self):
        """Lines of text: ssh-ec2's output, AWS requests and SSH connections, in time order,
        in seconds since ssh-ec2 started."""
        t0 = self.measure.started_at
        events = [(t, f"{stream}: {text}") for t, stream, text in self.measure.lines]
        for e in self.log:
            if e["kind"] == "http":
                new = " (new connection)" if e["new_connection"] else ""
                note = f"; {e['note']}" if e["note"] else ""
                events.append((e["arrived"], f"{e['listener']:<7} {e['action']} -> {e['status']}"
                               f" in {e['answered'] - e['arrived']:.3f} s{new}{note}"))
            else:
                what = e.get("refused") or e.get("error") or \
                    f"{e['up']} B up, {e['down']} B down"
                events.append((e["opened"], f"ssh     connection open for "
                               f"{e['closed'] - e['opened']:.3f} s: {what}"))
        events.append((self.measure.ended_at, "(exit: the prompt is back)"))
        return [f"{t - t0:8.3f}  {text}" for t, text in sorted(events)]


def runs_of(measures, entries, profile, until_next=True):
    """A Run per measured ssh-ec2 run, each with the log entries that arrived while it ran:
    until the next run began (`until_next`: a helper it left may call AWS after the prompt),
    or until it ended (other programs used the link in between)."""
    def at(e):
        return e.get("arrived", e.get("opened"))

    runs = []
    for i, m in enumerate(measures):
        end = measures[i + 1].started_at if until_next and i + 1 < len(measures) else \
            (float("inf") if until_next else m.ended_at)
        runs.append(Run(m, [e for e in entries if m.started_at <= at(e) < end], profile))
    return runs


def new_connections(run):
    """'aws 3, checkip 1': connections opened for HTTPS requests, by listener."""
    counts = {}
    for e in run.log:
        if e["kind"] == "http" and e["new_connection"]:
            counts[e["listener"]] = counts.get(e["listener"], 0) + 1
    return ", ".join(f"{listener} {n}" for listener, n in counts.items()) or "none"


def action_counts(calls):
    """'DescribeInstances x7, RunInstances, GetProducts (500), ...' in order of first
    appearance; a status other than 200 is shown."""
    counts = {}
    for e in calls:
        name = e["action"] if e["status"] == 200 else f"{e['action']} ({e['status']})"
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(a if n == 1 else f"{a} x{n}" for a, n in counts.items())
