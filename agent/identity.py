"""The agent's persistent node id."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def load_or_create_node_id(state_dir: Path) -> str:
    """Returns the node id kept in state_dir/node-id, creating it on first start."""
    path = state_dir / "node-id"
    if path.exists():
        node_id = path.read_text().strip()
        if node_id:
            return node_id
    node_id = uuid.uuid4().hex[:25]
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
    return node_id
