"""The naming rules of dockyard.spec.stacks: scoped names, default networks, DNS names, stack names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.spec import stacks
from dockyard.v1 import types_pb2 as pb

_STACKS = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
_NAMES = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)


def test_constants_name_the_cluster_network_and_zone() -> None:
    assert stacks.CLUSTER_NETWORK == "dockyard"
    assert stacks.DNS_DOMAIN == "dockyard"


@pytest.mark.parametrize(
    ("stack", "name", "expected"),
    [
        ("shop", "web", "shop_web"),
        ("shop", "db-data", "shop_db-data"),
        ("my_shop", "db_password", "my_shop_db_password"),
        ("", "web", "web"),
    ],
)
def test_scoped_prefixes_the_stack(stack: str, name: str, expected: str) -> None:
    assert stacks.scoped(stack, name) == expected


@pytest.mark.parametrize(
    ("stack", "scoped_name", "expected"),
    [
        ("shop", "shop_web", "web"),
        ("shop", "shop_db_password", "db_password"),
        ("my_shop", "my_shop_web", "web"),
        # Not the stack's: unchanged, so a stack's service on the cluster network keeps its name.
        ("shop", "dockyard", "dockyard"),
        ("shop", "shopping_web", "shopping_web"),
        ("shop", "shop_", "shop_"),
        ("", "shop_web", "shop_web"),
    ],
)
def test_short_strips_only_the_stacks_own_prefix(stack: str, scoped_name: str, expected: str) -> None:
    assert stacks.short(stack, scoped_name) == expected


@given(_STACKS, _NAMES)
def test_short_undoes_scoped(stack: str, name: str) -> None:
    assert stacks.short(stack, stacks.scoped(stack, name)) == name
    assert stacks.belongs(stack, stacks.scoped(stack, name))


def test_belongs_needs_a_stack_and_its_prefix() -> None:
    assert stacks.belongs("shop", "shop_web")
    assert not stacks.belongs("shop", "web")
    assert not stacks.belongs("", "shop_web")


def test_default_network_is_the_stacks_default_or_the_cluster_network() -> None:
    assert stacks.default_network("shop") == "shop_default"
    assert stacks.default_network("") == "dockyard"


def test_networks_of_prefers_the_specs_own_networks() -> None:
    assert stacks.networks_of(pb.ServiceSpec(name="web")) == ("dockyard",)
    assert stacks.networks_of(pb.ServiceSpec(name="shop_web", stack="shop")) == ("shop_default",)
    spec = pb.ServiceSpec(name="shop_web", stack="shop", networks=["shop_front", "shop_back"])
    assert stacks.networks_of(spec) == ("shop_front", "shop_back")


def test_dns_names_and_search_domains() -> None:
    plain = pb.ServiceSpec(name="web")
    assert stacks.dns_name(plain) == "web.dockyard"
    assert stacks.dns_search(plain) == ("dockyard",)
    assert stacks.alias(plain) == "web"
    stacked = pb.ServiceSpec(name="shop_web", stack="shop")
    assert stacks.dns_name(stacked) == "web.shop.dockyard"
    assert stacks.dns_search(stacked) == ("shop.dockyard", "dockyard")
    assert stacks.alias(stacked) == "web"


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("shop", "shop"),
        ("My Shop", "myshop"),
        ("My_Shop-2", "my_shop-2"),
        ("_-shop", "shop"),
        ("shop.example.com", "shopexamplecom"),
        ("Ünïcode", "ncode"),
        ("...", ""),
        ("", ""),
    ],
)
def test_normalize_stack_as_compose_does(folder: str, expected: str) -> None:
    assert stacks.normalize_stack(folder) == expected


@given(st.text(max_size=40))
def test_a_normalized_name_is_valid_or_empty(text: str) -> None:
    normal = stacks.normalize_stack(text)
    assert normal == "" or stacks.stack_problem(normal[: stacks.MAX_STACK_BYTES]) is None


@pytest.mark.parametrize("name", ["shop", "a", "0", "my_shop", "shop-2", "x" * 63, ""])
def test_valid_stack_names(name: str) -> None:
    assert stacks.stack_problem(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("Shop", ['did you mean "shop"?', "lowercase"]),
        ("_shop", ['did you mean "shop"?', "starting with a letter or digit"]),
        ("-", ["starting with a letter or digit"]),
        ("my shop", ['did you mean "myshop"?']),
        ("x" * 64, ["at most 63 bytes", "got 64"]),
    ],
)
def test_invalid_stack_names_say_why_and_the_fix(name: str, words: list[str]) -> None:
    problem = stacks.stack_problem(name)
    assert problem is not None
    for word in words:
        assert word in problem


@pytest.mark.parametrize("name", ["shop_web", "db-data", "db.data", "ab", "A1", "x" * 128])
def test_valid_object_names(name: str) -> None:
    assert stacks.object_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", ["must not be empty"]),
        ("a", ["at least 2"]),
        ("_db", ["starting with a letter or digit"]),
        ("db/data", ['got "db/data"']),
        ("x" * 129, ["at most 128 bytes"]),
    ],
)
def test_invalid_object_names(name: str, words: list[str]) -> None:
    problem = stacks.object_name_problem(name)
    assert problem is not None
    for word in words:
        assert word in problem
