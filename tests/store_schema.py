"""What the store tests check of a migrated store file: the current schema, laid out as a fresh store's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from controller.store.sqlite import _SCHEMA, _layout

_INDEXES = "SELECT name FROM sqlite_schema WHERE type = 'index'"


def assert_current_schema(path: Path, *, indexes: bool = False) -> None:
    """The store file at path is at schema version 4 with a fresh store's tables (and, if asked, its indexes)."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (4,)
        fresh = sqlite3.connect(":memory:", isolation_level=None)
        fresh.executescript(_SCHEMA)
        assert _layout(conn) == _layout(fresh)
        if indexes:
            assert {row[0] for row in conn.execute(_INDEXES)} == {row[0] for row in fresh.execute(_INDEXES)}
        fresh.close()
    conn.close()
