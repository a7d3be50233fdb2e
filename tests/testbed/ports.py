"""Loopback ports for servers that bind later (an instance's sshd binds its port again at every
start), taken below the kernel's ephemeral range: a port picked with bind(0) lies in that range,
where any outgoing connection may hold it as its source port by the time the server binds it.
The test bed itself no longer needs it (each machine has a loopback of its own); the
benchmarks in bench/ use it."""

import random
import socket

FIRST = 10_000


def free_port():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_start = int(f.read().split()[0])
    for port in random.sample(range(FIRST, ephemeral_start), min(500, ephemeral_start - FIRST)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free loopback port in {FIRST}..{ephemeral_start}")
