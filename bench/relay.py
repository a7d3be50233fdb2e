"""The SSH relay of the simulated link (link.py): between the laptop and the instances' sshds,
it delays each direction and caps its rate (the kernel here has no netem qdisc).

It is transparent: while link.py's profile has a relay, an nftables rule of the laptop
(REDIRECT_RULES) sends every connection to port 22 of a VPC address to it, and it dials the
address the connection was for (SO_ORIGINAL_DST), on a socket marked so that the rule lets it
by. `link` below is link.Link: its profile, its EC2 pace, its log, a fixed target if set, and
the two lines (up and down) that every connection shares.
"""

import asyncio
import socket
import struct
import subprocess
import time

CHUNK = 256 * 1024       # the relay's reads: large enough that Python's cost per read stays low
MARK = 0x5EC2            # on the relay's own connections: the redirect rule lets them by
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_ORIGINAL_DST = 80     # linux/netfilter_ipv4.h
# SSH to any address off loopback (on the laptop, only the VPC's are reachable) goes to the
# relay, unless the relay itself dials it. Priority -100: NAT, before the bed's own filter.
REDIRECT_RULES = """\
table ip bench_link {{
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark != {mark:#x} ip daddr != 127.0.0.0/8 tcp dport 22 redirect to :{port}
  }}
}}
"""


def nft(script):
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def add_redirect(port):
    nft(REDIRECT_RULES.format(mark=MARK, port=port))


def remove_redirect():
    # Declaring the table first makes the deletion succeed whether or not it is there.
    nft("table ip bench_link\ndelete table ip bench_link\n")


def set_nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Window:
    """Bytes in flight on one direction, as TCP's window: taken when read, given back when
    the data's acknowledgement would be home (one round trip after it left)."""

    def __init__(self, size):
        self.size, self.used = size, 0
        self.freed = asyncio.Event()

    async def take(self, n):
        while self.used and self.used + n > self.size:
            self.freed.clear()
            await self.freed.wait()
        self.used += n

    def give(self, n):
        self.used -= n
        self.freed.set()


class Line:
    """One direction of the link, shared by every connection on it, as a home uplink is: a
    chunk is serialized once the chunks sent before it, whichever connection's, are out."""

    def __init__(self):
        self.free_at = 0.0  # loop time at which the line has sent everything given so far

    def send(self, now, size, rate):
        """When a chunk of `size` bytes given now has left, at `rate` bits/s (0: no cap)."""
        self.free_at = max(now, self.free_at) + (size * 8 / rate if rate else 0)
        return self.free_at


async def carry(link, line, reader, writer, counter):
    """One direction: each chunk leaves when the line is free and has serialized it (the rate
    cap), and arrives one way's delay later. Ends with a half-close at the far end."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    window = Window(link.profile.in_flight())

    async def send():
        while True:
            data = await reader.read(CHUNK)
            profile = link.profile
            if data:
                await window.take(len(data))
            sent = line.send(loop.time(), len(data), profile.rate)
            queue.put_nowait((sent + profile.rtt / 2, data))
            if not data:
                return

    async def deliver():
        while True:
            at, data = await queue.get()
            if (delay := at - loop.time()) > 0:
                await asyncio.sleep(delay)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            counter[0] += len(data)
            loop.call_at(max(at, loop.time()) + link.profile.rtt / 2, window.give, len(data))

    async with asyncio.TaskGroup() as tasks:  # one fails: the other is cancelled
        tasks.create_task(send())
        tasks.create_task(deliver())


def destination(writer):
    """Where a connection the redirect rule brought to the relay was going (host, port)."""
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack("!2xH4s8x", raw)
    target = (socket.inet_ntoa(address), port)
    if target == sock.getsockname()[:2]:
        raise ConnectionRefusedError("a connection to the relay's own port, and no target set")
    return target


async def dial(target):
    """A connection to `target`, marked so that the redirect rule does not bring it back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def leaves(error):
    """The exceptions inside an exception group, however deeply nested (TaskGroups nest)."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


def relay_handler(link):
    async def handle(client_reader, client_writer):
        set_nodelay(client_writer)
        link.connections += 1
        entry = {"kind": "ssh", "connection": link.connections, "opened": time.time(),
                 "up": [0], "down": [0]}
        try:
            await asyncio.sleep(link.profile.rtt)  # the TCP handshake of a real link
            if link.pace.booting(time.time()):
                # The instance is still pending: nothing listens at its address yet.
                entry["refused"] = "pending"
                client_writer.transport.abort()
                return
            server_reader, server_writer = await dial(link.target or destination(client_writer))
            set_nodelay(server_writer)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(carry(link, link.up, client_reader, server_writer,
                                            entry["up"]))
                    tasks.create_task(carry(link, link.down, server_reader, client_writer,
                                            entry["down"]))
            finally:
                server_writer.close()
        except* (ConnectionError, OSError) as group:
            entry["error"] = "; ".join(f"{type(e).__name__}: {e}" for e in leaves(group))
        finally:
            client_writer.close()
            entry.update(closed=time.time(), up=entry["up"][0], down=entry["down"][0])
            link.note(**entry)

    return handle
