"""The spec's units: byte sizes, durations, CPUs and ports, parsed exactly and formatted without loss.

Parsing raises ValueError whose text is a message fragment meant to follow a field path. The CLI and
the scheduler format bytes and ports with these functions too, so every output writes them alike.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from dockyard.spec.issues import describe, got

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4

# The largest value a protobuf int64 byte count can hold.
MAX_BYTES = 2**63 - 1
# The largest value a protobuf uint32 (ports, counts) can hold.
MAX_UINT32 = 2**32 - 1

# Letters follow Docker: a bare k/m/g/t is binary. Only the explicit "KB"-style symbols are decimal.
_BYTE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "k": KIB,
    "K": KIB,
    "KiB": KIB,
    "m": MIB,
    "M": MIB,
    "MiB": MIB,
    "g": GIB,
    "G": GIB,
    "GiB": GIB,
    "t": TIB,
    "T": TIB,
    "TiB": TIB,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}
_BINARY_UNITS = (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB))
_SIZE = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[A-Za-z]*)\s*\Z")

# Enough for any exact size or duration; far below the interpreter's limit on parsing integers.
_MAX_NUMBER_LENGTH = 60

NANOS_PER_SECOND = 10**9
# google.protobuf.Duration covers +-10000 years.
MAX_DURATION_SECONDS = 315_576_000_000
_DURATION_UNITS: dict[str, int] = {
    "h": 3600 * NANOS_PER_SECOND,
    "m": 60 * NANOS_PER_SECOND,
    "s": NANOS_PER_SECOND,
    "ms": 10**6,
    "us": 10**3,
    "ns": 1,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"\s*(?P<sign>[-+]?)(?P<body>(?:{_NUMBER}[A-Za-z]*)+)\s*\Z")
_COMPONENT = re.compile(rf"(?P<number>{_NUMBER})(?P<unit>[A-Za-z]*)")
_BARE_SECONDS = re.compile(rf"{_NUMBER}\Z")
DURATION_SHAPE = "must be a duration like 10s, 1m30s or 500ms, or a number of seconds"

_SHORT_PORT = re.compile(r"(?:(?P<host>\d+):)?(?P<container>\d+)(?:/(?P<protocol>[^/]*))?\Z")
PORT_SHAPE = (
    'must be "[HOST:]CONTAINER[/PROTOCOL]" like "8080:80/tcp", or a mapping with published, target and protocol'
)


def parse_bytes(text: str) -> int:
    """Parses a size such as "512MiB", "1.5G" or "1000" into bytes, rounding fractions of a byte down."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"must be a size like 512MiB or 2GiB, got {describe(text)}")
    unit = match["unit"]
    if unit not in _BYTE_UNITS:
        raise ValueError(f"unknown unit {describe(unit)}; use bytes or a unit like 512MiB or 2GiB")
    size = math.floor(_number(match["number"], text) * _BYTE_UNITS[unit])
    if size > MAX_BYTES:
        raise ValueError(f"is too large, got {describe(text)}; the maximum is {MAX_BYTES} bytes")
    return size


