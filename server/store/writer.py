"""Group commit: one writer thread runs the store's write methods in batches, one
transaction (and one fsync) per batch.

With `synchronous=full` a commit costs an fsync (~0.3 ms here). Done on the event loop, that
blocks every request behind it; done per request in threads, N requests pay N fsyncs.
Here concurrent writes share one: each write runs in its own SAVEPOINT inside the batch
transaction (so one failing write does not undo the others), the batch commits, and only
then are the callers' futures resolved. A caller never sees success before its data is on
disk, and readers (on the loop thread's connection) see it as soon as the caller does.
"""
from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from typing import Any, Callable

MAX_BATCH = 256

_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class GroupCommitWriter:
    def __init__(self, connect: Callable[[], sqlite3.Connection],
                 bind: Callable[[sqlite3.Connection | None, list[Callable[[], None]] | None], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        """`connect` opens the writer's own connection; `bind(conn, after_commit)` makes the
        store's methods use it (thread-locally) and queue post-commit callbacks."""
        self._connect, self._bind, self._loop = connect, bind, loop
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="nodetrust-store-writer", daemon=True)
        self._thread.start()
        self.batches = 0
        self.writes = 0

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
        return await self.post(fn, args, kwargs)

    def post(self, fn: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        """Queue now (in call order, from the loop thread); the future resolves after commit."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put((fut, fn, args, kwargs))
        return fut

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        _no_wakeup_preemption()
        conn = self._connect()
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    batch.append(job)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        after_commit: list[Callable[[], None]] = []
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._bind(conn, after_commit)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fut, fn, args, kwargs in batch:
                conn.execute("SAVEPOINT job")
                mark = len(after_commit)
                try:
                    value = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the caller, like a direct call
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    del after_commit[mark:]
                    results.append((fut, None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((fut, value, None))
            conn.execute("COMMIT")
        except BaseException as exc:  # the commit itself failed (disk full, I/O error)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(fut, None, exc) for fut, *_ in batch]
            after_commit = []
        finally:
            self._bind(None, None)
        self.batches += 1
        self.writes += len(batch)
        self._loop.call_soon_threadsafe(_deliver, results, after_commit)


def _no_wakeup_preemption() -> None:
    """Linux SCHED_BATCH for the calling thread: the same fair share of CPU, but waking up
    (a job queued, an fsync done) no longer preempts the event loop's thread. On a server
    pinned to one core, every wake-up used to switch to this thread, which at once blocked
    on the GIL the loop held, and switched back: ~10-20 % more CPU per enrollment than with
    SCHED_BATCH (scripts/bench-enroll, c=8, server on one core). Elsewhere: no-op."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or a sandbox that forbids it
        pass


def _deliver(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
             after_commit: list[Callable[[], None]]) -> None:
    for callback in after_commit:
        callback()
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
