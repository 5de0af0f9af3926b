"""Dockyard: an asyncio-native multi-host container orchestrator (shared code and the CLI)."""

__version__ = "0.1.0"
