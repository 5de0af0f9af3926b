"""Loading service specs from YAML text or a file: parse, read, check, and report all problems at once.

The YAML is read without YAML 1.1's surprising scalars and with duplicate keys refused; syntax
errors name the source with line and column.
"""

from __future__ import annotations

import os
import re

import yaml

from dockyard.spec import schema
from dockyard.spec.deployment import Deployment
from dockyard.spec.issues import Issue, SpecError, index_path, key_path
from dockyard.spec.reader import ReadFile, read_deployment
from dockyard.v1 import types_pb2 as pb


def load_spec(text: str, source: str = "<spec>") -> list[pb.ServiceSpec]:
    """Returns the valid specs of a YAML document in file order; raises SpecError listing every problem.

    `source` names the text in syntax errors and in problems with the document as a whole. The
    document's stack and top-level objects are checked but not returned: load_deployment returns them.
    """
    return load_deployment(text, source).specs


def load_spec_file(path: str | os.PathLike[str]) -> list[pb.ServiceSpec]:
    """Reads a UTF-8 file and loads it like load_spec; an unreadable file raises SpecError naming it."""
    return load_deployment_file(path).specs


def load_deployment(text: str, source: str = "<spec>", base: str | os.PathLike[str] = ".") -> Deployment:
    """Returns what a YAML document asks an apply for; raises SpecError listing every problem.

    Files named by the document's secrets and configs are read relative to folder `base`.
    """
    deployment, issues = read_deployment(parse_yaml(text, source), source, files_under(base))
    if issues:
        raise SpecError(str(issue) for issue in issues)
    return deployment


def load_deployment_file(path: str | os.PathLike[str]) -> Deployment:
    """Reads a UTF-8 file and loads it like load_deployment, relative to its folder; SpecError names a bad file."""
    source = os.fspath(path)
    return load_deployment(read_text(source), source, os.path.dirname(source) or ".")


def read_text(source: str) -> str:
    """The text of a UTF-8 spec file; SpecError naming the file when it cannot be read."""
    try:
        with open(source, encoding="utf-8-sig") as file:
            return file.read()
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"]) from None
    except OSError as exc:
        raise SpecError([f"{source}: cannot read the file: {exc.strerror or exc}"]) from None


def files_under(base: str | os.PathLike[str]) -> ReadFile:
    """Reads the files a spec names (secrets, configs), relative paths from folder `base`; OSError when it cannot."""

    def read(name: str) -> bytes:
        with open(os.path.join(base, os.path.expanduser(name)), "rb") as file:
            return file.read(schema.FILE_BYTES.maximum + 1)

    return read


_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"

# YAML 1.1 reads unquoted yes/no/on/off as booleans and 22:22 as a base-60 number, which silently
# breaks env values and "HOST:CONTAINER" ports. Like YAML 1.2 (and Compose), only true/false are
# booleans here and there is no base-60.
_BOOL = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")
_INT = re.compile(r"[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0[0-7_]+|0|[1-9][0-9_]*)\Z")
_FLOAT = re.compile(
    r"(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"
)


class _SpecLoader(yaml.SafeLoader):
    """A SafeLoader without YAML 1.1's surprising scalars that reports duplicated mapping keys."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """Builds an integer, turning the interpreter's refusal of huge ones into a located YAML error."""
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, "this integer has too many digits", node.start_mark
            ) from None

    def duplicate_keys(self, root: yaml.Node) -> list[Issue]:
        """Walks the node graph once (aliases included) and returns one issue per repeated key."""
        issues: list[Issue] = []
        visited: set[int] = set()
        # Iterative, since deeply nested documents would exhaust the interpreter stack.
        pending: list[tuple[yaml.Node, str]] = [(root, "")]
        while pending:
            node, path = pending.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                pending.extend((item, index_path(path, i)) for i, item in reversed(list(enumerate(node.value))))
            elif isinstance(node, yaml.MappingNode):
                issues += self._mapping_duplicates(node, path, pending)
        return issues

    def _mapping_duplicates(
        self, node: yaml.MappingNode, path: str, pending: list[tuple[yaml.Node, str]]
    ) -> list[Issue]:
        issues = []
        first_line: dict[object, int] = {}
        children = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                children.append((value_node, path))
                continue
            child_path = key_path(path, str(key_node.value))
            children.append((value_node, child_path))
            # Compare constructed keys, so that `yes:` and `true:` count as the same key, as in the result.
            key = (type(value := self.construct_object(key_node)), value)
            line = key_node.start_mark.line + 1
            if key in first_line:
                issues.append(
                    Issue(
                        child_path,
                        f"is defined twice (lines {first_line[key]} and {line}); "
                        "YAML would silently keep only the last one, so remove or rename one of them",
                    )
                )
            else:
                first_line[key] = line
        pending.extend(reversed(children))
        return issues


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_constructor(_INT_TAG, _SpecLoader.construct_yaml_int)
_SpecLoader.add_implicit_resolver(_BOOL_TAG, _BOOL, list("tTfF"))
_SpecLoader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
_SpecLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+.0123456789"))


def parse_yaml(text: str, source: str) -> object:
    """Parses one YAML document into plain Python values; raises SpecError for bad syntax or duplicate keys.

    Syntax errors read `<source>:<line>:<col>: invalid YAML: <problem>`. An empty document gives None.
    """
    try:
        loader = _SpecLoader(text)
    except yaml.reader.ReaderError as exc:
        raise SpecError([_unreadable_character(exc, text, source)]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = loader.duplicate_keys(node)
        if duplicates:
            raise SpecError(str(issue) for issue in duplicates)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "cannot parse"
        raise SpecError([f"{where}: invalid YAML: {_one_line(problem)}"]) from None
    except RecursionError:
        raise SpecError([f"{source}: invalid YAML: the document is nested too deeply"]) from None
    finally:
        loader.dispose()


def _unreadable_character(exc: yaml.reader.ReaderError, text: str, source: str) -> str:
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
    return (
        f"{source}:{line}:{column}: invalid YAML: character U+{code:04X} is not allowed; "
        "remove it, or write it as an escape inside a double-quoted string"
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
