"""The shape of a container image reference: [registry[:port]/]path[:tag][@digest]."""

from __future__ import annotations

import re

# Written from the reference grammar Docker documents; catching a bad name here beats a failed pull later.
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:]+\])"
_REGISTRY = rf"{_HOST}(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_REGISTRY}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?\Z")

# Docker refuses repository names longer than this.
_MAX_NAME_LENGTH = 255


def is_image_reference(text: str) -> bool:
    """Tells whether `text` is a well-formed image reference such as "nginx:1.27" or "reg:5000/a/b:v1"."""
    match = _REFERENCE.match(text)
    return match is not None and len(match["name"]) <= _MAX_NAME_LENGTH
