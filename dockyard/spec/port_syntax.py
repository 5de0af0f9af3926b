"""The short port syntax "[HOST:]CONTAINER[/PROTOCOL]", read and written."""

from __future__ import annotations

import re

from dockyard.spec.defaults import PORT_PROTOCOL
from dockyard.spec.display import describe

_SHORT_PORT = re.compile(r"(?:(?P<host>\d+):)?(?P<container>\d+)(?:/(?P<protocol>[^/]*))?\Z")
_MAX_DIGITS = 30
PORT_SHAPE = (
    'must be "[HOST:]CONTAINER[/PROTOCOL]" like "8080:80/tcp", or a mapping with published, target and protocol'
)


def parse_port(text: str) -> tuple[int, int, str]:
    """Splits "8080:80/udp" into (host port, container port, protocol); host 0 and "tcp" when left out.

    Numbers are returned unchecked; raises ValueError for anything that is not the short syntax.
    """
    text = text.strip()
    match = _SHORT_PORT.match(text)
    if match is not None:
        protocol = match["protocol"] if match["protocol"] is not None else PORT_PROTOCOL
        return _number(match["host"] or "0"), _number(match["container"]), protocol
    ports = text.partition("/")[0]
    if "-" in ports:
        raise ValueError(f"port ranges are not supported, got {describe(text)}; list each port separately")
    if ports.count(":") >= 2 or "[" in ports:
        raise ValueError(
            f"binding to a host address is not supported, got {describe(text)}; "
            "write HOST:CONTAINER without the address"
        )
    raise ValueError(f"{PORT_SHAPE}, got {describe(text)}")


def _number(digits: str) -> int:
    # Any port this long is out of range anyway; capping avoids converting thousands of digits.
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= _MAX_DIGITS else 10**_MAX_DIGITS


def format_port(host_port: int, container_port: int, protocol: str) -> str:
    """Writes a port in the shortest short syntax that parse_port reads back identically."""
    text = f"{host_port}:{container_port}" if host_port else str(container_port)
    return text if protocol == PORT_PROTOCOL else f"{text}/{protocol}"
