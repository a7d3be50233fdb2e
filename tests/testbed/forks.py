"""cloud.py started by forking a process that has already imported it: importing boto3 and
moto's EC2 and IAM models costs about 1.2 s of CPU, which every test's cloud paid again (some
150 clouds a suite run, on 2 cores). See README.md beside this file, "Forked clouds".

    forks.py serve                 # imports cloud.py and moto, prints {"socket": PATH} when
                                   # ready, serves until its stdin reaches EOF
    forks.py run SOCKET ARGS...    # cloud.py ARGS..., forked by the server at SOCKET

`run` hands the server its stdin, stdout and stderr (SCM_RIGHTS), its environment and working
directory; the server forks, and the child becomes cloud.py on those, in a session of its own.
`run` exits with the child's status, and passes SIGTERM, SIGHUP and SIGINT on to it. The child
is the server's, not `run`'s: its lifeline is the stdin it was handed (cloud.py stops when it
reaches EOF), which is why a `run` that is killed leaves nothing behind.

Only the standard library at the top: `run` must start in milliseconds.
"""

import array
import json
import os
import select
import signal
import socket
import struct
import sys

STATUS = struct.Struct("!ii")  # (child pid, 0) once forked; then (child pid, exit status)


def serve():
    import tempfile

    # What the children would import one by one. moto reads its AMI list when its EC2 models
    # are imported: the bed's list, the same for every cloud (cloud.py writes it again).
    here = tempfile.mkdtemp(prefix="ssh-ec2-forks-")
    path = os.path.join(here, "socket")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cloud

    amis = os.path.join(here, "amis.json")
    cloud.write_amis_file(cloud.Path(amis))
    cloud.isolate_from_aws()
    os.environ["MOTO_AMIS_PATH"] = amis
    import moto.iam.access_control  # noqa: F401
    import moto.iam.models  # noqa: F401
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.server import ThreadedMotoServer  # noqa: F401

    # And what each cloud's first requests would build: botocore's EC2 model (every client of
    # the default session reuses it), moto's EC2 backend of the default region (nothing has
    # asked it anything: a child's is as fresh as its own would be).
    cloud.boto3.client("ec2", region_name=cloud.DEFAULT_REGION, endpoint_url="http://127.0.0.1:9")
    ec2_backends[DEFAULT_ACCOUNT_ID][cloud.DEFAULT_REGION]

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    # SIGCHLD wakes the loop through this pipe, so that a child's status goes out at once.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    print(json.dumps({"socket": path}), flush=True)
    clients = {}  # child pid -> its `run`'s connection
    try:
        while True:
            ready, _, _ = select.select([listener, wake_r, sys.stdin], [], [])
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
                return  # the tests are done: children go on until their own stdin ends
            if wake_r in ready:
                os.read(wake_r, 4096)
                reap(clients)
            if listener in ready:
                connection, _ = listener.accept()
                pid = fork_cloud(connection, cloud,
                                 [listener, wake_r, wake_w, *clients.values()])
                if pid:
                    clients[pid] = connection
    finally:
        for name in os.listdir(here):
            os.unlink(os.path.join(here, name))
        os.rmdir(here)


def reap(clients):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        connection = clients.pop(pid, None)
        if connection:
            try:
                connection.sendall(STATUS.pack(pid, os.waitstatus_to_exitcode(status)))
            except OSError:
                pass  # its `run` is gone
            connection.close()


def fork_cloud(connection, cloud, server_fds):
    """Forks a child that runs cloud.py as the request on `connection` asks; the child's pid,
    or None if the request was unreadable."""
    fds = array.array("i")
    message, ancillary, _, _ = connection.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if len(fds) != 3 or not message:
        for fd in fds:
            os.close(fd)
        connection.close()
        return None
    request = json.loads(message)
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        connection.sendall(STATUS.pack(pid, 0))
        return pid
    # The child: nothing of the server's, then cloud.py as if started afresh.
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in server_fds:
            os.close(fd.fileno() if hasattr(fd, "fileno") else fd)
        connection.close()
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["cloud.py", *request["args"]]
        import random

        random.seed()  # moto's ids come from `random`: each cloud its own, as if started afresh
        cloud.run()  # it ends the process itself
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(1)


def run(path, args):
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError as e:
        sys.exit(f"forks.py: no fork server at {path} ({e}): start it with `forks.py serve`")
    request = json.dumps({"args": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    connection.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [0, 1, 2]))])
    for fd in (0, 1, 2):
        os.close(fd)  # the child holds them: our copies must not keep its stdin open
    child = None

    def pass_on(signum, _):
        if child:
            os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, pass_on)
    while True:
        data = recv_exactly(connection, STATUS.size)
        if data is None:
            os._exit(1)  # the server went away
        pid, status = STATUS.unpack(data)
        if child is None:
            child = pid
        else:
            os._exit(status if status >= 0 else 128 - status)


def recv_exactly(connection, size):
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    elif len(sys.argv) >= 3 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
