"""The proxy between ssh-ec2 and moto: it makes moto's EC2 behave as AWS's where the bed needs
it, and makes AWS misbehave on request, for the tests of what ssh-ec2 does then. See README.md
beside this file. It is always there (with no rules, it only passes requests on).

Every AWS request (a form-encoded POST with Action=...) is logged, then either forwarded to moto
or answered by the first matching rule: an AWS error, a "lost" answer (forwarded, then answered
500, so the action happened but the caller never learned it), or a held answer (forwarded, then
kept until the rules are replaced, so a test can kill the caller in between). Two things moto
does otherwise than AWS are mended on the way:
- RunInstances gets AWS's ClientToken idempotency: a repeated token is answered with the first
  answer and launches nothing;
- a RunInstances without a subnet goes to a default subnet of its zone, as AWS sends it. moto
  would give it a made-up public address and a private one outside the VPC, whatever the
  subnets say; the bed turns public addresses off on its subnets, and boots no instance that
  has one;
- placement groups, which moto lacks, are answered here (placement.py).
A TerminateInstances rule may also make termination take AWS's time (shutdown.py).

Control, on the same port: POST /_faults with a JSON list of rules replaces them (and releases
held answers); GET /_log returns the log as a JSON list.
"""

import http.client
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlencode, urlsplit

import netns
import placement
import shutdown

# The HTTP status AWS answers these codes with; any other code gets 400.
STATUS = {"RequestLimitExceeded": 503, "InsufficientInstanceCapacity": 500, "InternalError": 500}


class Rule:
    """One rule, from its JSON form:
    action   the Action it applies to ("*": all)
    params   {name: value} the request must carry; a null value: the parameter is absent
    region   only requests signed for this region
    after    only once an answer to this Action has come back from moto ("right after a create")
    times    how many matching requests it hits (default: all)
    error    answer this AWS error code (with "status" and "message" if given), or
    capacity a RunInstances finds room for this many instances, as AWS does: fewer than its
             MinCount is InsufficientInstanceCapacity, else at most this many are launched, or
    answer   answer this XML body with 200, for what moto lacks (DecodeAuthorizationMessage), or
    lose     true: forward, then answer 500 InternalError, or
    hold     true: forward, then keep the answer until the rules are replaced; and with any
             of these on a TerminateInstances,
    shutting_down  seconds its instances show `shutting-down`, their groups still in use
    """

    def __init__(self, spec):
        self.spec = spec
        self.left = spec.get("times")

    def matches(self, action, params, region, answered):
        spec = self.spec
        if spec.get("action", "*") not in ("*", action) or self.left == 0:
            return False
        if spec.get("region", region) != region:
            return False
        if spec.get("after") and spec["after"] not in answered:
            return False
        return all(params.get(k) == v for k, v in spec.get("params", {}).items())


class Faults:
    def __init__(self, moto_endpoint, lookups, forwarded):
        self.moto = urlsplit(moto_endpoint)
        self.default_subnet = lookups.default_subnet
        self.forwarded = forwarded
        self.lock = threading.Lock()
        self.rules = []
        self.log = []
        self.answered = set()     # actions moto has answered with success
        self.launches = {}        # ClientToken -> moto's answer to the first RunInstances
        self.released = threading.Event()
        self.placement = placement.PlacementGroups()
        self.shutdowns = shutdown.Shutdowns(lookups.security_groups)

    def set_rules(self, specs):
        with self.lock:
            self.rules = [Rule(spec) for spec in specs]
            self.released.set()  # held answers go out now
            self.released = threading.Event()

    def pick(self, action, params, region):
        """The rule for this request, counted as used, or None."""
        with self.lock:
            for rule in self.rules:
                if rule.matches(action, params, region, self.answered):
                    if rule.left is not None:
                        rule.left -= 1
                    return rule.spec
        return None

    def record(self, action, params, outcome):
        with self.lock:
            self.log.append({"action": action, "outcome": outcome,
                             "params": {k: v for k, v in params.items() if k != "UserData"}})

    def forward(self, action, params, region, path, headers, body):
        """moto's (status, headers, body); RunInstances with a known ClientToken is replayed."""
        token = params.get("ClientToken") if action == "RunInstances" else None
        with self.lock:
            replay = self.launches.get(token)
        if replay:
            return replay, "replayed"
        self.shutdowns.check(action, params, region, dict(self.placement.placed))
        if action in placement.ACTIONS:
            return (200, "text/xml", self.placement.answer(action, params, region)), "answered"
        if action == "RunInstances":
            self.placement.check_launch(params, region)
            body = self.in_a_subnet(params, region, body)
        connection = http.client.HTTPConnection(self.moto.hostname, self.moto.port, timeout=60)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            answer = (response.status, response.getheader("Content-Type", "text/xml"),
                      response.read())
        finally:
            connection.close()
        self.forwarded()
        if answer[0] == 200:
            answer = self.mended(action, params, region, answer)
            with self.lock:
                self.answered.add(action)
                if token:
                    self.launches[token] = answer
        return answer, f"forwarded {answer[0]}"

    def mended(self, action, params, region, answer):
        """moto's successful answer, with what the bed adds to it (placement groups)."""
        status, content_type, body = answer
        if action == "RunInstances":
            self.placement.launched(params, region, body)
        elif action == "TerminateInstances":
            self.placement.terminated(params)
        if action in ("RunInstances", "DescribeInstances"):
            body = self.placement.echo(body)
        if action == "DescribeInstances":
            body = self.shutdowns.shown(body)
        return status, content_type, body

    def in_a_subnet(self, params, region, body):
        """The request's body, with the SubnetId AWS would choose if it names none."""
        if "SubnetId" in params or any(k.startswith("NetworkInterface") for k in params):
            return body
        subnet = self.default_subnet(region, params.get("Placement.AvailabilityZone"))
        if subnet is None:  # no default subnet there: moto answers as AWS would
            return body
        return body + b"&" + urlencode({"SubnetId": subnet}).encode()


