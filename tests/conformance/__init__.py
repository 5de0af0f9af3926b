"""Runs the runtime conformance suite of agent.testing against the FakeRuntime and the aiodocker adapter."""
