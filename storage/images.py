"""The image store: PNG files in a local folder, keyed by the SHA-256 of their bytes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import uuid
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

    async def delete(self, key: str) -> None:
        """Remove an image (no error if it is not there)."""
        await asyncio.to_thread(self.path(key).unlink, missing_ok=True)

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
        """Write ``data`` under ``path`` atomically; writers of the same bytes at the same time all succeed.

        Each writer uses its own temporary name (two jobs storing the same image at once, e.g. the same
        prompt and seed, must not share one), and the rename is atomic, so a crash never leaves half an
        image under a valid key. The key is the hash of the bytes, so a file already there is the same
        image: finding it there is success.
        """
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.part")
        try:
            partial.write_bytes(data)
            partial.replace(path)
        except OSError:
            if not path.exists():  # not "another writer stored the same bytes first"
                raise
        finally:
            partial.unlink(missing_ok=True)
