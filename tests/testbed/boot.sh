#!/bin/sh
# The first process of a simulated instance: pid 1 of its own pid namespace, already in its own
# network, UTS, IPC and mount namespaces (machines.py starts it through unshare). It turns the
# instance's disk, a directory on this machine, into the instance's own files, takes the host
# name cloud-init wrote there, says "ready", waits until machines.py has wired its network
# ("go" on stdin), then becomes the instance's sshd. Everything the instance runs descends from
# it: killing it ends them all, as a power-off would.
#
#   boot.sh DISK
set -eu
disk="$1"
hostname -F "$disk/etc/hostname"

# Memory, empty at each boot as on a real machine; /run/screen as systemd-tmpfiles makes it.
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mkdir -m 755 /run/sshd
mkdir -m 1777 /run/screen
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm

# The instance's own directories and files, over the machine's.
for path in home root etc/ssh etc/sudoers.d etc/hosts etc/hostname var/log var/tmp; do
    mount --bind "$disk/$path" "/$path"
done
# Last: the disk itself may lie under /tmp, which this hides.
mount --bind "$disk/tmp" /tmp

echo ready
read -r go || exit 1
[ "$go" = go ] || exit 1
# Logs on stderr, which machines.py keeps outside the disk, as the instance's console.
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config </dev/null >&2
