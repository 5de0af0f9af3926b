"""Image references as Docker reads them, for the controller, the agent and its runtimes alike (no Docker needed):
which registry credential an image needs, and whether two spellings name one image.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_REGISTRY", "normalize_image", "registry_of"]

# The registry of a reference that names none ("nginx", "library/nginx").
DEFAULT_REGISTRY: Final = "docker.io"


def registry_of(image: str) -> str:
    """The registry host of an image reference, as Docker reads it: docker.io when it names none."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DEFAULT_REGISTRY


def normalize_image(image: str) -> str:
    """Spells a reference as `docker images` lists it: an untagged name means ':latest'; a digest stays.

    Docker Hub's own prefixes go ("docker.io/library/nginx" lists as "nginx:latest").
    """
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if image.startswith(prefix):
            image = image.removeprefix(prefix)
            break
    if "@" in image:
        return image
    last_component = image.rsplit("/", 1)[-1]
    return image if ":" in last_component else f"{image}:latest"
