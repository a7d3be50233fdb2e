"""Termination at AWS's pace, when a test asks (a TerminateInstances rule with `shutting_down`):
moto terminates at once, AWS takes tens of seconds to minutes. For that many seconds after the
TerminateInstances, its instances show `shutting-down` in DescribeInstances answers, and AWS
refuses to delete what they still hold: their security groups (DependencyViolation) and their
placement group (InvalidPlacementGroup.InUse). The machine itself powers off at once, as the
boot simulator follows moto.
"""

import threading
import time

from placement import Refusal, numbered

SHUTTING_DOWN = b"<instanceState><code>32</code><name>shutting-down</name></instanceState>"


class Shutdowns:
    def __init__(self, security_groups):
        """`security_groups(region, ids)`: {instance id: its security group ids}, from moto."""
        self.security_groups = security_groups
        self.lock = threading.Lock()
        self.until = {}  # instance id -> (monotonic end of its shutting-down, its groups)

    def held(self, region, params):
        """The groups of the instances a TerminateInstances ends, looked up before it goes."""
        return self.security_groups(region, numbered(params, "InstanceId"))

    def begin(self, held, seconds):
        """The instances of `held` (as `held` found them) shut down for `seconds` from now."""
        end = time.monotonic() + seconds
        with self.lock:
            for instance, groups in held.items():
                self.until[instance] = (end, set(groups))

    def now_shutting_down(self):
        now = time.monotonic()
        with self.lock:
            return {i: groups for i, (end, groups) in self.until.items() if now < end}

    def check(self, action, params, region, placed):
        """Raises Refusal for a deletion AWS refuses while an instance still shuts down;
        `placed` is placement.py's {instance id: (region, group name)}."""
        down = self.now_shutting_down()
        if action == "DeleteSecurityGroup":
            group = params.get("GroupId")
            if any(group in groups for groups in down.values()):
                raise Refusal("DependencyViolation",
                              f"resource {group} has a dependent object")
        if action == "DeletePlacementGroup":
            name = params.get("GroupName")
            if any(placed.get(i) == (region, name) for i in down):
                raise Refusal("InvalidPlacementGroup.InUse",
                              f"The Placement Group '{name}' is in use and may not be deleted.")

    def shown(self, body):
        """A DescribeInstances answer with each instance that still shuts down shown so."""
        for instance in self.now_shutting_down():
            at = body.find(f"<instanceId>{instance}</instanceId>".encode())
            start = body.find(b"<instanceState>", at)
            end = body.find(b"</instanceState>", start)
            if at < 0 or start < 0 or end < 0:
                continue
            body = body[:start] + SHUTTING_DOWN + body[end + len(b"</instanceState>"):]
        return body
