"""Compose's variable interpolation, and the .env files it reads its variables from.

The rules are the Compose specification's: `$VAR` and `${VAR}` are replaced by the variable's value
(empty when unset); `${VAR:-default}` / `${VAR-default}` give a default when the variable is unset or
empty / unset; `${VAR:?message}` / `${VAR?message}` are an error then; `${VAR:+other}` / `${VAR+other}`
give `other` when it is set and non-empty / set, else nothing; `$$` is a literal `$`. Defaults,
messages and replacements may themselves hold interpolations. A `$` followed by anything else is an
error, as in Compose, whose advice is to write `$$`.

Only string values are interpolated (mapping keys are not). Every problem is reported with the key
path of the value it is in, and all of them at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from dockyard.spec.issues import Issue, SpecError, describe, index_path, key_path
from dockyard.spec.loading import read_text

# The file beside a Compose file that holds default values for its variables.
DOTENV = ".env"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Compose's operators after the name inside braces, longest first.
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
# Far beyond anything a real file nests; keeps a hostile value from exhausting the interpreter stack.
_MAX_DEPTH = 32
_ESCAPE_ADVICE = 'write "$$" for a literal "$"'


class InterpolationError(ValueError):
    """A value that cannot be interpolated; the text is a message fragment meant to follow a key path."""


@dataclass(frozen=True)
class _Cursor:
    """Where substitution stopped: the text produced and the index after what was consumed."""

    text: str
    end: int


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Returns `text` with every interpolation replaced; raises InterpolationError saying what is wrong."""
    if "$" not in text:
        return text
    return _substitute(text, 0, variables, closing=False, depth=0).text


def _substitute(text: str, start: int, variables: Mapping[str, str], *, closing: bool, depth: int) -> _Cursor:
    """Substitutes from `start` up to the end, or up to the unmatched "}" when `closing` (a nested default)."""
    if depth > _MAX_DEPTH:
        raise InterpolationError(f"interpolations are nested more than {_MAX_DEPTH} deep in {describe(text)}")
    out: list[str] = []
    i = start
    while i < len(text):
        char = text[i]
        if closing and char == "}":
            return _Cursor("".join(out), i)
        if char != "$":
            out.append(char)
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "{":
            cursor = _braced(text, i + 2, variables, depth)
            out.append(cursor.text)
            i = cursor.end
        elif name := _NAME.match(text, i + 1):
            out.append(variables.get(name.group(), ""))
            i = name.end()
        else:
            raise InterpolationError(
                f"invalid interpolation in {describe(text)} at {describe(text[i : i + 10])}; {_ESCAPE_ADVICE}"
            )
    if closing:
        raise InterpolationError(f'unterminated "${{" in {describe(text)}; close it with "}}" or {_ESCAPE_ADVICE}')
    return _Cursor("".join(out), i)


def _braced(text: str, start: int, variables: Mapping[str, str], depth: int) -> _Cursor:
    """Reads `NAME[op word]}` from `start` (just after "${") and returns its value and the index after "}"."""
    name = _NAME.match(text, start)
    if name is None:
        if text.startswith("}", start):
            raise InterpolationError(f'empty "${{}}" in {describe(text)}; name a variable or {_ESCAPE_ADVICE}')
        raise InterpolationError(
            f"invalid variable name at {describe(text[start : start + 20])} in {describe(text)}; "
            f"names are letters, digits and _, not starting with a digit; or {_ESCAPE_ADVICE}"
        )
    variable = name.group()
    i = name.end()
    value = variables.get(variable)
    if text.startswith("}", i):
        return _Cursor(value or "", i + 1)
    operator = next((op for op in _OPERATORS if text.startswith(op, i)), None)
    if operator is None:
        if i >= len(text):
            raise InterpolationError(f'unterminated "${{" in {describe(text)}; close it with "}}" or {_ESCAPE_ADVICE}')
        raise InterpolationError(
            f"invalid interpolation ${{{variable}{text[i : i + 1]}...}} in {describe(text)}; "
            f"use ${{{variable}}}, ${{{variable}:-default}}, ${{{variable}:?error}} or ${{{variable}:+other}}"
        )
    # The word is substituted only when it is used, as a shell does: ${A:-${B:?}} needs B only without A.
    set_and_not_empty = bool(value)
    is_set = value is not None
    applies = set_and_not_empty if operator.startswith(":") else is_set
    word_start = i + len(operator)
    kind = operator[-1]
    if kind == "-":
        if applies:
            return _Cursor(value or "", _skip(text, word_start, depth))
        return _Cursor(*_word(text, word_start, variables, depth))
    if kind == "+":
        if not applies:
            return _Cursor("", _skip(text, word_start, depth))
        return _Cursor(*_word(text, word_start, variables, depth))
    # "?": an error when the variable is missing (or empty, with ":"), with the file's own message.
    if applies:
        return _Cursor(value or "", _skip(text, word_start, depth))
    message, _ = _word(text, word_start, variables, depth)
    missing = "is not set" if not is_set else "is empty"
    raise InterpolationError(
        f"required variable {variable} {missing}"
        + (f": {message}" if message else "")
        + "; set it in the environment or in the .env file beside the Compose file"
    )


def _word(text: str, start: int, variables: Mapping[str, str], depth: int) -> tuple[str, int]:
    """Substitutes the word after an operator; returns it and the index after its closing "}"."""
    cursor = _substitute(text, start, variables, closing=True, depth=depth + 1)
    return cursor.text, cursor.end + 1


