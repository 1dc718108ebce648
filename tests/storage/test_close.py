"""Closing a database releases SQLite's write lock even when canceled work was mid-statement."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from pathlib import Path

from sqlalchemy import text

from storage.db import Database

# A write that stays mid-statement until the test opens the gate: ``gate()`` is a Python function run by SQLite
# in aiosqlite's thread, blocking there. RETURNING matters: its statement stays unfinished until the rows are
# read, as the ORM's inserts do.
GATED_WRITE = text(
    "INSERT INTO busy WITH RECURSIVE n(i) AS (SELECT gate(1) UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
    "SELECT i FROM n RETURNING i"
)


class Gate:
    """``gate(x)`` for SQLite: tells the loop it was reached, then blocks until ``open()``; returns ``x``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.reached = asyncio.Event()
        self._loop = loop
        self._open = threading.Event()

    def __call__(self, value: int) -> int:
        self._loop.call_soon_threadsafe(self.reached.set)
        if not self._open.wait(30):
            raise RuntimeError("the test never opened the gate")
        return value

    def open(self) -> None:
        self._open.set()


def write_lock_is_free(path: Path) -> bool:
    with sqlite3.connect(path, timeout=0) as raw:
        try:
            raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        raw.rollback()
        return True


async def wait_for_threads_to_end(threads: set[threading.Thread]) -> None:
    for thread in threads:
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive(), f"{thread.name} did not end"


async def test_close_releases_the_lock_of_work_canceled_mid_statement(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    threads_before = set(threading.enumerate())
    database = await Database.open(f"sqlite+aiosqlite:///{path}")

    gate = Gate(asyncio.get_running_loop())

    async def gated_write() -> None:
        async with database.sessions() as session:
            connection = await (await session.connection()).get_raw_connection()
            await connection.driver_connection.create_function("gate", 1, gate)
            await session.execute(text("CREATE TABLE busy (i INTEGER)"))
            await session.execute(GATED_WRITE)
            await session.commit()

    gc.disable()  # an idle process: nothing else would trigger the collector
    try:
        task = asyncio.create_task(gated_write())
        async with asyncio.timeout(30):
            await gate.reached.wait()  # the write is in SQLite
        assert not task.done()  # the statement is held in aiosqlite's thread, holding the write lock
        task.cancel()
        gate.open()  # SQLite finishes the statement for a task that no longer waits for it
        await asyncio.gather(task, return_exceptions=True)
        del task  # a stopped worker's task is dropped: only the reference cycle keeps the cursor now
        # the pool closed the canceled connection; its driver thread ends once SQLite finished the write
        await wait_for_threads_to_end(set(threading.enumerate()) - threads_before)
        await database.close()
        assert write_lock_is_free(path), "a closed Database still holds the file's write lock"
    finally:
        gc.enable()
