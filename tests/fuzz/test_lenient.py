"""The lenient stream deserializer: a message that does not parse becomes an Unparsable, never an exception."""

from __future__ import annotations

from controller.api.handlers import Unparsable, lenient
from dockyard.v1 import agent_pb2 as apb
from tests.fuzz.hostile import deep_groups


def test_a_message_that_parses_is_returned_as_is() -> None:
    message = apb.AgentMessage(hello=apb.Hello(node_id="n1"))
    assert lenient(apb.AgentMessage)(message.SerializeToString()) == message


def test_bytes_that_do_not_parse_become_an_unparsable_naming_the_type() -> None:
    parse = lenient(apb.AgentMessage)
    for raw in (b"\xff\xff", b"\x0a\x03\x0a\x01\xff", deep_groups(150)):
        result = parse(raw)
        assert isinstance(result, Unparsable)
        assert str(result).startswith("message: not a valid dockyard.v1.AgentMessage: ")
