"""Service specs: the YAML format users write, its validation, and its mapping to pb.ServiceSpec.

Every problem is reported as one line, `<field path>: <what is wrong and how to fix it>`, and a
loader reports all problems of a file at once. The format is documented in docs/spec.md; every
field's default and limits are in one table, dockyard.spec.schema.

The modules: schema (the field table), reader (YAML document to ServiceSpec), validation (checks of
a ServiceSpec, shared with the controller's API), issues (Issue, SpecError, paths), loading (files
and YAML), units (bytes, durations, CPUs, ports), writer (ServiceSpec to document).
"""

from dockyard.spec.issues import Issue, SpecError
from dockyard.spec.loading import load_spec, load_spec_file
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
    "Issue",
    "SpecError",
    "format_bytes",
    "format_cpus",
    "format_duration",
    "format_port",
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
