"""The conformance suite every ContainerRuntime must pass."""
