"""The simulated link between a user's laptop and AWS, for the benchmarks (bench/README.md,
"Profiles"). One process, one asyncio loop:

- an HTTP proxy in front of the AWS endpoint (moto) and one in front of checkip: each request
  waits one round trip, plus the round trips of a new HTTPS connection (TCP + TLS 1.3) the
  first time a connection carries a request for that host; EC2's state changes are slowed to a
  scaled real pace by rewriting moto's answers (ec2pace.py); every request is logged;
- a TCP relay between the laptop and the instances' sshds that delays each direction and caps
  its rate (relay.py).

It runs on the test bed's laptop (bench/bed.py puts the benchmark there, and it inherits that),
and the relay is transparent: ssh-ec2 and OpenSSH dial the instance's private address, as they
would without the link, and a cold run's new instance is reached through it too.

The profile can be switched while it runs. Control, on the AWS proxy's port, answered at once:
GET /_link/log?since=N (the request and connection log, JSON), POST /_link/profile
{"name": ...}, POST /_link/target {"host", "port"} (a fixed address for the relay to dial, for
connections made to the relay's own port; null: back to each connection's own destination).
Prints one JSON line {"aws", "checkip", "ssh"} when it listens; ends when stdin reaches EOF.
"""

import argparse
import asyncio
import http.client
import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from ec2pace import Ec2Pace
from relay import Line, add_redirect, relay_handler, remove_redirect, set_nodelay

MIN_WINDOW = 4 << 20     # bytes in flight per direction when the profile sets no TCP window


@dataclass(frozen=True)
class Profile:
    name: str
    rtt: float = 0.0           # seconds, both SSH and AWS
    rate: float = 0.0          # bits/s each way on the SSH relay; 0: no cap
    tls_rtts: int = 0          # extra round trips of a new HTTPS connection
    pace: float = 0.0          # EC2 state changes at this fraction of the real durations
    relay: bool = True         # does SSH go through the relay at all?
    window: int = 0            # bytes in flight per direction (a TCP window); 0: never limits

    def in_flight(self):
        if self.window:
            return self.window
        # Twice the bandwidth-delay product: the relay then never limits the rate.
        return max(MIN_WINDOW, int(2 * self.rate / 8 * self.rtt))


PROFILES = {p.name: p for p in (
    # What the test suite sees: no delay, EC2 states change at once; SSH goes straight to sshd
    # (no redirect rule).
    Profile("loopback", relay=False),
    # The relay alone, nothing added: what it can carry on this machine.
    Profile("bare"),
    # A laptop on a good home or office link to a region 80 ms away. TCP + TLS 1.3: 2 round trips.
    Profile("wan", rtt=0.080, rate=100e6, tls_rtts=2, pace=0.1),
    Profile("fat", rtt=0.080, rate=1e9, tls_rtts=2, pace=0.1),
    # A home connection's upload (cable's or DSL's), where copies to several machines queue up.
    Profile("uplink", rtt=0.030, rate=20e6, tls_rtts=2, pace=0.1),
)}


class Link:
    def __init__(self):
        self.profile = None           # set_profile
        self.relay_port = None        # once it listens
        self.target = None            # (host, port) the relay dials; None: where each was going
        self.pace = Ec2Pace()
        self.up, self.down = Line(), Line()  # the laptop's link, each way, shared by all SSH
        self.log = []                 # dicts, in order; see note()
        self.connections = 0
        self.idle = {}                # (service, region) -> ids of idle connections to it

    def set_idle(self, connection, hosts, idle):
        """Marks a proxy connection idle (its answer is out) or not (busy, or closed)."""
        for host in hosts:
            ids = self.idle.setdefault(host, set())
            if idle:
                ids.add(connection)
            else:
                ids.discard(connection)

    def note(self, **entry):
        entry["seq"] = len(self.log)
        self.log.append(entry)

    def control(self, method, path, body):
        """(status, JSON) for a /_link/ request."""
        url = urlsplit(path)
        if method == "GET" and url.path == "/_link/log":
            since = int(dict(parse_qsl(url.query)).get("since", 0))
            return 200, self.log[since:]
        if method == "POST" and url.path == "/_link/profile":
            self.set_profile(PROFILES[json.loads(body)["name"]])
            return 200, {"profile": self.profile.name}
        if method == "POST" and url.path == "/_link/target":
            spec = json.loads(body)
            self.target = spec and (spec["host"], int(spec["port"]))
            return 200, {"target": self.target}
        return 404, {"error": f"no {method} {url.path}"}

    def set_profile(self, profile):
        """Switches the profile, and SSH to the instances through the relay or straight."""
        was = self.profile and self.profile.relay
        self.profile = profile
        if profile.relay and not was:
            add_redirect(self.relay_port)
        elif was and not profile.relay:
            remove_redirect()


