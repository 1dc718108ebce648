"""A small HTTP client for the tests (aiohttp, already a dependency): GETs read whole."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy


@dataclass(frozen=True)
class Fetched:
    status_code: int
    content: bytes
    headers: CIMultiDictProxy[str]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Client:
    def __init__(self, base_url: str = "") -> None:
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def get(self, url: str) -> Fetched:
        assert self._session is not None
        async with self._session.get(self.base_url + url) as response:
            return Fetched(response.status, await response.read(), response.headers)
