"""The machines of one simulated cloud, made of Linux namespaces (no container runtime, nothing
downloaded):

- the laptop: a network namespace with its own loopback and a bridge standing for the VPC,
  holding the address `Laptop.address_in(vpc)`, one the VPC's subnets never hand out. The
  ssh-ec2 under test runs in it (entered with nsenter or setns), so that two clouds of parallel
  tests, both 172.31.0.0/16, never meet. It has no route but its bridge: nothing in it can
  dial anything but loopback and the VPC. A VPC address with no machine up is refused at
  once, as loopback refuses a port nobody listens on (without this, a dial that beats the
  machine's boot waits a second for an ARP retry).
- an instance: network, UTS, IPC, mount and pid namespaces of its own (`unshare`), its private
  address on a veth whose other end is on the laptop's bridge, its disk mounted over its /home,
  /root, /tmp, /etc/ssh... (boot.sh), and a real sshd on port 22 as its pid 1.

Namespaces are held by processes, never named in /run/netns, and each holder dies with this
process (a parent-death signal), so that a killed cloud leaves no namespace, link or process.
"""

import ipaddress
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import firewall
import netns

BOOT_SH = Path(__file__).resolve().parent / "boot.sh"
BRIDGE = "vpc"
BOOT_TIMEOUT = 10.0
LAPTOP_RULES = """\
table inet laptop {
  set vpcs { type ipv4_addr; flags interval; }
  set up { type ipv4_addr; }
  chain output {
    type filter hook output priority filter; policy accept;
    ip daddr @vpcs ip daddr != @up meta l4proto tcp reject with tcp reset
    ip daddr @vpcs ip daddr != @up reject
  }
}
"""
# The child is killed when its parent thread dies, however it dies (SIGKILL included).
ORPHAN_KILLER = ["setpriv", "--pdeathsig", "KILL", "--"]


class BootError(Exception):
    """An instance that could not boot; its message says why, with its console's tail."""


