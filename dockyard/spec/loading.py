"""Loading service specs from YAML text or a file: parse, read, validate, and report all problems at once."""

from __future__ import annotations

import os

from dockyard.spec.errors import SpecError
from dockyard.spec.reader import read_document
from dockyard.spec.yaml_source import parse_yaml
from dockyard.v1 import types_pb2 as pb


def load_spec(text: str, source: str = "<spec>") -> list[pb.ServiceSpec]:
    """Returns the valid specs of a YAML document in file order; raises SpecError listing every problem.

    `source` names the text in syntax errors and in problems with the document as a whole.
    """
    specs, issues = read_document(parse_yaml(text, source), source)
    if issues:
        raise SpecError(str(issue) for issue in issues)
    return specs


def load_spec_file(path: str | os.PathLike[str]) -> list[pb.ServiceSpec]:
    """Reads a UTF-8 file and loads it like load_spec; an unreadable file raises SpecError naming it."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8-sig") as file:
            text = file.read()
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"]) from None
    except OSError as exc:
        raise SpecError([f"{source}: cannot read the file: {exc.strerror or exc}"]) from None
    return load_spec(text, source)
