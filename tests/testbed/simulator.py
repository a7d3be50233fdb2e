"""The boot simulator: follows moto's instances and gives each one a machine (machines.py) that
runs while the instance runs, with the disk cloud-init made at first sight (cloudinit.py).

It asks moto for the instances of the bed's region right after each AWS call that goes through
the proxy (`wake`), and every IDLE_POLL_SECONDS otherwise (the tests' own calls go to moto
directly), then per instance:
first sight: read its user-data and key pair, write its disk; running (plus --boot-delay):
boot its machine; stopped: power it off, keeping the disk; terminated (or gone from moto):
power it off and delete the disk. Running machines get their security groups' rules again
at every poll (firewall.py).
"""

import shutil
import threading
import time

from botocore.exceptions import ClientError

import cloudinit
import firewall
import netns
from machines import BootError, Machine, Network

# Polling moto costs its CPU (the describe calls): ~15 % of a core at 20 polls a second, on a
# 2-core machine that runs two tests' clouds at once. Waking on the proxy's traffic keeps it
# prompt where it matters: ssh-ec2 waits right after its own calls.
IDLE_POLL_SECONDS = 0.25
ENDED = ("shutting-down", "terminated")


class Box:
    """What the simulator keeps for one instance."""

    def __init__(self, instance_id, directory, laptop):
        self.id = instance_id
        self.machine = Machine(directory, laptop)
        self.ready = False         # its disk is written from valid user-data
        self.running = False       # its machine runs
        self.running_since = None  # when the simulator first saw it running (for --boot-delay)
        self.failed = False        # it could not boot: no retry until it is started again
        self.deleted = False       # terminated: its disk is gone