def byte_size(value: object) -> int:
    """Reads a byte size written as a whole number of bytes or as text ("64MiB"): 0 to MAX_BYTES, else ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_BYTES:
            raise ValueError(f"must be 0 to {MAX_BYTES} bytes, got {describe(value)}")
        return value
    if isinstance(value, str):
        return parse_bytes(value)
    raise ValueError(f"must be a size like 64MiB, got {got(value)}")


def format_bytes(n: int, *, approximate: bool = False) -> str:
    """Formats a byte count exactly in the largest binary unit that divides it ("512MiB", "1000B").

    With approximate=True it rounds to at most two decimals in the largest unit not above it ("7.6GiB",
    "1.25GiB"), which reads better for measured amounts but no longer parses back to the same number.
    """
    if approximate:
        for name, size in _BINARY_UNITS:
            if abs(n) >= size:
                return _decimal(round(Fraction(n, size) * 100), 100) + name
        return f"{n}B"
    for name, size in _BINARY_UNITS:
        if n != 0 and n % size == 0:
            return f"{n // size}{name}"
    return f"{n}B"


def format_cpus(cpus: float) -> str:
    """Formats a number of CPUs as a spec writes it, without a noisy trailing ".0": 2, 0.5, 1e+20."""
    if math.isfinite(cpus) and float(cpus).is_integer() and abs(cpus) < 1e15:
        return str(int(cpus))
    return repr(float(cpus))


def parse_port(text: str) -> tuple[int, int, str | None]:
    """Splits "8080:80/udp" into (host port, container port, protocol); host 0 and protocol None when left out.

    Numbers are returned unchecked; raises ValueError for anything that is not the short syntax.
    """
    text = text.strip()
    match = _SHORT_PORT.match(text)
    if match is not None:
        return _port_number(match["host"] or "0"), _port_number(match["container"]), match["protocol"]
    ports = text.partition("/")[0]
    if "-" in ports:
        raise ValueError(f"port ranges are not supported, got {describe(text)}; list each port separately")
    if ports.count(":") >= 2 or "[" in ports:
        raise ValueError(
            f"binding to a host address is not supported, got {describe(text)}; "
            "write HOST:CONTAINER without the address"
        )
    raise ValueError(f"{PORT_SHAPE}, got {describe(text)}")


def format_port(host_port: int, container_port: int, protocol: str, *, implied_protocol: str = "") -> str:
    """Writes a port as "8080:80/tcp", or "80/tcp" when Docker picks the host port.

    The protocol is left out when it is `implied_protocol`: the spec writer passes the default, tcp, to
    get the shortest form parse_port reads back.
    """
    text = f"{host_port}:{container_port}" if host_port else str(container_port)
    return text if protocol == implied_protocol else f"{text}/{protocol}"


MOUNT_SHAPE = 'must be "VOLUME:/path[:ro]" or "/host/path:/path[:ro]", or a mapping with type, source and target'
# Compose's mount options Docker's local volumes and Dockyard's agent do not apply.
_UNSUPPORTED_MOUNT_OPTIONS = ("z", "Z", "nocopy", "cached", "delegated", "consistent")


def parse_mount(text: str) -> tuple[str, str, str, bool]:
    """Splits Compose's short syntax "SOURCE:TARGET[:ro|rw]" into (kind, source, target, read_only).

    kind is "bind" when SOURCE is a path (starts with "/", "." or "~"), else "volume". Paths are returned
    unchecked; raises ValueError for anything that is not the short syntax, anonymous volumes included.
    """
    parts = text.split(":")
    if len(parts) == 1:
        raise ValueError(
            f"an anonymous volume is not supported, got {describe(text)}; name it, like {describe('data:' + text)}"
        )
    if len(parts) > 3 or not parts[0] or not parts[1]:
        raise ValueError(f"{MOUNT_SHAPE}, got {describe(text)}")
    source, target = parts[0], parts[1]
    read_only = False
    if len(parts) == 3:
        for option in parts[2].split(","):
            if option in ("ro", "rw"):
                read_only = option == "ro"
            elif option in _UNSUPPORTED_MOUNT_OPTIONS:
                raise ValueError(f"the option {describe(option)} is not supported, got {describe(text)}; remove it")
            else:
                raise ValueError(f'unknown option {describe(option)} in {describe(text)}; use "ro" or "rw"')
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    return kind, source, target, read_only


def format_mount(source: str, target: str, read_only: bool) -> str:
    """Writes a volume or bind mount in the short syntax parse_mount reads back."""
    return f"{source}:{target}:ro" if read_only else f"{source}:{target}"


def parse_duration_nanos(text: str) -> int:
    """Parses "500ms", "1m30s", "2h", "1.5s" or a bare number of seconds into whole nanoseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{DURATION_SHAPE}, got {describe(text)}")
    body = match["body"]
    if _BARE_SECONDS.match(body):
        total = _number(body, text) * NANOS_PER_SECOND
    else:
        total = Fraction(0)
        for component in _COMPONENT.finditer(body):
            unit = component["unit"]
            if not unit:
                raise ValueError(f"{DURATION_SHAPE}, got {describe(text)}; every number needs a unit")
            if unit not in _DURATION_UNITS:
                raise ValueError(
                    f"unknown unit {describe(unit)} in {describe(text)}; use h, m, s, ms, us or ns, like 1m30s"
                )
            total += _number(component["number"], text) * _DURATION_UNITS[unit]
    nanos = round(total)
    return check_duration_range(-nanos if match["sign"] == "-" else nanos, text)


def seconds_to_nanos(seconds: float) -> int:
    """Converts a number of seconds to whole nanoseconds; raises ValueError for NaN and infinities."""
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise ValueError(f"{DURATION_SHAPE}, got {describe(seconds)}")
    return check_duration_range(round(Fraction(seconds) * NANOS_PER_SECOND), describe(seconds))


def check_duration_range(nanos: int, shown: str) -> int:
    """Returns `nanos` if a protobuf Duration can hold it, else raises ValueError naming `shown`."""
    if abs(nanos) > MAX_DURATION_SECONDS * NANOS_PER_SECOND:
        raise ValueError(f"is too large, got {shown}; durations are limited to 10000 years")
    return nanos


def parse_duration(text: str) -> float:
    """Parses a duration such as "1m30s" into seconds."""
    return parse_duration_nanos(text) / NANOS_PER_SECOND


def format_duration_nanos(nanos: int) -> str:
    """Formats nanoseconds exactly as hours, minutes and decimal seconds, e.g. "1h30m", "1.5s", "250ms"."""
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < NANOS_PER_SECOND:
        unit = "ms" if nanos >= 10**6 else "us" if nanos >= 10**3 else "ns"
        return f"{sign}{_decimal(nanos, _DURATION_UNITS[unit])}{unit}"
    hours, rest = divmod(nanos, _DURATION_UNITS["h"])
    minutes, rest = divmod(rest, _DURATION_UNITS["m"])
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{_decimal(rest, NANOS_PER_SECOND)}s" if rest else "")
    return sign + "".join(parts)


def format_duration(seconds: float) -> str:
    """Formats seconds (rounded to the nanosecond) like format_duration_nanos: 90 -> "1m30s"."""
    return format_duration_nanos(seconds_to_nanos(seconds))


def _number(digits: str, text: str) -> Fraction:
    """Reads a decimal number exactly; refuses absurdly long ones, which no size or duration needs."""
    if len(digits) > _MAX_NUMBER_LENGTH:
        raise ValueError(f"has too many digits, got {describe(text)}")
    return Fraction(digits)


def _port_number(digits: str) -> int:
    # Any port this long is out of range anyway; capping avoids converting thousands of digits.
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= _MAX_NUMBER_LENGTH else 10**_MAX_NUMBER_LENGTH


def _decimal(amount: int, unit: int) -> str:
    """Writes amount/unit as an exact decimal; unit must be a power of ten."""
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), unit)
    if not fraction:
        return f"{sign}{whole}"
    digits = len(str(unit)) - 1
    return f"{sign}{whole}.{str(fraction).rjust(digits, '0').rstrip('0')}"
