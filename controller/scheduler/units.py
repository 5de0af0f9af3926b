"""Human-readable quantities for the scheduler's explanations."""

from __future__ import annotations

NANO_CPUS_PER_CPU = 1_000_000_000

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def nano_cpus(cpus: float) -> int:
    """Returns a CPU amount in whole billionths (never negative), the unit reservations are summed in."""
    # Summing floats drifts (0.1 + 0.2 > 0.3), which would reject a task that exactly fills a node.
    return max(0, round(cpus * NANO_CPUS_PER_CPU))


def _trimmed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_bytes(count: int) -> str:
    """Formats a byte count in the largest binary unit it reaches, with at most two decimals: 1.5GiB."""
    value = float(count)
    unit = _BINARY_UNITS[0]
    for unit in _BINARY_UNITS:
        if abs(value) < 1024 or unit == _BINARY_UNITS[-1]:
            break
        value /= 1024
    return f"{_trimmed(value, 2)}{unit}"


def format_cpus(nano: int) -> str:
    """Formats nano-CPUs as CPUs with at most three decimals and a unit: "0.5 CPUs", "1 CPU"."""
    text = _trimmed(nano / NANO_CPUS_PER_CPU, 3)
    return f"{text} CPU" if text == "1" else f"{text} CPUs"
