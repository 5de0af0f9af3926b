"""Compose's variable interpolation and .env files (dockyard.spec.interpolate)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.spec.interpolate import (
    InterpolationError,
    interpolate,
    parse_dotenv,
    project_variables,
    substitute,
)
from dockyard.spec.issues import SpecError

VARS = {"SET": "value", "EMPTY": "", "TAG": "16", "INNER": "inner"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("$SET", "value"),
        ("${SET}", "value"),
        ("a${SET}b", "avalueb"),
        ("$SET-x", "value-x"),
        ("$UNSET", ""),
        ("${UNSET}", ""),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${SET:-d}", "value"),
        ("${SET:+x}", "x"),
        ("${EMPTY:+x}", ""),
        ("${EMPTY+x}", "x"),
        ("${UNSET+x}", ""),
        ("${SET:?boom}", "value"),
        ("${EMPTY?boom}", ""),
        ("$$", "$"),
        ("$${SET}", "${SET}"),
        ("cost: $$5", "cost: $5"),
        ("postgres:${TAG:-15}", "postgres:16"),
        ("${UNSET:-${INNER}}", "inner"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-a b: c}", "a b: c"),
        # An unused word is not evaluated: its ${X:?} does not fail.
        ("${SET:-${UNSET:?never}}", "value"),
        ("${UNSET:+${UNSET2:?never}}", ""),
    ],
)
def test_substitute(text: str, expected: str) -> None:
    assert substitute(text, VARS) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${UNSET:?needs a password}", "required variable UNSET is not set: needs a password"),
        ("${EMPTY:?}", "required variable EMPTY is empty"),
        ("${UNSET?}", "required variable UNSET is not set"),
        ("echo $1", 'write "$$" for a literal "$"'),
        ("${}", 'empty "${}"'),
        ("${SET", 'unterminated "${"'),
        ("${UNSET:-abc", 'unterminated "${"'),
        ("${1abc}", "invalid variable name"),
        ("${SET%x}", "invalid interpolation"),
        ("trailing $", "invalid interpolation"),
    ],
)
def test_substitute_errors(text: str, fragment: str) -> None:
    with pytest.raises(InterpolationError) as caught:
        substitute(text, VARS)
    assert fragment in str(caught.value)


def test_interpolate_walks_values_not_keys_and_reports_every_path() -> None:
    document = {
        "services": {
            "web": {
                "image": "nginx:${TAG}",
                "environment": {"$SET": "${UNSET:?a}", "B": ["$SET", 3, None, True]},
                "command": "echo $1",
            }
        },
        "x-ignored": {"a": "${UNSET:?never read}"},
    }
    result, issues = interpolate(document, VARS)
    assert [issue.path for issue in issues] == ['services.web.environment["$SET"]', "services.web.command"]
    assert isinstance(result, dict)
    web = result["services"]["web"]
    assert web["image"] == "nginx:16"
    assert web["environment"]["B"] == ["value", 3, None, True]
    # Keys are as written; a refused value stays as written.
    assert web["environment"]["$SET"] == "${UNSET:?a}"
    assert result["x-ignored"] == {"a": "${UNSET:?never read}"}


def test_interpolate_copies_anchor_shared_objects() -> None:
    shared = {"A": "$SET"}
    document = {"one": shared, "two": shared}
    result, issues = interpolate(document, VARS)
    assert not issues
    assert isinstance(result, dict)
    assert result["one"] == result["two"] == {"A": "value"}
    assert result["one"] is not result["two"]
    assert shared == {"A": "$SET"}


def test_dotenv_forms() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "PLAIN=abc",
            "export EXPORTED=1",
            "SPACED = two words  # comment",
            "HASH=a#b",
            "SINGLE='literal $PLAIN # not a comment'",
            'DOUBLE="line\\nnext $PLAIN"',
            'MULTI="first',
            'second"',
            "REF=${PLAIN}-${OUTSIDE:-none}",
            "EMPTY=",
            "BARE",
            "MISSING_BARE",
        ]
    )
    values = parse_dotenv(text, ".env", {"BARE": "from-process"})
    assert values == {
        "PLAIN": "abc",
        "EXPORTED": "1",
        "SPACED": "two words",
        "HASH": "a#b",
        "SINGLE": "literal $PLAIN # not a comment",
        "DOUBLE": "line\nnext abc",
        "MULTI": "first\nsecond",
        "REF": "abc-none",
        "EMPTY": "",
        "BARE": "from-process",
    }


def test_dotenv_reports_every_bad_line() -> None:
    with pytest.raises(SpecError) as caught:
        parse_dotenv("GOOD=1\n1BAD=x\nQ='open\nR=${X:?needed}\n", "app/.env")
    assert caught.value.errors[0].startswith("app/.env:2:")
    assert "not a variable name" in caught.value.errors[0]
    assert caught.value.errors[1].startswith("app/.env:3:")
    assert "never closed" in caught.value.errors[1]
    # Reading goes on after an unclosed quote, so the lines after it are still checked.
    assert caught.value.errors[2].startswith("app/.env:4: R: required variable X is not set: needed")
    assert len(caught.value.errors) == 3


def test_project_variables_process_env_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=15\nONLY_FILE=f\nUSES=${TAG}\n")
    variables = project_variables(str(tmp_path), {"TAG": "16"})
    assert variables["TAG"] == "16"
    assert variables["ONLY_FILE"] == "f"
    # The .env file's own references see the process env too.
    assert variables["USES"] == "16"


def test_project_variables_without_dotenv(tmp_path: Path) -> None:
    assert project_variables(str(tmp_path), {"A": "1"}) == {"A": "1"}


@given(
    st.text(max_size=60), st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), st.text(max_size=8))
)
def test_substitute_fails_only_with_its_error(text: str, variables: dict[str, str]) -> None:
    try:
        result = substitute(text, variables)
    except InterpolationError:
        return
    if "$" not in text:
        assert result == text


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=40))
def test_text_without_dollar_is_unchanged(text: str) -> None:
    assert substitute(text, VARS) == text
    assert substitute(text.replace("a", "$$"), VARS) == text.replace("a", "$")
