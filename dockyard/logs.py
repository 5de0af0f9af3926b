"""Structured logging set-up shared by the controller, the agent and the supervisor."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "console", component: str = "") -> None:
    """Routes structlog and stdlib logging to stderr as key=value lines (console) or JSON lines (json)."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component:
        processors.append(_bind_component(component))
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _bind_component(component: str) -> structlog.types.Processor:
    def add(_logger: object, _name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.setdefault("component", component)
        return event

    return add
