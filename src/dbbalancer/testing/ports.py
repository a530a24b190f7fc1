"""Free loopback TCP ports for servers started by tests, the demo and the benchmarks.

The kernel picks an unused ephemeral port when a socket binds to port 0 (POSIX ``bind``). We
close the socket before the server binds it, so another process may take the port in between;
callers that start servers should retry on "address already in use".
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was unused when this function ran."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports on 127.0.0.1 that were unused when this function ran.

    All sockets stay bound until every port is chosen, so the kernel cannot hand out the same
    port twice within one call.
    """
    if n < 0:
        raise ValueError(f"cannot allocate a negative number of ports: {n}")
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
