"""Network namespaces, entered by path (/proc/PID/ns/net) and never named in /run/netns, so that
a namespace lives exactly as long as the process holding it: nothing outlives a killed test.

Python 3.11 has no os.setns, hence ctypes. A network namespace belongs to a thread, not to the
process: `in_netns` enters it in a thread of its own, so the caller's thread never moves. A
socket stays in the namespace it was created in, whichever thread uses it later; that is how
one process serves the root namespace and a laptop namespace at once.
"""

import ctypes
import os
import subprocess
import threading
from http.server import ThreadingHTTPServer

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def in_netns(path, function, *args):
    """Returns function(*args) as called from inside the network namespace at `path`."""
    result = {}

    def enter_and_call():
        try:
            _setns(path)
            result["value"] = function(*args)
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=enter_and_call, name="netns")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def run(path, argv, stdin=None):
    """Runs argv inside the network namespace at `path` (nsenter), failing loudly."""
    done = subprocess.run(["nsenter", f"--net={path}", "--", *argv], input=stdin,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {path}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def ip_batch(path, commands):
    """Runs iproute2 commands (one `ip` invocation, `ip -batch`) inside the namespace."""
    run(path, ["ip", "-batch", "-"], stdin="".join(c + "\n" for c in commands))


def inode(path):
    """The namespace's identity: equal inodes, same namespace."""
    return os.stat(path).st_ino


def serve(handler, namespaces):
    """Serves `handler` (an http.server handler class) on the same 127.0.0.1 port here and in
    each network namespace of `namespaces`, from daemon threads, so that one URL means the same
    server on both sides. Returns the port."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler)]
    port = servers[0].server_address[1]
    # Free there: a namespace of ours holds only listeners of this process, on ports taken here.
    servers += [in_netns(path, ThreadingHTTPServer, ("127.0.0.1", port), handler)
                for path in namespaces]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return port
