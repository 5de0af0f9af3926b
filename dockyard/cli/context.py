"""Where the CLI finds the controller and its credentials.

The controller: --controller, then DOCKYARD_CONTROLLER, then what `dockyard up` wrote. The admin credentials (a
directory with ca.crt, admin.crt and admin.key): --credentials, then DOCKYARD_CREDENTIALS, then what `dockyard
up` wrote; with none, the CLI speaks plaintext, which only a controller run with --insecure answers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dockyard import pki
from dockyard.limits import DEFAULT_CONTROLLER

ADMIN_STEM = pki.ADMIN_STEM


@dataclass(frozen=True)
class LocalContext:
    """What `dockyard up` recorded about the cluster it started."""

    controller: str
    state_dir: str
    credentials: str = ""  # the admin credentials directory; empty: none recorded


def config_dir() -> Path:
    """Returns ~/.config/dockyard, honouring XDG_CONFIG_HOME."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockyard"


def default_state_dir() -> Path:
    """Returns the default state directory of `dockyard up`, honouring XDG_DATA_HOME."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dockyard"


def read_context() -> LocalContext | None:
    """Returns the recorded context, or None when there is none or it is unreadable."""
    path = config_dir() / "context.json"
    try:
        data = json.loads(path.read_text())
        controller, state_dir = data["controller"], data["state_dir"]
        credentials = data.get("credentials", "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(controller, str) or not controller or not isinstance(state_dir, str):
        return None
    return LocalContext(
        controller=controller, state_dir=state_dir, credentials=credentials if isinstance(credentials, str) else ""
    )


def write_context(context: LocalContext) -> None:
    """Records the context atomically."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "context.json.tmp"
    data = {"controller": context.controller, "state_dir": context.state_dir, "credentials": context.credentials}
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, directory / "context.json")


def resolve_controller(flag: str | None) -> str:
    """Returns the controller address the CLI should use."""
    if flag:
        return flag
    env = os.environ.get("DOCKYARD_CONTROLLER")
    if env:
        return env
    context = read_context()
    return context.controller if context else DEFAULT_CONTROLLER


def local_credentials_dir(state_dir: Path) -> Path:
    """Where `dockyard up` keeps the admin credentials it makes for its state dir."""
    return state_dir / ADMIN_STEM


def resolve_credentials(flag: str | None) -> pki.Credentials | None:
    """Returns the admin credentials the CLI should present, None for plaintext; PkiError when unreadable."""
    directory = flag or os.environ.get("DOCKYARD_CREDENTIALS")
    if not directory:
        context = read_context()
        directory = context.credentials if context else ""
    if not directory:
        return None
    return pki.Credentials.load(Path(directory), ADMIN_STEM)
