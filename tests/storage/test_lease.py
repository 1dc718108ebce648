"""The ``bot_lease`` row on Postgres: one holder at a time, taken over only once expired, renewals fail
for a holder that was taken over, and a released lease is free at once."""

from __future__ import annotations

import asyncio

import pytest

from storage.db import Database
from storage.lease import LeaseRepository


@pytest.fixture
async def leases(postgres_url):
    """Two repositories on separate Database objects: two processes' views of one database."""
    first, second = await Database.open(postgres_url), await Database.open(postgres_url)
    yield LeaseRepository(first), LeaseRepository(second)
    await first.close()
    await second.close()


async def test_one_holder_at_a_time_and_takeover_only_after_expiry(leases):
    a, b = leases
    assert await a.try_acquire("bot", "a", 60)
    assert not await b.try_acquire("bot", "b", 60)
    assert await a.try_acquire("bot", "a", 60)  # ours already: acquiring again renews
    assert await a.renew("bot", "a", 60)
    current = await b.current("bot")
    assert current is not None and (current.holder, current.expired) == ("a", False)

    assert await a.renew("bot", "a", 0)  # a lease of no time: expired from the next statement on
    assert await b.try_acquire("bot", "b", 60)
    assert not await a.renew("bot", "a", 60), "a holder that was taken over must learn it"
    assert not await a.try_acquire("bot", "a", 60)


async def test_release_frees_the_lease_at_once_and_only_for_its_holder(leases):
    a, b = leases
    assert await a.try_acquire("bot", "a", 60)
    await b.release("bot", "b")  # not b's: nothing happens
    assert not await b.try_acquire("bot", "b", 60)
    await a.release("bot", "a")
    assert await b.try_acquire("bot", "b", 60)


async def test_racing_standbys_on_an_expired_lease_one_wins(leases, postgres_url):
    a, _ = leases
    assert await a.try_acquire("bot", "dead", 0)
    databases = [await Database.open(postgres_url) for _ in range(5)]
    try:
        results = await asyncio.gather(
            *(
                LeaseRepository(database).try_acquire("bot", f"standby-{i}", 60)
                for i, database in enumerate(databases)
            )
        )
    finally:
        for database in databases:
            await database.close()
    assert results.count(True) == 1


async def test_sqlite_is_refused(tmp_path):
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    try:
        with pytest.raises(ValueError, match="needs Postgres"):
            LeaseRepository(database)
    finally:
        await database.close()
