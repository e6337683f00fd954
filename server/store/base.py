"""The store's machinery: the SQLite connections (WAL), migrations, transactions that
become savepoints inside a group-commit batch, and the writer thread."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, ParamSpec, TypeVar

import sqlite_utils

from server.store.schema import migrate
from server.store.writer import GroupCommitWriter

P = ParamSpec("P")
T = TypeVar("T")


class StoreBase:
    def __init__(self, path: Path, *, synchronous: str = "full",
                 audit_mirror: Path | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path, self._synchronous = path, synchronous
        self.audit_mirror = audit_mirror  # JSON-lines copy of the audit log, appended after commit
        self.clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)  # audit `at`
        self._main_conn = self._connect()
        self._local = threading.local()
        self._writer: GroupCommitWriter | None = None
        self.db = sqlite_utils.Database(self._main_conn)
        self.db.enable_wal()
        self.schema_version = self._migrate()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are opened explicitly, so one `with self._tx()`
        # is exactly one commit (or one savepoint inside a group-commit batch).
        conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._synchronous == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=ON")
        # Statement journals of writes inside the group-commit batch's savepoints: in memory,
        # not a temp file created and unlinked in /var/tmp each time (they never need to
        # survive a crash: the WAL is the record).
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The writer thread's connection inside a batch, the main one everywhere else."""
        return getattr(self._local, "conn", None) or self._main_conn

    def _bind(self, conn: sqlite3.Connection | None,
              after_commit: list[Callable[[], None]] | None) -> None:
        self._local.conn = conn
        self._local.after_commit = after_commit

    def _after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the current write is durable (on the event loop when batched)."""
        pending = getattr(self._local, "after_commit", None)
        if pending is None:
            callback()
        else:
            pending.append(callback)

    def start_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on `write()` goes through the group-commit writer thread."""
        if self._writer is None:
            self._writer = GroupCommitWriter(self._connect, self._bind, loop)

    def commit_stats(self) -> tuple[int, int]:
        """(writes, commits) through the group-commit writer since start: one fsync per
        commit, so writes/commits is how many writes each fsync carried."""
        w = self._writer
        return (w.writes, w.batches) if w is not None else (0, 0)

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this store's write methods durably without blocking the event loop."""
        if self._writer is None:
            return fn(*args, **kwargs)
        result: T = await self._writer.submit(fn, args, kwargs)
        return result

    def _migrate(self) -> int:
        self._main_conn.isolation_level = ""  # sqlite-utils DDL inside `with conn:` transactions
        try:
            return migrate(self.db)
        finally:
            self._main_conn.isolation_level = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._main_conn.close()

    class _Tx:
        """A transaction (BEGIN IMMEDIATE: the write lock up front, so what is read inside,
        like the audit chain's head, stays current until commit), or a savepoint inside one.
        Post-commit callbacks queued inside are dropped if it rolls back; outside a writer
        batch the outermost one runs them after COMMIT (the batch runs its own)."""

        def __init__(self, store: StoreBase) -> None:
            self.store, self.conn = store, store.conn
            self.nested = self.conn.in_transaction

        def __enter__(self) -> sqlite3.Connection:
            local = self.store._local
            self.own = not self.nested and getattr(local, "after_commit", None) is None
            if self.own:
                local.after_commit = []
            self.pending: list[Callable[[], None]] | None = getattr(local, "after_commit", None)
            self.mark = len(self.pending) if self.pending is not None else 0
            try:
                self.conn.execute("SAVEPOINT tx" if self.nested else "BEGIN IMMEDIATE")
            except BaseException:
                self._release()
                raise
            return self.conn

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            try:
                if not self.nested:
                    self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
                elif exc_type:
                    self.conn.execute("ROLLBACK TO tx")
                    self.conn.execute("RELEASE tx")
                else:
                    self.conn.execute("RELEASE tx")
            finally:
                if exc_type and self.pending is not None:
                    del self.pending[self.mark:]
                callbacks = self._release()
            for callback in callbacks:
                callback()

        def _release(self) -> list[Callable[[], None]]:
            if not self.own:
                return []
            self.store._local.after_commit = None
            return self.pending or []

    def _tx(self) -> StoreBase._Tx:
        return StoreBase._Tx(self)

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, tuple(params)).fetchone()
        return row
