"""The content-addressed image store (storage/images.py)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

from storage.images import LocalImageStore


async def test_two_writers_of_the_same_bytes_at_once_both_succeed(tmp_path, monkeypatch):
    """Issue 15 item 5: two jobs storing identical images at the same moment must both get their key.

    Both writers are held after writing their temporary file until the other has written too, so their
    renames race exactly as two jobs' stores do; with one shared temporary name the second rename fails.
    """
    store = LocalImageStore(tmp_path)
    data = b"\x89PNG same bytes from two jobs"
    both_written = threading.Barrier(2, timeout=10)
    write_bytes = Path.write_bytes

    def write_then_wait(self: Path, payload: bytes) -> int:
        written = write_bytes(self, payload)
        if self.suffix == ".part":
            both_written.wait()
        return written

    monkeypatch.setattr(Path, "write_bytes", write_then_wait)
    keys = await asyncio.gather(store.put(data), store.put(data))
    key = hashlib.sha256(data).hexdigest()
    assert keys == [key, key]
    assert await store.get(key) == data
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.png"]  # no temporary left


async def test_a_stored_image_is_stored_once(tmp_path):
    store = LocalImageStore(tmp_path)
    assert await store.put(b"one") == await store.put(b"one")
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1