# ---------------------------------------------------------------- the HTTP proxies

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date",
              "server"}


async def read_request(reader):
    """(method, path, headers dict with lower-case names, body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    first, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = first.split(" ", 2)
    headers = {}
    for line in filter(None, lines):
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError("chunked request bodies are not supported")
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return method, path, headers, body


def forward(upstream, method, path, headers, body):
    """Blocking: the upstream server's (status, headers, body). A fresh connection each time:
    on loopback it costs well under a millisecond, and moto's keep-alive need not be trusted."""
    connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
    try:
        connection.request(method, path, body=body, headers={
            k: v for k, v in headers.items() if k not in HOP_BY_HOP})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def answer_bytes(status, headers, body):
    """The whole answer in one buffer: written in one go, it leaves in one segment (with
    TCP_NODELAY), and no Nagle + delayed-ACK stall of ~40 ms waits between head and body."""
    head = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}"]
    head += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
    head += [f"Content-Length: {len(body)}", "Connection: keep-alive", "", ""]
    return "\r\n".join(head).encode("latin-1") + body


def describe(listener, headers, body):
    """(action, service, region, params) of a request, from its form body or JSON target and
    its signature's credential scope (service and region say which AWS host it is for)."""
    scope = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/([^/]+)/", headers.get("authorization", ""))
    region, service = scope.groups() if scope else ("", listener)
    if "x-amz-target" in headers:  # JSON protocol (the Price List API)
        return headers["x-amz-target"].rsplit(".", 1)[-1], service, region, {}
    params = dict(parse_qsl(body.decode(errors="replace")))
    return params.get("Action", listener), service, region, params


def proxy_handler(link, listener, upstream):
    """A connection handler for one proxy: `listener` names it ("aws", "checkip")."""
    upstream = urlsplit(upstream)

    async def handle(reader, writer):
        set_nodelay(writer)
        link.connections += 1
        connection, hosts = link.connections, set()  # hosts this connection has "reached"
        try:
            while (request := await read_request(reader)) is not None:
                method, path, headers, body = request
                if path.startswith("/_link/"):
                    status, data = link.control(method, path, body)
                    writer.write(answer_bytes(status, [("Content-Type", "application/json")],
                                              json.dumps(data).encode()))
                else:
                    link.set_idle(connection, hosts, False)
                    writer.write(await exchange(link, listener, upstream, connection, hosts,
                                                request))
                await writer.drain()
                link.set_idle(connection, hosts, True)
        except (ConnectionError, ValueError) as e:
            print(f"link.py: {listener} connection {connection}: {e}", file=sys.stderr)
        finally:
            link.set_idle(connection, hosts, False)
            writer.close()

    return handle