class Laptop:
    """The laptop's network namespace, held by a `sleep` of our own."""

    def __init__(self):
        self.holder = subprocess.Popen(
            [*ORPHAN_KILLER, "unshare", "--net", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.netns = f"/proc/{self.holder.pid}/ns/net"
        self.addresses = set()
        self.links = 0
        own = netns.inode("/proc/self/ns/net")
        deadline = time.monotonic() + BOOT_TIMEOUT
        while netns.inode(self.netns) == own:  # until unshare has made it
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise BootError("the laptop's network namespace could not be made (unshare --net)")
            time.sleep(0.005)
        netns.ip_batch(self.netns, ["link set lo up", f"link add {BRIDGE} type bridge",
                                    f"link set {BRIDGE} up"])
        self.nft(LAPTOP_RULES)

    @staticmethod
    def address_in(vpc_cidr):
        """The laptop's address on the VPC's bridge: its last host address, which no subnet of
        the default VPC (172.31.0.0/20, 16.0/20, ...) ever hands out."""
        return str(ipaddress.ip_network(vpc_cidr)[-2])

    def join(self, vpc_cidr):
        """Puts the laptop on the VPC (once)."""
        if vpc_cidr not in self.addresses:
            prefix = ipaddress.ip_network(vpc_cidr).prefixlen
            address = self.address_in(vpc_cidr)
            netns.ip_batch(self.netns, [f"addr add {address}/{prefix} dev {BRIDGE}"])
            self.nft(f"add element inet laptop vpcs {{ {vpc_cidr} }}",
                     f"add element inet laptop up {{ {address} }}")
            self.addresses.add(vpc_cidr)

    def up(self, address, is_up):
        """Says whether a machine answers at `address` (see LAPTOP_RULES)."""
        verb = "add" if is_up else "delete"
        self.nft(f"{verb} element inet laptop up {{ {address} }}")

    def nft(self, *commands):
        netns.run(self.netns, ["nft", "-f", "-"], stdin="".join(c + "\n" for c in commands))

    def plug(self, instance_pid):
        """A veth from the bridge into the namespaces of `instance_pid`, where it is eth0."""
        self.links += 1
        link = f"vm{self.links}"  # never reused: a stopped instance's link may linger a moment
        netns.ip_batch(self.netns, [
            f"link add {link} type veth peer name eth0 netns {instance_pid}",
            f"link set {link} master {BRIDGE} up"])

    def stop(self):
        self.holder.kill()
        self.holder.wait()


class Network:
    """Where an instance is: its private address, its subnet and its VPC (CIDRs)."""

    def __init__(self, address, subnet_cidr, vpc_cidr):
        self.address, self.subnet, self.vpc = address, subnet_cidr, vpc_cidr

    def commands(self):
        """iproute2 commands, run in the instance's namespace, that put it on the VPC. The VPC's
        own route reaches the other subnets (and the laptop) through the bridge, as EC2's
        `local` route does; there is no default route."""
        prefix = ipaddress.ip_network(self.subnet).prefixlen
        commands = ["link set lo up", f"addr add {self.address}/{prefix} dev eth0",
                    "link set eth0 up"]
        if self.subnet != self.vpc:
            commands.append(f"route add {self.vpc} dev eth0")
        return commands


class Machine:
    """One instance's namespaces and processes while it runs; its disk outlives them."""

    def __init__(self, directory, laptop):
        self.dir = directory
        self.disk = directory / "disk"
        self.console = directory / "console.log"
        self.laptop = laptop
        self.process = None  # unshare, the parent of the instance's pid 1
        self.pid1 = None     # boot.sh, then sshd: the instance's first process
        self.netns = None
        self.rules = None    # the nftables script in force
        self.address = None  # its private address, while it is up

    def boot(self, network, rules):
        """Starts the instance: namespaces, network, firewall, then sshd. Returns sshd's pid
        (as this machine sees it) once sshd listens; raises BootError if it does not."""
        offset = self.console.stat().st_size if self.console.exists() else 0
        with open(self.console, "ab") as console:
            self.process = subprocess.Popen(
                [*ORPHAN_KILLER, "unshare", "--net", "--uts", "--ipc", "--mount", "--pid",
                 "--fork", "--kill-child", "--mount-proc", "--",
                 "/bin/sh", str(BOOT_SH), str(self.disk)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=console, cwd="/")
        try:
            self.expect_ready(offset)
            self.netns = f"/proc/{self.process.pid}/ns/net"
            self.pid1 = child_of(self.process.pid)
            self.laptop.plug(self.process.pid)
            netns.ip_batch(self.netns, network.commands())
            self.address = network.address
            self.laptop.up(network.address, True)
            self.set_rules(rules)
            self.process.stdin.write(b"go\n")
            self.process.stdin.close()
            self.wait_for_sshd(offset)
        except Exception as e:
            self.stop()
            raise BootError(f"{e}\n{self.console_tail(offset)}") from e
        return self.pid1

    def expect_ready(self, offset):
        ready, _, _ = select.select([self.process.stdout], [], [], BOOT_TIMEOUT)
        line = self.process.stdout.readline() if ready else b""
        if line != b"ready\n":
            raise BootError(f"boot.sh did not get ready (said {line!r})")
        self.process.stdout.close()

    def wait_for_sshd(self, offset):
        # sshd logs this right after listen(); a bind failure makes it exit instead.
        listening = b"Server listening on 0.0.0.0 port 22."
        deadline = time.monotonic() + BOOT_TIMEOUT
        delay = 0.002
        while listening not in self.console.read_bytes()[offset:]:
            if self.process.poll() is not None:
                raise BootError(f"sshd exited (status {self.process.returncode})")
            if time.monotonic() > deadline:
                raise BootError(f"sshd not listening after {BOOT_TIMEOUT} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def set_rules(self, rules):
        """Puts the instance's security-group rules in force, if they changed."""
        if rules != self.rules:
            firewall.apply(self.netns, rules)
            self.rules = rules

    def stop(self):
        """Power-off: its pid 1 is killed, and with it, by the kernel, every process it ran;
        its namespaces, its mounts and its veth go with the last of them."""
        if self.process is None:
            return
        if self.address:
            self.laptop.up(self.address, False)
        if self.pid1:
            kill(self.pid1)
        try:
            self.process.wait(timeout=5)  # unshare reaps pid 1, then exits
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = self.pid1 = self.netns = self.rules = self.address = None

    def console_tail(self, offset):
        return self.console.read_bytes()[offset:][-3000:].decode(errors="replace")


def child_of(pid):
    """The one child of `pid` (unshare --fork's: the instance's pid 1)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    for _ in range(200):
        children = path.read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.005)
    raise BootError(f"unshare ({pid}) has no child")


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
