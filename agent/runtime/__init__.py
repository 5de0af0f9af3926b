"""Container runtimes behind one small protocol: the aiodocker adapter and a fake (agent.testing ships it)."""
