"""Identifier generation for controller-made objects."""

from __future__ import annotations

import secrets


def new_id() -> str:
    """Returns a fresh random id: 25 lower-case base-36 characters, like Swarm's, sortable by nothing."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(25))
