"""Service specs: the YAML format users write, its validation, and its mapping to pb.ServiceSpec.

Every problem is reported as one line, `<field path>: <what is wrong and how to fix it>`, and a
loader reports all problems of a file at once. The format is documented in docs/spec.md; every
field's default and limits are in one table, dockyard.spec.schema.

The modules: schema (the field table), reader (YAML document to ServiceSpec), validation (checks of
a ServiceSpec, shared with the controller's API), issues (Issue, SpecError, paths), loading (files
and YAML), units (bytes, durations, CPUs, ports), writer (ServiceSpec to document), diff (what
changed between two specs, field by field), dependencies (the depends_on graph: cycles, start order),
stacks (the naming rules of stacks, networks and DNS), deployment (a file's services with its stack,
networks, volumes, secrets and configs).

The names below are loaded on first use (PEP 562), not with the package: the agent needs only the
schema table (defaults, the label prefix) and must not carry YAML, the reader and the validation
machinery in every host's memory (tests/unit/test_agent_imports.py pins this).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockyard.spec.deployment import Deployment
    from dockyard.spec.issues import Issue, SpecError
    from dockyard.spec.loading import load_deployment, load_deployment_file, load_spec, load_spec_file
    from dockyard.spec.units import (
        format_bytes,
        format_cpus,
        format_duration,
        format_port,
        parse_bytes,
        parse_duration,
        parse_port,
    )
    from dockyard.spec.validation import replica_budget_issues, service_issues, validate_service
    from dockyard.spec.writer import spec_to_document

__all__ = [
    "Deployment",
    "Issue",
    "SpecError",
    "format_bytes",
    "format_cpus",
    "format_duration",
    "format_port",
    "load_deployment",
    "load_deployment_file",
    "load_spec",
    "load_spec_file",
    "parse_bytes",
    "parse_duration",
    "parse_port",
    "replica_budget_issues",
    "service_issues",
    "spec_to_document",
    "validate_service",
]

# Which module defines each exported name.
_HOMES = {
    "Deployment": "deployment",
    "Issue": "issues",
    "SpecError": "issues",
    "load_deployment": "loading",
    "load_deployment_file": "loading",
    "load_spec": "loading",
    "load_spec_file": "loading",
    "format_bytes": "units",
    "format_cpus": "units",
    "format_duration": "units",
    "format_port": "units",
    "parse_bytes": "units",
    "parse_duration": "units",
    "parse_port": "units",
    "replica_budget_issues": "validation",
    "service_issues": "validation",
    "validate_service": "validation",
    "spec_to_document": "writer",
}


def __getattr__(name: str) -> Any:
    """Returns an exported name, importing its module on first use; AttributeError for any other name."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """Lists the exports with the module's own names, so tab completion and dir() see them before first use."""
    return sorted({*globals(), *__all__})
