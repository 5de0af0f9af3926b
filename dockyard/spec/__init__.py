"""Service specs: the YAML format users write, its validation, and its mapping to pb.ServiceSpec.

Every problem is reported as one line, `<field path>: <what is wrong and how to fix it>`, and a
loader reports all problems of a file at once. The format is documented in docs/spec.md.
"""

from dockyard.spec.errors import SpecError
from dockyard.spec.loading import load_spec, load_spec_file
from dockyard.spec.units import format_bytes, format_duration, parse_bytes, parse_duration
from dockyard.spec.validation import validate_service
from dockyard.spec.writer import spec_to_document

__all__ = [
    "SpecError",
    "format_bytes",
    "format_duration",
    "load_spec",
    "load_spec_file",
    "parse_bytes",
    "parse_duration",
    "spec_to_document",
    "validate_service",
]