async def exchange(link, listener, upstream, connection, hosts, request):
    """One request: its round trips, moto's (possibly rewritten) answer, a log entry."""
    method, path, headers, body = request
    arrived = time.time()
    profile = link.profile
    action, service, region, params = describe(listener, headers, body)
    host = (service, region)
    # A connection's first request to a host pays its handshake, unless another connection to
    # that host lay idle: the SDK's pool races a fresh connection against an idle one coming
    # back, and on loopback the fresh one wins; on a real link, the idle one would.
    raced = host not in hosts and bool(link.idle.get(host, set()) - {connection})
    new_host = host not in hosts and not raced
    hosts.add(host)
    rtts = 1 + (profile.tls_rtts if new_host else 0)
    # Out: the handshake's round trips and half of the request's own; back: the other half.
    await asyncio.sleep(profile.rtt * (rtts - 0.5))
    at_aws = time.time()
    refusal = link.pace.refusal(action, params, at_aws, profile.pace) if listener == "aws" else None
    if refusal:
        status, answer_headers, answer, note = *refusal, "refused while shutting down"
    else:
        status, answer_headers, answer = await asyncio.to_thread(
            forward, upstream, method, path, headers, body)
        answer, note = link.pace.follow(action, params, status, answer, at_aws, profile.pace)
    await asyncio.sleep(profile.rtt / 2)
    link.note(kind="http", listener=listener, connection=connection, action=action,
              service=service, region=region, status=status, new_connection=new_host,
              raced=raced, rtts=rtts, arrived=arrived, at_aws=at_aws, answered=time.time(),
              note=note,
              params={k: v for k, v in params.items() if k not in ("UserData", "Version")})
    return answer_bytes(status, answer_headers, answer)


# ---------------------------------------------------------------- the benchmarks' side

class LinkProcess:
    """link.py run by a benchmark, in front of a test bed (bed.Bed), until stop()."""

    def __init__(self, bed, profile, log_to):
        self.stderr = open(log_to, "wb")
        # On the laptop, as bed.py has put this process.
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--aws", bed.aws_endpoint, "--checkip", bed.checkip_url,
             "--profile", profile],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"bench: link.py did not start: see {log_to}")
        ready = json.loads(line)
        self.aws_endpoint, self.checkip_url = ready["aws"], ready["checkip"]
        host, port = ready["ssh"].rsplit(":", 1)
        self.relay_address = (host, int(port))
        self.profile = PROFILES[profile]
        self.seen = 0  # log entries read

    def call(self, path, *data):
        """GET `path`, or POST it the JSON of `data` when there is one (null included)."""
        body = json.dumps(data[0]).encode() if data else None
        request = urllib.request.Request(self.aws_endpoint + path, data=body,
                                         method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def set_profile(self, name):
        self.call("/_link/profile", {"name": name})
        self.profile = PROFILES[name]

    def new_entries(self):
        """The log entries since the last call."""
        entries = self.call(f"/_link/log?since={self.seen}")
        self.seen += len(entries)
        return entries

    def stop(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.stderr.close()


# ---------------------------------------------------------------- the process

async def serve(args):
    link = Link()
    aws = await asyncio.start_server(proxy_handler(link, "aws", args.aws), "127.0.0.1", 0)
    checkip = await asyncio.start_server(proxy_handler(link, "checkip", args.checkip),
                                         "127.0.0.1", 0)
    relay = await asyncio.start_server(relay_handler(link), "127.0.0.1", 0)
    ports = [s.sockets[0].getsockname()[1] for s in (aws, checkip, relay)]
    link.relay_port = ports[2]
    remove_redirect()  # an earlier link.py's, killed before it could
    link.set_profile(PROFILES[args.profile])
    try:
        print(json.dumps({"aws": f"http://127.0.0.1:{ports[0]}",
                          "checkip": f"http://127.0.0.1:{ports[1]}/",
                          "ssh": f"127.0.0.1:{ports[2]}"}), flush=True)
        # The bench holds our stdin: EOF means it is done, or died.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    finally:
        remove_redirect()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aws", required=True, help="the AWS endpoint to forward to (moto)")
    parser.add_argument("--checkip", required=True, help="the checkip URL to forward to")
    parser.add_argument("--profile", default="wan", choices=PROFILES)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
