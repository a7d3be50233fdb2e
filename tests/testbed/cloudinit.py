"""What cloud-init does at an instance's first boot, done on the instance's disk: a directory of
this machine that boot.sh mounts over the instance's /home, /root, /tmp, /etc/ssh, ... It reads
the #cloud-config user-data (the host key, the login keys), writes the host key to /etc/ssh,
the keys to the login user's ~/.ssh/authorized_keys, lets that user use sudo without a password
(as the Deep Learning AMIs do) and names the host after its private address, as EC2 does.
`runcmd` is not run; the simulator only logs it.
"""

import base64
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import yaml

# Host files an instance of the AMI has too (client settings for ssh between instances).
SSH_CLIENT_FILES = ("ssh_config", "ssh_config.d", "moduli")
SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {user}
AllowTcpForwarding yes
Subsystem sftp internal-sftp
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
AcceptEnv LANG LC_*
"""


class UserDataError(Exception):
    """The user-data cannot boot an instance (not #cloud-config, no host key...)."""


def read_config(ec2, instance_id):
    """The instance's #cloud-config user-data, as a mapping."""
    attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    encoded = (attribute.get("UserData") or {}).get("Value", "")
    text = base64.b64decode(encoded).decode("utf-8", "replace")
    if text.split("\n", 1)[0].strip() != "#cloud-config":
        raise UserDataError(f"user-data is not #cloud-config: {text[:80]!r}")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserDataError(f"user-data is not YAML: {e}") from e
    if not isinstance(config, dict):
        raise UserDataError(f"user-data is not a YAML mapping: {config!r}")
    return config


def host_key_of(config):
    keys = config.get("ssh_keys")
    key = keys.get("ed25519_private") if isinstance(keys, dict) else None
    if not isinstance(key, str):
        raise UserDataError("user-data has no ssh_keys.ed25519_private")
    return key if key.endswith("\n") else key + "\n"


def authorized_keys_of(config):
    return [k for k in config.get("ssh_authorized_keys") or [] if isinstance(k, str)]


def write_disk(disk, user, host_key, authorized_keys, address, dns_name, sudo=True):
    """Makes the instance's disk: its directories, its login, its host key and host name.
    `host_key` None: a fresh one, not the user-data's (the bed's --wrong-host-key); `sudo`
    False: the login user may not use sudo (the bed's --no-sudo)."""
    login = pwd.getpwnam(user)
    for path, mode in [("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777), ("var/log", 0o755),
                       ("etc/sudoers.d", 0o755), ("etc/ssh", 0o755), ("home", 0o755)]:
        (disk / path).mkdir(parents=True, exist_ok=True)
        (disk / path).chmod(mode)
    home = disk / "home" / user
    shutil.copytree("/etc/skel", home, symlinks=True)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text("".join(k.strip() + "\n" for k in authorized_keys))
    (ssh_dir / "authorized_keys").chmod(0o600)
    for path in [home, *home.rglob("*")]:
        os.lchown(path, login.pw_uid, login.pw_gid)
    write_etc(disk / "etc", user, host_key, address, dns_name, sudo)


def write_etc(etc, user, host_key, address, dns_name, sudo):
    for name in SSH_CLIENT_FILES:
        source = Path("/etc/ssh") / name
        if source.is_dir():
            shutil.copytree(source, etc / "ssh" / name, symlinks=True)
        elif source.exists():
            shutil.copy2(source, etc / "ssh" / name)
    (etc / "ssh/sshd_config").write_text(SSHD_CONFIG.format(user=user))
    key_file = etc / "ssh/ssh_host_ed25519_key"
    if host_key is None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wrong-host-key",
                        "-f", str(key_file)], check=True, stdin=subprocess.DEVNULL)
    else:
        key_file.write_text(host_key)
    key_file.chmod(0o600)  # sshd ignores a host key others can read
    if sudo:
        sudoers = etc / "sudoers.d/90-cloud-init-users"
        sudoers.write_text(f"# Created by cloud-init (the test bed)\n{user} ALL=(ALL) NOPASSWD:ALL\n")
        sudoers.chmod(0o440)
    short = dns_name.split(".")[0]
    (etc / "hostname").write_text(short + "\n")
    # sudo looks its host up: a name that does not resolve costs a warning on every call.
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
                               f"{address} {dns_name} {short}\n")
