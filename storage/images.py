"""The image store: PNG files in a local folder, keyed by the SHA-256 of their bytes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from pathlib import Path

from PIL import Image

_KEY = re.compile(r"^[0-9a-f]{64}$")


class ImageNotFound(KeyError):
    pass


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class LocalImageStore:
    """Content-addressed: storing the same bytes twice is a no-op, so a retried store is safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ImageNotFound(key)
        return self.root / key[:2] / f"{key}.png"

    async def start(self) -> None:
        """The folder is made on first write; nothing to check."""

    async def close(self) -> None:
        pass

    def location(self, key: str) -> str:
        return str(self.path(key).relative_to(self.root))

    async def url(self, key: str) -> str | None:
        return None  # served by whatever serves the folder (the bot itself attaches the bytes)

    async def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._write, self.path(key), data)
        return key

    async def put_image(self, image: Image.Image) -> str:
        data = await asyncio.to_thread(encode_png, image)
        return await self.put(data)

    async def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ImageNotFound(key) from None

    async def get_image(self, key: str) -> Image.Image:
        data = await self.get(key)
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a crash never leaves half an image under a valid key
