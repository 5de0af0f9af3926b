"""Container runtimes behind one small protocol: the Docker adapter (over engine_api) and a fake (in agent.testing)."""
