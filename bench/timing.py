"""Timing sides against each other on a shared, noisy machine: every benchmark of bench/ does it
this way, so that their figures mean the same thing.

One untimed run per side first (it warms caches; the caller may measure more on it), then
`repeat` rounds of one run per side, the order reversed every other round: a neighbour's load
that comes and goes then falls on all sides alike. Figures are medians; a ratio between two
sides is the median of the ratios within each round ("pair by pair"), which load that drifts
over minutes moves less than a ratio of two medians.
"""

import statistics

from measure import log


def median(values):
    values = list(values)
    return statistics.median(values) if values else float("nan")


def seconds_of(result):
    """A run's result is its seconds, or anything with a `seconds` attribute (a Measure)."""
    return getattr(result, "seconds", result)


class Rounds:
    """The runs of one scenario: `probes[side]` (untimed) and `runs[side]`, one per round."""

    def __init__(self, sides):
        self.sides = list(sides)
        self.probes = {}
        self.runs = {side: [] for side in self.sides}

    def seconds(self, side):
        return [seconds_of(r) for r in self.runs[side]]

    def median(self, side):
        return median(self.seconds(side))

    def spread(self, side):
        values = self.seconds(side)
        return f"{min(values):.2f}-{max(values):.2f}" if values else "-"

    def ratio(self, side, other):
        """Median of side/other within each round."""
        return median(a / b for a, b in zip(self.seconds(side), self.seconds(other)) if b)


def alternate(name, sides, repeat, once):
    """Runs `once(side, probe)` for each side: untimed first (probe=True), then `repeat`
    rounds, alternating the order. `once` returns seconds or a Measure."""
    rounds = Rounds(sides)
    for side in rounds.sides:
        rounds.probes[side] = once(side, True)
    for i in range(repeat):
        order = rounds.sides if i % 2 == 0 else rounds.sides[::-1]
        for side in order:
            result = once(side, False)
            rounds.runs[side].append(result)
            log(f"  {name} {side}: {seconds_of(result):.3f} s")
    return rounds
