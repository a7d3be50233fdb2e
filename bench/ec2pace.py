"""EC2's state changes at a scaled real pace, for the link's AWS proxy (link.py).

moto changes states at once: RunInstances answers `pending` and the next DescribeInstances says
`running`; Stop and Terminate are done by the time they answer. Real EC2 takes its time, and a
tool that waits for it (for `terminated`, to delete a security group) makes its user wait too.
This rewrites moto's answers so that, for `pace` times the real duration after the request
reached AWS, an instance still shows the state it is passing through:

| after                 | shows           | real duration (what we scale from)                        |
|:--|:--|:--|
| RunInstances          | `pending`       | 18 s: pending to running on current instance families      |
| StartInstances        | `pending`       | 18 s, the same                                             |
| StopInstances         | `stopping`      | 45 s: an OS shutdown, then the host lets go               |
| TerminateInstances    | `shutting-down` | 60 s: likewise, and the volume and interface are released |

The pending figure is measured (brevdev/ec2-coldboot-research on GitHub: pending to running
16.4 to 18 s whatever the family); the other two are usual figures for EBS-backed Linux
instances (tens of seconds, often about a minute), not measured here. Meanwhile DeleteSecurityGroup on a group of
a shutting-down instance answers DependencyViolation, as AWS does. The sshd of the simulated
instance is not delayed: it is up once the instance shows `running` (link.py refuses SSH
connections while any instance shows `pending`).

Known gap: a DescribeInstances filtered on `instance-state-name` is filtered by moto on its own
(already final) state.
"""

import re
import uuid

REAL_SECONDS = {"pending": 18.0, "stopping": 45.0, "shutting-down": 60.0}
# For each request that starts a transition: the state shown meanwhile, and moto's state then.
TRANSITIONS = {
    "RunInstances": ("pending", "running"),
    "StartInstances": ("pending", "running"),
    "StopInstances": ("stopping", "stopped"),
    "TerminateInstances": ("shutting-down", "terminated"),
}
CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64,
         "stopped": 80}
# In moto's DescribeInstances, an instance's id comes before its state, in the same <item>.
STATE = re.compile(r"(<instanceId>(i-[0-9a-f]+)</instanceId>.*?)"
                   r"<instanceState><code>\d+</code><name>([a-z-]+)</name></instanceState>",
                   re.DOTALL)


class Transition:
    def __init__(self, shows, moto_state, until, groups):
        self.shows, self.moto_state, self.until, self.groups = shows, moto_state, until, groups


class Ec2Pace:
    def __init__(self):
        self.transitions = {}  # instance id -> its Transition under way (or over)
        self.groups = {}       # instance id -> its security group ids, from RunInstances

    def follow(self, action, params, status, body, now, pace):
        """moto's answer to a request that reached AWS at `now`, as real EC2 would answer:
        (body, a note for the log or None). Also notes the transitions a request starts."""
        if status != 200 or not pace:
            return body, None
        if action in TRANSITIONS:
            text = body.decode()
            ids = re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", text)
            if action == "RunInstances":
                groups = set(re.findall(r"<groupId>(sg-[0-9a-f]+)</groupId>", text))
                self.groups.update((i, groups) for i in ids)
            shows, moto_state = TRANSITIONS[action]
            until = now + pace * REAL_SECONDS[shows]
            for i in ids:
                self.transitions[i] = Transition(shows, moto_state, until,
                                                 self.groups.get(i, set()))
            return body, f"{shows} for {until - now:.1f} s"
        if action != "DescribeInstances":
            return body, None
        shown = []

        def rewrite(match):
            head, instance, state = match.groups()
            t = self.transitions.get(instance)
            if t is None or now >= t.until or state != t.moto_state:
                return match.group(0)
            shown.append(f"{instance} {t.shows}")
            return (f"{head}<instanceState><code>{CODES[t.shows]}</code>"
                    f"<name>{t.shows}</name></instanceState>")

        body = STATE.sub(rewrite, body.decode()).encode()
        return body, ("shows " + ", ".join(shown)) if shown else None

    def refusal(self, action, params, now, pace):
        """An AWS error answer for a request real EC2 would refuse now, or None."""
        if action != "DeleteSecurityGroup" or not pace:
            return None
        group = params.get("GroupId")
        for instance, t in self.transitions.items():
            if t.shows == "shutting-down" and now < t.until and (group in t.groups or not group):
                return dependency_violation(group or params.get("GroupName", "?"))
        return None

    def booting(self, now):
        """Is any instance still pending (its sshd cannot be reached yet)?"""
        return any(t.shows == "pending" and now < t.until for t in self.transitions.values())


def dependency_violation(group):
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            "<Code>DependencyViolation</Code>"
            f"<Message>resource {group} has a dependent object</Message></Error></Errors>"
            f"<RequestID>{uuid.uuid4()}</RequestID></Response>").encode()
    return 400, [("Content-Type", "text/xml")], body
