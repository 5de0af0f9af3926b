"""The naming rules of stacks, networks and service discovery: the one home every part of Dockyard reads.

A stack's objects have cluster-wide names `<stack>_<name>`, as `docker stack deploy` gives them: the
service `web` of stack `shop` is `shop_web`, its default network `shop_default`, its volume `db-data`
is `shop_db-data`. A service with no stack and no networks joins the cluster network `dockyard`; a
stack's service with no networks joins `<stack>_default` (Compose's rule). Service discovery answers
`<service>.<stack>.dockyard` for a stack's service and `<service>.dockyard` otherwise, and containers
search `<stack>.dockyard` so that the short name resolves within the stack.

Stack names follow Compose's project names: lower case letters, digits, "_" and "-", starting with a
letter or digit (normalize_stack turns a folder's name into one as Compose does).

The agent imports this module (DNS search domains, default networks), so it must stay light: no YAML,
no validation machinery; problems come back as plain text for the caller to put on a field path.
"""

from __future__ import annotations

import re
from typing import Final

from dockyard.spec.issues import describe, quote
from dockyard.v1 import types_pb2 as pb

# The network every service without a stack and without networks joins; it exists from the controller's start.
CLUSTER_NETWORK: Final = "dockyard"
# The DNS zone the agents' servers answer: `<service>.dockyard`, `<service>.<stack>.dockyard`.
DNS_DOMAIN: Final = "dockyard"
# Between a stack's name and its objects' short names, as `docker stack deploy` writes it.
SEPARATOR: Final = "_"
# A stack's network for services that name none, as Compose's `default`.
DEFAULT_NETWORK: Final = "default"

# A stack name is a DNS label in service discovery (`web.shop.dockyard`), so it is held to a label's length.
MAX_STACK_BYTES: Final = 63
# Docker's own limits are loose; this keeps cluster-wide names readable in `ls` output and in Docker's
# interface names, and leaves room for a stack's prefix on any short name.
MAX_OBJECT_NAME_BYTES: Final = 128

# Compose's project name rule (compose-go's loader): these characters only, a letter or digit first.
_STACK = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_STACK_DROPPED = re.compile(r"[^a-z0-9_-]")
# What Docker accepts as a volume's name (the strictest of volumes, networks, secrets and configs).
_OBJECT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")


def normalize_stack(name: str) -> str:
    """Turns any text (a folder's name) into a stack name as Compose makes a project name; "" when nothing is left."""
    return _STACK_DROPPED.sub("", name.lower()).lstrip("_-")


def stack_problem(name: str) -> str | None:
    """Why `name` is not a valid stack name, as text for a field path; None when valid ("" is valid: no stack)."""
    if not name:
        return None
    if len(name.encode()) > MAX_STACK_BYTES:
        return f"stack name must be at most {MAX_STACK_BYTES} bytes long, got {len(name.encode())}; use a shorter name"
    if not _STACK.match(name):
        suggestion = normalize_stack(name)
        fix = f"; did you mean {quote(suggestion)}?" if suggestion else ""
        return (
            'stack name must be lowercase letters, digits, "_" or "-", starting with a letter or digit, '
            f"got {describe(name)}{fix}"
        )
    return None


def object_name_problem(name: str) -> str | None:
    """Why `name` is not valid as the cluster-wide name of a network, volume, secret or config; None when it is."""
    if not name:
        return "name must not be empty"
    if len(name.encode()) > MAX_OBJECT_NAME_BYTES:
        return f"name must be at most {MAX_OBJECT_NAME_BYTES} bytes long, got {len(name.encode())}; use a shorter name"
    if not _OBJECT_NAME.match(name):
        return (
            'name must be at least 2 letters, digits, "_", "." or "-", starting with a letter or digit, '
            f"got {describe(name)}"
        )
    return None


def scoped(stack: str, name: str) -> str:
    """The cluster-wide name of a stack's object: `<stack>_<name>`; `name` itself when there is no stack."""
    return f"{stack}{SEPARATOR}{name}" if stack else name


def short(stack: str, scoped_name: str) -> str:
    """The name within the stack: `scoped_name` without `<stack>_`; unchanged when not the stack's (or no stack)."""
    prefix = f"{stack}{SEPARATOR}"
    if stack and scoped_name.startswith(prefix) and len(scoped_name) > len(prefix):
        return scoped_name[len(prefix) :]
    return scoped_name


def belongs(stack: str, scoped_name: str) -> bool:
    """Whether `scoped_name` is a cluster-wide name of stack `stack` (`<stack>_<something>`)."""
    return bool(stack) and short(stack, scoped_name) != scoped_name


def default_network(stack: str) -> str:
    """The network a service that names none joins: `<stack>_default` for a stack's, else the cluster network."""
    return scoped(stack, DEFAULT_NETWORK) if stack else CLUSTER_NETWORK


def networks_of(spec: pb.ServiceSpec) -> tuple[str, ...]:
    """The cluster-wide names of the networks the service's containers join, in the spec's order."""
    return tuple(spec.networks) or (default_network(spec.stack),)


def dns_name(spec: pb.ServiceSpec) -> str:
    """The name service discovery answers for the service: `<short>.<stack>.dockyard`, or `<name>.dockyard`."""
    return qualified_dns_name(short(spec.stack, spec.name), spec.stack)


def qualified_dns_name(name: str, stack: str) -> str:
    """The full DNS name of `name` as seen from within `stack`: `<name>.<stack>.dockyard`, or `<name>.dockyard`."""
    return f"{name}.{stack}.{DNS_DOMAIN}" if stack else f"{name}.{DNS_DOMAIN}"


def dns_search(spec: pb.ServiceSpec) -> tuple[str, ...]:
    """The search domains of the service's containers, most specific first, so the short name resolves in the stack.

    A stack's containers also search `dockyard`, so `db.other` reaches stack `other`'s `db` and a
    service outside any stack by its bare name.
    """
    if spec.stack:
        return (f"{spec.stack}.{DNS_DOMAIN}", DNS_DOMAIN)
    return (DNS_DOMAIN,)


def alias(spec: pb.ServiceSpec) -> str:
    """The name the service's containers answer to on their networks: the short name within the stack."""
    return short(spec.stack, spec.name)