class Simulator(threading.Thread):
    """Polls moto and keeps one machine per running instance. It starts every machine itself:
    their parent-death signal is tied to this thread, so they die if the process dies."""

    def __init__(self, args, ec2, events, laptop):
        super().__init__(daemon=True, name="simulator")
        self.args, self.ec2, self.events, self.laptop = args, ec2, events, laptop
        self.boxes = {}
        self.cidrs = {}  # subnet or VPC id -> its CIDR block (they never change)
        self.seen = []   # the instances of the last poll, as moto describes them
        self.halt = threading.Event()
        self.woken = threading.Event()

    def run(self):
        try:
            while not self.halt.is_set():
                self.woken.wait(IDLE_POLL_SECONDS)
                self.woken.clear()  # before the poll: a call during it means another poll
                if self.halt.is_set():
                    break
                try:
                    self.poll()
                except Exception as e:  # keep simulating: a test may reset moto or race it
                    self.events.error(f"boot simulator: {type(e).__name__}: {e}")
        finally:
            for box in self.boxes.values():
                self.power_off(box, "cloud-exit")

    def wake(self):
        """Polls now: an AWS call may have changed an instance."""
        self.woken.set()

    def stop(self):
        """Powers every machine off, and returns once they are."""
        self.halt.set()
        self.woken.set()
        self.join()

    def poll(self):
        seen = {}
        for page in self.ec2.get_paginator("describe_instances").paginate():
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    seen[instance["InstanceId"]] = instance
        self.seen = list(seen.values())
        for instance_id, instance in seen.items():
            box = self.boxes.get(instance_id)
            if box is None:
                box = self.boxes[instance_id] = Box(
                    instance_id, self.args.state_dir / instance_id, self.laptop)
                if instance["State"]["Name"] not in ENDED:
                    self.prepare(box, instance)
            self.step(box, instance)
        for box in self.boxes.values():
            if box.id not in seen:
                self.end(box, "gone")
        running = [box for box in self.boxes.values() if box.running]
        if running:
            rules = self.group_rules()
            for box in running:
                box.machine.set_rules(rules[box.id])

    def step(self, box, instance):
        state = instance["State"]["Name"]
        if state in ENDED:
            self.end(box, state)
        elif state != "running":
            box.running_since, box.failed = None, False
            self.power_off(box, state)
        elif box.deleted and not box.failed:
            box.failed = True
            self.events.error("a terminated instance was started again (moto lets it; AWS does "
                              "not): its disk is gone", instance=box.id)
        elif not (box.running or box.failed) and box.ready:
            box.running_since = box.running_since or time.monotonic()
            if time.monotonic() - box.running_since >= self.args.boot_delay:
                self.boot(box, instance)

    def prepare(self, box, instance):
        """Writes the instance's disk from its user-data and key pair, as cloud-init would."""
        try:
            config = cloudinit.read_config(self.ec2, box.id)
            host_key = None if self.args.wrong_host_key else cloudinit.host_key_of(config)
        except cloudinit.UserDataError as e:
            self.events.error(str(e), instance=box.id)
            return
        authorized = cloudinit.authorized_keys_of(config) + self.key_pair(box, instance)
        if not authorized:
            self.events.error("no authorized key in user-data nor key pair", instance=box.id)
        self.events.emit("runcmd", instance=box.id, runcmd=config.get("runcmd"))
        box.machine.dir.mkdir(exist_ok=True)
        cloudinit.write_disk(box.machine.disk, self.args.user, host_key, authorized,
                             instance.get("PrivateIpAddress", "127.0.0.1"),
                             instance.get("PrivateDnsName") or box.id, sudo=not self.args.no_sudo)
        box.ready = True

    def key_pair(self, box, instance):
        """The public key of the instance's key pair, as AWS copies it at launch. moto keeps
        only its name, so a key pair deleted before the first poll is lost."""
        name = instance.get("KeyName")
        if not name:
            return []
        try:
            pairs = self.ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)
        except ClientError as e:
            self.events.error(f"key pair {name!r}: {e}", instance=box.id)
            return []
        return [p["PublicKey"] for p in pairs["KeyPairs"] if p.get("PublicKey")]

    def boot(self, box, instance):
        try:
            network = self.network_of(instance)
            self.laptop.join(network.vpc)
            pid = box.machine.boot(network, self.group_rules()[box.id])
        except BootError as e:
            box.failed = True
            self.events.error(str(e), instance=box.id)
            return
        box.running = True
        self.events.emit("sshd-started", instance=box.id, address=network.address, pid=pid,
                         netns=netns.inode(box.machine.netns))

    def network_of(self, instance):
        """The instance's place on the VPC; refuses what the bed must never boot."""
        public = instance.get("PublicIpAddress")
        if public:
            raise BootError(f"the instance has the public address {public}: the bed boots no "
                            "instance with a public IP (its subnet must not map one)")
        subnet, vpc = instance.get("SubnetId"), instance.get("VpcId")
        if not (subnet and vpc and instance.get("PrivateIpAddress")):
            raise BootError("the instance is in no subnet of a VPC")
        return Network(instance["PrivateIpAddress"], self.cidr_of(subnet), self.cidr_of(vpc))

    def cidr_of(self, resource):
        if resource not in self.cidrs:
            if resource.startswith("subnet-"):
                found = self.ec2.describe_subnets(SubnetIds=[resource])["Subnets"]
            else:
                found = self.ec2.describe_vpcs(VpcIds=[resource])["Vpcs"]
            self.cidrs[resource] = found[0]["CidrBlock"]
        return self.cidrs[resource]

    def group_rules(self):
        """Instance id -> the nftables rules its security groups call for now."""
        groups = {g["GroupId"]: g for g in self.ec2.describe_security_groups()["SecurityGroups"]}
        members = firewall.members(self.seen)
        return {i["InstanceId"]: firewall.ruleset(i, groups, members) for i in self.seen}

    def power_off(self, box, state):
        if box.running:
            box.machine.stop()
            box.running = False
            self.events.emit("sshd-stopped", instance=box.id, state=state)

    def end(self, box, state):
        """Terminated: powered off, and its disk deleted, as EC2 deletes its root volume."""
        self.power_off(box, state)
        if not box.deleted:
            shutil.rmtree(box.machine.disk, ignore_errors=True)
            box.deleted = True
            self.events.emit("disk-deleted", instance=box.id)
