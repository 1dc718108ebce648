"""A throwaway PostgreSQL cluster for the tests, and the ``database_url`` fixture that runs a test on both
SQLite and Postgres.

The cluster is Debian's ``postgresql`` package (``.ci/run`` installs it when missing): ``initdb`` into a
temporary folder, ``pg_ctl start`` on a free loopback port, once per test session and only when a test
asks for Postgres. Each test gets a database of its own (``CREATE DATABASE``, dropped afterwards). As
root, the server runs as the ``postgres`` user (it refuses to run as root). Nothing is skipped: a
machine without the binaries fails the Postgres tests with a message saying what to install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgres")


def postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout), else the folder of ``initdb`` on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parents[1].name or 0)
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(
        "PostgreSQL is not installed: the Postgres tests need its server binaries "
        "(apt-get install -y postgresql; .ci/run does this)"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresCluster:
    bin: Path
    folder: Path
    port: int
    user: str | None  # the OS user the server runs as (None: this process's user)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=120, cwd=self.folder
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    @classmethod
    def start(cls) -> PostgresCluster:
        folder = Path(tempfile.mkdtemp(prefix="imaginebot-pg-"))
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        cluster = cls(postgres_bin(), folder, free_port(), user)
        data = folder / "data"
        cluster._run(
            str(cluster.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {cluster.port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        cluster._run(
            str(cluster.bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip
        return cluster

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._client("createdb", name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self._client("dropdb", "--force", "--if-exists", url.rsplit("/", 1)[-1])

    def _client(self, program: str, *arguments: str) -> None:
        command = [str(self.bin / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        result = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(arguments)} failed: {result.stderr}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database on the session's cluster (asyncpg URL), dropped after the test."""
    url = postgres_cluster.create_database()
    try:
        yield url
    finally:
        postgres_cluster.drop_database(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``: a test that uses it (or ``database_url``) runs once on each."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of the ``backend`` under test: a SQLite file, or a new Postgres database."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
