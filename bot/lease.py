"""One active bot process per database.

Postgres: any number of ``python -m bot`` processes may share the database; exactly one is *active*. It
holds the ``bot_lease`` row (``storage/lease.py``) and renews it every third of ``LEASE_SECONDS``; the
others are *standbys*: they load the model, then wait without connecting to Discord. When the active
process dies (even by SIGKILL) its lease expires, a standby takes it within one lease period, connects,
and its start-up recovery (``JobService.recover``) finishes the dead process's unfinished jobs: each is
re-run from its committed state, posted by editing the same message, charged once (the ledger allows one
charge per job). Only the lease holder runs jobs; a holder that can no longer renew stops itself before
its lease could pass to another process, so two processes never run jobs at once.

SQLite: a second process on the same file refuses to start (an OS lock on ``<file>.process-lock``, freed
by the OS when the process dies), because SQLite is local to one host and the job queue to one process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy.engine import make_url

from storage.db import Database
from storage.lease import LeaseRepository

log = logging.getLogger(__name__)

LEASE_NAME = "bot"


class AnotherProcessIsActive(Exception):
    """This process may not start (the message says why and what to do)."""


def holder_name() -> str:
    """Unique per process, readable in the table: host/pid/random."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


class SqliteOwnership:
    """Holds ``<file>.process-lock`` for the life of the process; a second process is refused."""

    def __init__(self, database_url: str) -> None:
        database = make_url(database_url).database
        in_memory = not database or database == ":memory:" or database.startswith("file::memory:")
        self.path = None if in_memory else Path(str(database)).resolve()
        self._lock = FileLock(f"{self.path}.process-lock", timeout=0, thread_local=False)

    async def claim(self) -> None:
        if self.path is None:
            return  # an in-memory database is private to this process anyway
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise AnotherProcessIsActive(
                f"another imaginebot process is already using {self.path}. A SQLite database serves one "
                "bot process; stop the other one, or use Postgres (DATABASE_URL=postgresql+asyncpg://...) "
                "to run a standby process beside it."
            ) from None

    async def wait_until_active(self) -> None:
        """The file lock is the whole story: once claimed, this process is the active one."""

    def watch(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        """Nothing can take a held file lock away."""

    async def close(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


class DatabaseLease:
    """The ``bot_lease`` row of a shared Postgres database (see the module's docstring)."""

    def __init__(self, database_url: str, seconds: float, *, holder: str | None = None) -> None:
        self.database_url = database_url
        self.seconds = seconds
        self.holder = holder or holder_name()
        self.active = False
        self.lost = False
        self._database: Database | None = None
        self._repo: LeaseRepository | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """Renew (and, as a standby, look) three times per lease period."""
        return self.seconds / 3

    async def claim(self) -> None:
        self._database = await Database.open(self.database_url)
        self._repo = LeaseRepository(self._database)

    async def wait_until_active(self) -> None:
        """Return once this process holds the lease (at once when it is free)."""
        assert self._repo is not None, "claim() first"
        said = False
        while not await self._try_acquire():
            if not said:
                current = await self._repo.current(LEASE_NAME)
                log.info(
                    "standby: %s is the active bot process; taking over if its lease (%gs) expires",
                    current.holder if current else "another process",
                    self.seconds,
                )
                said = True
            await asyncio.sleep(self.interval)
        self.active = True
        log.info("active: this process (%s) holds the bot lease", self.holder)

    async def _try_acquire(self) -> bool:
        """One look; a database that does not answer is "not yet" (a standby outlives a database restart)."""
        assert self._repo is not None
        try:
            return await self._repo.try_acquire(LEASE_NAME, self.holder, self.seconds)
        except Exception as error:
            log.warning("standby: could not reach the database to look at the bot lease: %s", error)
            return False

    def watch(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        """Renew the lease until closed; call ``on_lost`` when it is taken over or cannot be renewed in time."""
        self._heartbeat = asyncio.create_task(self._renew_until_lost(on_lost), name="lease heartbeat")

    async def _renew_until_lost(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        assert self._repo is not None
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            try:
                ours = await self._repo.renew(LEASE_NAME, self.holder, self.seconds)
            except Exception as error:  # the database is unreachable: keep trying while the lease lasts
                ours = True
                log.warning("could not renew the bot lease: %s", error)
                if time.monotonic() - renewed < self.seconds - self.interval:
                    continue
                ours = False
            if ours:
                renewed = time.monotonic()
                continue
            self.lost, self.active = True, False
            log.critical("lost the bot lease (another process may take over): stopping this process")
            await on_lost()
            return

    async def close(self) -> None:
        """Stop renewing; a clean stop releases the lease so a standby takes over at once."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._repo is not None and self.active:
            try:
                await self._repo.release(LEASE_NAME, self.holder)
            except Exception as error:
                log.warning("could not release the bot lease (it expires on its own): %s", error)
            self.active = False
        if self._database is not None:
            await self._database.close()
            self._database = None


Ownership = SqliteOwnership | DatabaseLease


def ownership_for(database_url: str, lease_seconds: float) -> Ownership:
    if make_url(database_url).get_backend_name() == "sqlite":
        return SqliteOwnership(database_url)
    return DatabaseLease(database_url, lease_seconds)
