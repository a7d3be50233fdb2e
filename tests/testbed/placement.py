"""Placement groups, which moto lacks (CreatePlacementGroup answers 500, RunInstances ignores
Placement.GroupName): the proxy (faults.py) answers their calls itself, as AWS does, with AWS's
error codes, refuses a launch into a group that does not exist, and echoes the group in the
placement of the instances launched into it. A group is in use while one of its instances is
not terminated.
"""

import re
import threading
import uuid
from xml.sax.saxutils import escape

ACTIONS = ("CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup")
NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"


class Refusal(Exception):
    """An AWS error answer: its code and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def numbered(params, prefix):
    """The values of `prefix.1`, `prefix.2`... in order."""
    values, n = [], 1
    while f"{prefix}.{n}" in params:
        values.append(params[f"{prefix}.{n}"])
        n += 1
    return values


def tags_of(params):
    """The tags a create request gives its placement group."""
    tags, n = {}, 1
    while f"TagSpecification.{n}.ResourceType" in params:
        prefix = f"TagSpecification.{n}.Tag"
        m = 1
        while f"{prefix}.{m}.Key" in params:
            tags[params[f"{prefix}.{m}.Key"]] = params.get(f"{prefix}.{m}.Value", "")
            m += 1
        n += 1
    return tags


def filters_of(params):
    """The request's filters: name -> accepted values."""
    filters, n = {}, 1
    while f"Filter.{n}.Name" in params:
        filters[params[f"Filter.{n}.Name"]] = set(numbered(params, f"Filter.{n}.Value"))
        n += 1
    return filters


class PlacementGroups:
    def __init__(self):
        self.lock = threading.Lock()
        self.groups = {}      # (region, name) -> {"id", "strategy", "tags"}
        self.placed = {}      # instance id -> (region, name)
        self.ended = set()    # instance ids terminated

    def answer(self, action, params, region):
        """The XML body of a 200 answer to a placement group call; raises Refusal."""
        with self.lock:
            if action == "CreatePlacementGroup":
                return self.create(params, region)
            if action == "DescribePlacementGroups":
                return self.describe(params, region)
            return self.delete(params, region)

    def create(self, params, region):
        name = params.get("GroupName", "")
        if (region, name) in self.groups:
            raise Refusal("InvalidPlacementGroup.Duplicate",
                          f"The Placement Group '{name}' already exists.")
        group = {"id": "pg-" + uuid.uuid4().hex[:17], "strategy": params.get("Strategy", ""),
                 "tags": tags_of(params)}
        self.groups[(region, name)] = group
        return response("CreatePlacementGroup", "<placementGroup>" + item(name, group)
                        + "</placementGroup>")

    def describe(self, params, region):
        names, filters = numbered(params, "GroupName"), filters_of(params)
        for name in names:
            if (region, name) not in self.groups:
                raise Refusal("InvalidPlacementGroup.Unknown",
                              f"The Placement Group '{name}' is unknown.")
        found = ""
        for (where, name), group in sorted(self.groups.items()):
            if where != region or (names and name not in names):
                continue
            if all(group["tags"].get(key[4:]) in values
                   for key, values in filters.items() if key.startswith("tag:")):
                found += "<item>" + item(name, group) + "</item>"
        return response("DescribePlacementGroups", f"<placementGroupSet>{found}</placementGroupSet>")

    def delete(self, params, region):
        name = params.get("GroupName", "")
        if (region, name) not in self.groups:
            raise Refusal("InvalidPlacementGroup.Unknown",
                          f"The Placement Group '{name}' is unknown.")
        in_it = [i for i, place in self.placed.items()
                 if place == (region, name) and i not in self.ended]
        if in_it:
            raise Refusal("InvalidPlacementGroup.InUse",
                          f"The Placement Group '{name}' is in use and may not be deleted.")
        del self.groups[(region, name)]
        return response("DeletePlacementGroup", "<return>true</return>")

    def check_launch(self, params, region):
        """Raises Refusal for a RunInstances into a group that does not exist."""
        name = params.get("Placement.GroupName")
        with self.lock:
            if name and (region, name) not in self.groups:
                raise Refusal("InvalidPlacementGroup.Unknown",
                              f"The Placement Group '{name}' is unknown.")

    def launched(self, params, region, body):
        """Notes the instances of a RunInstances answer `body` as in its group."""
        name = params.get("Placement.GroupName")
        if not name:
            return
        with self.lock:
            for instance in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", body):
                self.placed[instance.decode()] = (region, name)

    def terminated(self, params):
        with self.lock:
            self.ended.update(numbered(params, "InstanceId"))

    def echo(self, body):
        """An instances answer with each placed instance's group in its placement."""
        with self.lock:
            placed = dict(self.placed)
        for instance, (_, name) in placed.items():
            at = body.find(f"<instanceId>{instance}</instanceId>".encode())
            start = body.find(b"<placement>", at)
            end = body.find(b"</placement>", start)
            if at < 0 or start < 0 or end < 0:
                continue
            inside = re.sub(rb"<groupName>[^<]*</groupName>|<groupName/>", b"",
                            body[start + len(b"<placement>"):end])
            group = f"<groupName>{escape(name)}</groupName>".encode()
            body = body[:start] + b"<placement>" + group + inside + body[end:]
        return body


def item(name, group):
    tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>"
                   for k, v in sorted(group["tags"].items()))
    return (f"<groupName>{escape(name)}</groupName><groupId>{group['id']}</groupId>"
            f"<strategy>{escape(group['strategy'])}</strategy><state>available</state>"
            f"<tagSet>{tags}</tagSet>")


def response(action, inner):
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NAMESPACE}">'
            f"<requestId>{uuid.uuid4()}</requestId>{inner}</{action}Response>").encode()
