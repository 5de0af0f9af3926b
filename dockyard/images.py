"""Image references as Docker reads them, for the controller, the agent and its runtimes alike (no Docker needed):
which registry credential an image needs, and whether two spellings name one image.

A registry is named one way everywhere (normalize_registry): the credentials the API stores, the registry the
dispatcher reads off an image to send them, and the agent's lookup of them all agree, whatever the spelling
(`Registry.Example.com`, `https://index.docker.io/v1/`).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_REGISTRY", "names_registry", "normalize_image", "normalize_registry", "registry_of"]

# The registry of a reference that names none ("nginx", "library/nginx").
DEFAULT_REGISTRY: Final = "docker.io"

# Docker Hub's spellings, all one registry (what `docker login` stores its credentials under).
_DOCKER_HUB: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


def normalize_registry(server: str) -> str:
    """A registry as credentials are kept under: host[:port], lower case, no scheme or path, Docker Hub as docker.io."""
    host = server.strip().lower()
    host = host.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    return DEFAULT_REGISTRY if host in _DOCKER_HUB else host


def names_registry(image: str) -> bool:
    """Tells whether the reference's first component is a registry host, as Docker reads it."""
    first, slash, _ = image.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost" or first != first.lower())


def registry_of(image: str) -> str:
    """The registry of an image reference, normalized (normalize_registry): docker.io when it names none."""
    return normalize_registry(image.partition("/")[0]) if names_registry(image) else DEFAULT_REGISTRY


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
