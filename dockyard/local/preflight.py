"""Checks `dockyard up` makes before it starts anything.

The controller refuses a busy address itself, but by then the local agent may have dialled whatever holds
the address and joined another cluster; so `up` looks first.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["address_problem"]


def address_problem(listen: str) -> str | None:
    """Returns a one-line reason when the controller could not bind `listen` now (in use), else None.

    Forms it cannot parse return None: the controller's own bind reports on those.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) == 0:
        return None
    host = host.removeprefix("[").removesuffix("]")
    try:
        addresses = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC does: a connection in TIME_WAIT is no conflict. Without SO_REUSEPORT, as the controller.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"--listen {listen}: address already in use (another cluster? `dockyard down --state-dir"
                        " DIR` stops it); choose another --listen"
                    )
    return None
