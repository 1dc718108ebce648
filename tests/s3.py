"""S3 for the tests: moto's server mode (``ThreadedMotoServer``, a real S3 wire-protocol server on a local
port) once per session, a new bucket per test, and ``FaultyProxy`` in front of it to break uploads on
purpose (an answer of 503, or a request held until the test lets it through)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web

from tests.postgres import free_port

ACCESS_KEY, SECRET_KEY, REGION = "testing-key", "testing-secret", "us-east-1"


@dataclass
class S3Server:
    endpoint: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self) -> str:
        name = f"images-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket()


Rule = Callable[[web.Request, int], "int | asyncio.Event | None"]
"""Given a request and how many object PUTs came before it: a status to answer with, an event to wait for
before forwarding, or None to forward at once."""


@dataclass
class FaultyProxy:
    target: str
    rule: Rule = lambda request, puts: None
    endpoint: str = ""
    puts: int = 0  # object uploads seen (answered or not)
    refused: int = 0
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _session: ClientSession | None = field(default=None, repr=False)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.endpoint = f"http://127.0.0.1:{port}"
        self._session = ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        is_put = request.method == "PUT" and request.path.count("/") >= 2
        verdict = self.rule(request, self.puts) if is_put else None
        if is_put:
            self.puts += 1
        if isinstance(verdict, int):
            self.refused += 1
            return web.Response(status=verdict, text="<Error><Code>ServiceUnavailable</Code></Error>")
        if isinstance(verdict, asyncio.Event):
            await verdict.wait()
        assert self._session is not None
        headers = dict(request.headers)  # Host too: it is part of the request's signature
        async with self._session.request(
            request.method, self.target + request.path_qs, headers=headers, data=body
        ) as answer:
            payload = await answer.read()
            kept = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in ("transfer-encoding", "content-length")
            }
            return web.Response(status=answer.status, body=payload, headers=kept)


@pytest_asyncio.fixture
async def faulty_s3(s3_server: S3Server) -> AsyncIterator[FaultyProxy]:
    proxy = FaultyProxy(s3_server.endpoint)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
