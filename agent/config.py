"""How one agent runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.policy import HostPolicy
from dockyard.limits import CONNECT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings; the controller's Welcome may override the heartbeat period."""

    # The controller's API address; empty: the one `dockyard-agent join` recorded (DEFAULT_CONTROLLER with
    # insecure).
    controller: str = ""
    state_dir: Path = Path("/var/lib/dockyard/agent")
    docker_url: str | None = None
    hostname: str = ""  # empty: the name Docker reports
    labels: Mapping[str, str] = field(default_factory=dict)
    heartbeat_period: float = 1.0
    relist_period: float = 5.0
    stranger_grace: float = 30.0
    parallel_operations: int = 32
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS  # a dial not connected by then is abandoned and made again
    # Plaintext to a loopback controller run with --insecure; the node id then lives in state_dir/node-id.
    insecure: bool = False
    policy: HostPolicy = field(default_factory=HostPolicy)  # what specs may ask of this host
    # The tmpfs for secret and config files (agent.files); None: <state_dir>/files, mounted there when needed.
    files_dir: Path | None = None
