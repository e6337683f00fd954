"""The group-commit writer thread: batches, isolation of a failing write, scheduling."""
from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

from server.store import audit
from server.store.repo import Store


def _writer_thread() -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == "nodetrust-store-writer")


async def test_concurrent_writes_share_batches_and_a_failure_stays_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    store.start_writer(asyncio.get_running_loop())
    try:
        def boom() -> None:
            with store._tx() as c:  # a write that fails halfway: its first row must go too
                store._append_audit(c, "test.boom", "test", "boom", None, {})
                raise RuntimeError("refused")

        writes = [store.write(store.audit, "test.event", "test", f"n{i}") for i in range(20)]
        results = await asyncio.gather(*writes[:10], store.write(boom), *writes[10:],
                                       return_exceptions=True)
        assert isinstance(results[10], RuntimeError)
        seqs = [r for r in results if not isinstance(r, BaseException)]
        assert len(seqs) == 20 and len(set(seqs)) == 20
        writer = store._writer
        assert writer is not None and writer.writes == 21
        assert writer.batches < 21  # queued in one turn of the loop: grouped, not one by one
        subjects = [r[0] for r in store.conn.execute(
            "SELECT subject FROM audit_log WHERE event = 'test.event' ORDER BY seq")]
        assert subjects == [f"n{i}" for i in range(20)]  # in call order, none lost
        assert store.conn.execute(
            "SELECT COUNT(*) FROM audit_log WHERE event = 'test.boom'").fetchone()[0] == 0
        rows, _, problems = audit.verify_store(store)
        assert rows >= 20 and problems == []  # no hole in the chain where it was undone
    finally:
        store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
async def test_writer_thread_does_not_preempt_the_loop(tmp_path: Path) -> None:
    # Its wake-ups used to preempt the event loop's thread on a one-core server (README,
    # Benchmarks): the writer runs under SCHED_BATCH.
    store = Store(tmp_path / "db.sqlite")
    store.start_writer(asyncio.get_running_loop())
    try:
        await store.write(store.audit, "test.event", "test", "x")
        native_id = _writer_thread().native_id
        assert native_id is not None
        assert os.sched_getscheduler(native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) != os.SCHED_BATCH  # the loop's thread is untouched
    finally:
        store.close()
