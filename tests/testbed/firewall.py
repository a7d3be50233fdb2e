"""An instance's security groups as nftables rules in its own network namespace, so that what
the groups do not allow is dropped, as EC2 drops it: silently, the caller's SYN going unanswered.

Inbound only (the groups' egress rules are not enforced: moto's default group allows all
egress), stateful as EC2's are: a connection the rules let in stays up when a rule is revoked.
A rule's sources are CIDRs, or other groups, which stand for the private addresses of the
instances in those groups. ICMP types and codes are not told apart.
"""

import ipaddress

import netns

TABLE = "securitygroups"
ALL_TRAFFIC = "-1"
PROTOCOL_NAMES = {"6": "tcp", "17": "udp", "1": "icmp"}


def members(instances):
    """Group id -> the private addresses of the live instances in that group."""
    found = {}
    for instance in instances:
        if instance["State"]["Name"] in ("pending", "running") and instance.get("PrivateIpAddress"):
            for group in instance.get("SecurityGroups", []):
                found.setdefault(group["GroupId"], set()).add(instance["PrivateIpAddress"])
    return found


def ruleset(instance, groups, group_members):
    """The nftables script for `instance`, from its groups (id -> DescribeSecurityGroups
    entry) and `members` of the groups its rules name."""
    rules = []
    for reference in instance.get("SecurityGroups", []):
        group = groups.get(reference["GroupId"])
        for permission in (group or {}).get("IpPermissions", []):
            rules += permission_rules(permission, group_members)
    body = "\n".join(f"    {rule}" for rule in [
        "type filter hook input priority filter; policy drop;",
        "ct state established,related accept",
        'iif "lo" accept',
        *rules,
    ])
    return f"table inet {TABLE} {{\n  chain input {{\n{body}\n  }}\n}}\n"


def permission_rules(permission, group_members):
    """The nft rules of one IpPermission: one per kind of source."""
    match = protocol_match(permission)
    if match is None:
        return []
    sources = [r["CidrIp"] for r in permission.get("IpRanges", [])]
    for pair in permission.get("UserIdGroupPairs", []):
        sources += sorted(group_members.get(pair.get("GroupId"), ()))
    # IPv4 only: the instances and the laptop have no IPv6 address.
    sources = [s for s in sources if ipaddress.ip_network(s, strict=False).version == 4]
    if not sources:
        return []
    return [f"ip saddr {{ {', '.join(sources)} }} {match}accept"]


def protocol_match(permission):
    """The nft match for the rule's protocol and ports ("" for all traffic), or None for a
    protocol the bed does not simulate."""
    protocol = str(permission.get("IpProtocol", ALL_TRAFFIC)).lower()
    protocol = PROTOCOL_NAMES.get(protocol, protocol)
    if protocol == ALL_TRAFFIC:
        return ""
    if protocol == "icmp":
        return "ip protocol icmp "
    if protocol not in ("tcp", "udp"):
        return None
    low, high = permission.get("FromPort", 0), permission.get("ToPort", 65535)
    if low in (None, -1):
        low, high = 0, 65535
    ports = str(low) if low == high else f"{low}-{high}"
    return f"{protocol} dport {ports} "


def apply(netns_path, script):
    """Replaces the namespace's rules with `script`, atomically (one nft transaction)."""
    netns.run(netns_path, ["nft", "-f", "-"],
              stdin=f"table inet {TABLE}\ndelete table inet {TABLE}\n{script}")