def _skip(text: str, start: int, depth: int) -> int:
    """Returns the index after the "}" that closes a word which is not used, checking only its syntax."""
    # Checked against no variables with every operator satisfied, so an unused ${X:?} never fails.
    cursor = _substitute(text, start, _AlwaysSet(), closing=True, depth=depth + 1)
    return cursor.end + 1


class _AlwaysSet(Mapping[str, str]):
    """Variables that are all set to "x": reading a word through it checks syntax without ever failing."""

    def __getitem__(self, key: str) -> str:
        return "x"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def interpolate(document: object, variables: Mapping[str, str], path: str = "") -> tuple[object, list[Issue]]:
    """Returns a copy of a parsed document with every string value interpolated, and the problems found.

    Mapping keys are kept as written. A refused value stays as written, so the rest can be read.
    Top-level "x-" extension fields are left alone: Compose ignores them, and their contents reach
    the services only through YAML anchors, where they are interpolated at their use.
    """
    issues: list[Issue] = []
    result = _walk(document, variables, path, issues, top=True)
    return result, issues


def _walk(value: object, variables: Mapping[str, str], path: str, issues: list[Issue], *, top: bool = False) -> object:
    # A new structure is built: YAML anchors share one object between several paths.
    if isinstance(value, str):
        try:
            return substitute(value, variables)
        except InterpolationError as exc:
            issues.append(Issue(path or "<document>", str(exc)))
            return value
    if isinstance(value, dict):
        return {
            key: (
                item
                if top and isinstance(key, str) and key.startswith("x-")
                else _walk(item, variables, key_path(path, key if isinstance(key, str) else describe(key)), issues)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_walk(item, variables, index_path(path, i), issues) for i, item in enumerate(value)]
    return value


# --- .env files ------------------------------------------------------------------------------------------

_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?(?P<key>[^=\s]+)\s*(?:=(?P<value>.*))?\Z", re.DOTALL)
_DOUBLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$$"}


def parse_dotenv(text: str, source: str, lookup: Mapping[str, str] | None = None) -> dict[str, str]:
    """Reads a .env (or env_file) text: `KEY=value` lines; raises SpecError listing every bad line.

    As Compose's: blank lines and `#` comments are skipped, `export ` is allowed, single-quoted values
    are literal, double-quoted ones take \\n-style escapes and may span lines, an unquoted value ends
    at " #". Unquoted and double-quoted values are interpolated from `lookup`, then the earlier lines. A
    bare `KEY` (no "=") takes its value from `lookup` and is left out when `lookup` has none.
    """
    values: dict[str, str] = {}
    errors: list[str] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            errors.append(f"{source}:{number}: expected KEY=value, got {describe(stripped)}")
            continue
        key = match["key"]
        if not _NAME.fullmatch(key):
            errors.append(
                f"{source}:{number}: {describe(key)} is not a variable name; "
                "use letters, digits and _, not starting with a digit"
            )
            continue
        raw = match["value"]
        scope = _Chain(lookup or {}, values)
        if raw is None:
            if key in scope:
                values[key] = scope[key]
            continue
        raw = raw.strip()
        try:
            if raw.startswith("'"):
                value, number = _quoted(raw, "'", lines, number, source)
            elif raw.startswith('"'):
                quoted, number = _quoted(raw, '"', lines, number, source)
                value = substitute(_unescape(quoted), scope)
            else:
                value = substitute(re.split(r"\s#", raw, maxsplit=1)[0].rstrip(), scope)
        except (InterpolationError, _DotenvError) as exc:
            errors.append(f"{source}:{number}: {key}: {exc}")
            continue
        values[key] = value
    if errors:
        raise SpecError(errors)
    return values


class _DotenvError(ValueError):
    """A malformed line of a .env file."""


def _quoted(raw: str, quote: str, lines: list[str], number: int, source: str) -> tuple[str, int]:
    """Returns a quoted value's inside (continuing onto the next lines until the quote closes) and the line reached."""
    body = raw[1:]
    while True:
        end = _closing_quote(body, quote)
        if end is not None:
            rest = body[end + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise _DotenvError(f"unexpected {describe(rest)} after the closing quote")
            return body[:end], number
        if number >= len(lines):
            raise _DotenvError(f"the value's {quote} quote is never closed")
        body += "\n" + lines[number]
        number += 1


def _closing_quote(body: str, quote: str) -> int | None:
    i = 0
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return None


def _unescape(text: str) -> str:
    # "\$" becomes "$$", so that substitution leaves a literal "$".
    return re.sub(r"\\(.)", lambda m: _DOUBLE_ESCAPES.get(m[1], "\\" + m[1]), text, flags=re.DOTALL)


class _Chain(Mapping[str, str]):
    """Two mappings read as one, the first winning: the outside variables (they win), then the file's earlier lines."""

    def __init__(self, first: Mapping[str, str], second: Mapping[str, str]) -> None:
        self._first = first
        self._second = second

    def __getitem__(self, key: str) -> str:
        if key in self._first:
            return self._first[key]
        return self._second[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._first
        yield from (key for key in self._second if key not in self._first)

    def __len__(self) -> int:
        return len(set(self._first) | set(self._second))


def project_variables(directory: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a Compose file in `directory` is interpolated with: its .env (if any) under the process env.

    The process environment wins over the .env file, as in Compose. Raises SpecError for a bad .env.
    """
    process = dict(os.environ if environ is None else environ)
    dotenv_path = os.path.join(directory, DOTENV)
    dotenv: dict[str, str] = {}
    if os.path.isfile(dotenv_path):
        dotenv = parse_dotenv(read_text(dotenv_path), dotenv_path, process)
    return {**dotenv, **process}
