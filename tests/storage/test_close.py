"""Closing a database releases SQLite's write lock even when canceled work was mid-statement."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from pathlib import Path

from sqlalchemy import text

from storage.db import Database

# A write that takes long enough to be canceled while SQLite runs it (about a second on one CPU core).
# RETURNING matters: its statement stays unfinished until the rows are read, as the ORM's inserts do.
SLOW_WRITE = text(
    "INSERT INTO busy WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) "
    "SELECT i FROM n RETURNING i"
)


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

    async def slow_write() -> None:
        async with database.sessions() as session:
            await session.execute(text("CREATE TABLE busy (i INTEGER)"))
            await session.execute(SLOW_WRITE)
            await session.commit()

    gc.disable()  # an idle process: nothing else would trigger the collector
    try:
        task = asyncio.create_task(slow_write())
        await asyncio.sleep(0.3)  # the statement is running in aiosqlite's thread
        assert not task.done(), "the slow write finished before it could be canceled"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        del task  # a stopped worker's task is dropped: only the reference cycle keeps the cursor now
        # the pool closed the canceled connection; its driver thread ends once SQLite finished the write
        await wait_for_threads_to_end(set(threading.enumerate()) - threads_before)
        await database.close()
        assert write_lock_is_free(path), "a closed Database still holds the file's write lock"
    finally:
        gc.enable()
