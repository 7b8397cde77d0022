"""Many idle TCP connections between a Pair's namespaces, for the telemetry benchmarks."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .netns import B, Pair

#: The server side: accepts ``count`` connections on B:``port`` and holds them until stdin closes.
SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
print("listening", flush=True)
held = [s.accept()[0] for _ in range(int(sys.argv[3]))]
print("accepted", flush=True)
sys.stdin.read()
"""


def raise_file_limit(needed: int) -> None:
    """The soft limit on open files up to the hard one; SystemExit if that is still too few."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        raise SystemExit(f"needs {needed} file descriptors, the limit is {hard}")


@contextmanager
def held_connections(pair: Pair, count: int, port: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections from namespace a to B:``port``, whose other ends a server process
    in namespace b holds; all closed on exit."""
    raise_file_limit(count + 100)
    server = subprocess.Popen(["ip", "netns", "exec", pair.b.name, sys.executable, "-c", SERVER, B, str(port),
                               str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        with pair.a.entered():
            for _ in range(count):
                c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                c.connect((B, port))
                clients.append(c)
        assert server.stdout.readline().strip() == "accepted"
        yield clients
    finally:
        for c in clients:
            c.close()
        if server.stdin is not None:
            server.stdin.close()
        server.wait(30)
