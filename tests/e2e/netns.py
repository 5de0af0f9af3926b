"""Named network namespaces for the e2e network tests: each made with its loopback up, all removed at the end."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs argv inside the network namespace `ns`; raises on a non-zero exit when check is set."""
    return subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{ns}", "--", *argv], check=check, capture_output=True, text=True
    )


@dataclass
class Namespaces:
    """The namespaces a test makes, named `<prefix><name>` so that they never meet the machine's own."""

    prefix: str
    namespaces: list[str] = field(default_factory=list, kw_only=True)

    def ns(self, name: str) -> str:
        """The namespace standing for `name`."""
        return f"{self.prefix}{name}"

    def add_ns(self, name: str) -> str:
        """Makes the namespace standing for `name`, its loopback up, and returns its name."""
        ns = self.ns(name)
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        self.namespaces.append(ns)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        return ns

    def remove_namespaces(self) -> None:
        """Deletes every namespace made, newest first; one already gone is no error."""
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
