"""One SQLite file in WAL mode with its own schema: what the exemplar and aggregate databases share.

WAL with ``synchronous=NORMAL`` keeps every committed transaction through a killed process (kill -9
included), which the resumable commands rely on; ``transaction`` rolls back on any exception.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from .errors import FeatureTreeError, OutputError

Store = TypeVar("Store", bound="SQLiteStore")


class SQLiteStore:
    """A connection to one database file; subclasses give ``error``, the messages and ``_init_schema``.
    Use as a context manager."""

    error: type[FeatureTreeError] = FeatureTreeError
    kind = "database"  # "exemplar database", ...: how messages name the file
    build_hint = ""  # the fix for a missing or empty file
    unusable_hint = "choose another --out"

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise self.error(f"{self.kind} {self.path} not found", self.build_hint)
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputError(f"cannot create folder {self.path.parent} ({err.strerror})", "choose another --out") from None
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._init_schema(create)
        except sqlite3.DatabaseError as err:
            raise self.error(f"{self.path} is not a usable SQLite database ({err})", self.unusable_hint) from None

    def _init_schema(self, create: bool) -> None:
        raise NotImplementedError

    def tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def create_schema(self, create: bool, schema: str, version: int) -> None:
        """A new file's tables and ``schema_version`` (the file has no tables yet)."""
        if not create:
            raise self.error(f"{self.path} is empty", self.build_hint)
        with self.transaction():
            for statement in schema.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: Store) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the database as it was at the first one, even while
        another process commits (WAL), so figures read in several queries agree with each other."""
        if self.conn.in_transaction:  # already inside one (a transaction or an outer snapshot)
            yield self.conn
            return
        self.conn.execute("BEGIN DEFERRED")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (including KeyboardInterrupt)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