def room_for(rule, params, body):
    """A RunInstances under a `capacity` rule: an error rule when MinCount does not fit, else
    no rule and the body with MaxCount cut to what fits."""
    room = rule["capacity"]
    if int(params.get("MinCount", 1)) > room:
        return {"error": "InsufficientInstanceCapacity"}, body
    if int(params.get("MaxCount", 1)) <= room:
        return {}, body
    fields = [(k, str(room) if k == "MaxCount" else v)
              for k, v in parse_qsl(body.decode(), keep_blank_values=True)]
    return {}, urlencode(fields).encode()


def error_answer(service, code, status, message):
    request_id = str(uuid.uuid4())
    if service == "ec2":
        body = (f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
                f"</Errors><RequestID>{request_id}</RequestID></Response>")
    else:  # IAM and STS
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                f"<Message>{message}</Message></Error><RequestId>{request_id}</RequestId>"
                "</ErrorResponse>")
    return status, "text/xml", ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()


def start(moto_endpoint, lookups, forwarded, namespaces):
    """Starts the proxy on a free loopback port, here and in each network namespace of
    `namespaces`, in daemon threads; returns its URL. `lookups.default_subnet(region, zone)` is
    the subnet AWS would launch in (zone None: any zone), or None;
    `lookups.security_groups(region, ids)` the groups of instances; `forwarded()` is called
    after each request moto has answered."""
    faults = Faults(moto_endpoint, lookups, forwarded)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDK expects
        # The head and the body go out in two writes: without this, each answer waits ~40 ms
        # for the caller's delayed ACK.
        disable_nagle_algorithm = True

        def do_GET(self):
            if self.path == "/_log":
                with faults.lock:
                    self.reply((200, "application/json", json.dumps(faults.log).encode()))
            else:
                self.reply((404, "text/plain", b"not found\n"))

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/_faults":
                faults.set_rules(json.loads(body))
                self.reply((200, "application/json", b"{}"))
                return
            params = dict(parse_qsl(body.decode()))
            action = params.get("Action", "?")
            scope = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/([^/]+)/",
                              self.headers.get("Authorization", ""))
            region, service = scope.groups() if scope else (None, "ec2")
            rule = faults.pick(action, params, region) or {}
            if "capacity" in rule:
                rule, body = room_for(rule, params, body)
            if rule.get("error"):
                code = rule["error"]
                faults.record(action, params, f"error {code}")
                self.reply(error_answer(service, code, rule.get("status", STATUS.get(code, 400)),
                                        rule.get("message", f"injected {code}")))
                return
            if rule.get("answer"):
                faults.record(action, params, "answered")
                self.reply((200, "text/xml", rule["answer"].encode()))
                return
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "content-length", "connection")}
            shutting_down = rule.get("shutting_down") if action == "TerminateInstances" else None
            held = faults.shutdowns.held(region, params) if shutting_down else {}
            try:
                answer, outcome = faults.forward(action, params, region, self.path, headers, body)
            except placement.Refusal as refusal:
                faults.record(action, params, f"error {refusal.code}")
                self.reply(error_answer(service, refusal.code, 400, str(refusal)))
                return
            if shutting_down and answer[0] == 200:
                faults.shutdowns.begin(held, shutting_down)
            if rule.get("lose"):
                faults.record(action, params, f"lost ({outcome})")
                answer = error_answer(service, "InternalError", 500, "injected: answer lost")
            elif rule.get("hold"):
                released = faults.released
                faults.record(action, params, f"held ({outcome})")
                released.wait()
            else:
                faults.record(action, params, outcome)
            self.reply(answer)

        def reply(self, answer):
            status, content_type, body = answer
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the caller is gone (killed while its answer was held)

        def log_message(self, *args):
            pass  # stdout is for cloud.py's ready line only

    return "http://127.0.0.1:%d" % netns.serve(Handler, namespaces)
