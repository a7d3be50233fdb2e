"""What feel.py prints: each of issue 15's goals next to today's figure, then what explains
them (the critical path, a cold run's timeline, the sync scenarios' CPU)."""

from runlog import action_counts, new_connections
from timing import median


def row(what, value, goal=""):
    print(f"  {what:<70} {value:>9}   {goal}".rstrip())


def seconds(value):
    return f"{value:.3f} s" if value == value else "?"  # NaN: not found


def report(bench):
    r = bench.results
    bench.print_header("ssh-ec2 where users are", ("wan", "fat"))
    if "relay-bare" in r:
        (bare, bare_cpu), (fat, fat_cpu) = r["relay-bare"], r["relay-fat"]
        print(f"  the relay carries {bare / 1e6:.0f} Mbit/s one way with nothing added "
              f"({bare_cpu:.0%} of a core), {fat / 1e6:.0f} Mbit/s on fat (its cap: 1000; "
              f"{fat_cpu:.0%} of a core)")
    print()
    print(f"  {'goal':<70} {'today':>9}   target")
    if "help" in r:
        row("--help (median of 21)", f"{r['help'] * 1000:.1f} ms",
            f"< 10 ms (spawning `true`: {r['true'] * 1000:.1f} ms)")
    if "cold" in r:
        cold_rows(r["cold"])
    if "calls" in r:
        calls = [len(run.calls) for run in r["calls"]]
        row("AWS calls per cold run, loopback", f"{median(calls):g}", "<= 9")
    if "warm" in r:
        warm = r["warm"]
        row("warm run, wan: ssh-ec2 / OpenSSH by hand", f"{warm.ratio('ssh-ec2', 'by hand'):.2f}x",
            "<= 0.35x")
        row("warm run, wan: ssh-ec2 / OpenSSH with a ControlMaster",
            f"{warm.ratio('ssh-ec2', 'ControlMaster'):.2f}x", "<= 1.0x")
    for s in r.get("synced", []):
        row(f"{s.title}: ssh-ec2 / rsync over OpenSSH",
            f"{s.rounds.ratio('ssh-ec2', 'by hand'):.2f}x", f"<= {s.goal:g}x")
    big = [m for s in r.get("synced", []) if s.payload == "big"
           for m in s.rounds.runs["ssh-ec2"] + [s.rounds.probes["ssh-ec2"]]]
    if big:
        row(f"peak RSS of ssh-ec2 during a {bench.args.big_mb} MB sync",
            f"{max(m.root_hwm_kb for m in big) / 1024:.1f} MB", "< 40 MB")
    details(bench, r)


def cold_rows(runs):
    wall = median(run.seconds for run in runs)
    boot = median(run.boot() for run in runs)
    waits = [run.after_command() for run in runs]
    paths = [run.critical_path() for run in runs]
    row(f"cold run, wan ({len(runs)} runs): wall time", seconds(wall))
    row("  of which the instance's boot (pending -> running)", seconds(boot))
    row("  everything else", seconds(median(run.seconds - run.boot() for run in runs)),
        "<= 3 s")
    row("  command's last byte -> prompt", seconds(median(w for w, _ in waits)), "<= 1 s + pull")
    row("    of which the pull", seconds(median(p for _, p in waits)))
    row("  AWS round trips before RunInstances (critical path)",
        f"{median(n for _, n in paths):g}", "<= 4")
    row("  AWS calls per cold run, wan", f"{median(len(run.calls) for run in runs):g}")


def details(bench, r):
    if "warm" in r:
        warm = r["warm"]
        print()
        print(f"warm run (`ssh-ec2 --leave true`, {bench.args.small_files} files / "
              f"{bench.args.small_mb} MB unchanged), wan, {len(warm.runs['ssh-ec2'])} rounds:")
        for side in warm.sides:
            print(f"  {side:<14} {warm.median(side):7.3f} s   spread {warm.spread(side)}")
        print("  by hand: rsync up + ssh + rsync back, 3 OpenSSH connections (each with its "
              "handshake); ControlMaster: the same\n  through a master connection opened "
              "before (untimed). Ratios: the median of the ratios within each round.")
    if "warm-runs" in r:
        typical = middle(r["warm-runs"])
        print(f"  AWS calls of the median ssh-ec2 run ({len(typical.calls)}): "
              f"{action_counts(typical.calls)}; new HTTPS connections: "
              f"{new_connections(typical)}")
        print("  its timeline (seconds since it started):")
        for line in typical.timeline():
            print(f"    {line}")
    for key, title in (("calls", "loopback"), ("cold", "wan")):
        if key in r:
            cold_details(r[key], title)
    if r.get("synced"):
        bench.report_table(r["synced"])


def middle(runs):
    """The run of median wall time."""
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


def cold_details(runs, title):
    print()
    print(f"cold runs, {title}: {', '.join(f'{run.seconds:.2f} s' for run in runs)}")
    typical = middle(runs)
    print(f"  AWS calls of the median run ({len(typical.calls)}): {action_counts(typical.calls)}")
    print(f"  new HTTPS connections: {new_connections(typical)}")
    late = [run.calls[-1]["arrived"] - run.measure.ended_at for run in runs
            if run.calls and run.calls[-1]["arrived"] > run.measure.ended_at]
    if late:
        print(f"  {len(late)} runs made AWS calls after the prompt came back")
    chain, trips = typical.critical_path()
    if chain:
        steps = " -> ".join(e["action"] + (f" (+{e['rtts'] - 1})" if e["rtts"] > 1 else "")
                            for e in chain)
        run_at = typical.first("RunInstances")["arrived"] - typical.measure.started_at
        print(f"  critical path to RunInstances, {trips} round trips ((+N): a new HTTPS "
              f"connection's): {steps};\n  RunInstances left {run_at:.3f} s after ssh-ec2 "
              f"started, its first request {chain[0]['arrived'] - typical.measure.started_at:.3f}"
              " s after")
    late_seen = typical.seen_running_late()
    if late_seen is not None:
        print(f"  ssh-ec2 learnt the instance was running {late_seen:.3f} s after it was")
    if title == "wan":
        print("  timeline of the median run (seconds since ssh-ec2 started):")
        for line in typical.timeline():
            print(f"    {line}")
