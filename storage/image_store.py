"""Where result images live: the ``ImageStore`` interface, and ``open_image_store`` to pick one from settings.

Both stores are content-addressed: an image's key is the SHA-256 of its PNG bytes, so storing the same
image twice (a retried or recovered job) writes the same object, and a key in the database always names
whole bytes (a local file is renamed into place, an S3 object appears only once its upload completed).

``IMAGE_STORE``: empty (``DATA_DIR/images``), a folder path, or ``s3://BUCKET/PREFIX`` (``storage/s3_images.py``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image


class ImageStoreError(Exception):
    """The image store cannot be used (the message says why and which setting to fix)."""


@runtime_checkable
class ImageStore(Protocol):
    async def start(self) -> None:
        """Connect and check the store is usable; raises ``ImageStoreError`` with a clear message."""

    async def close(self) -> None: ...

    async def put(self, data: bytes) -> str:
        """Store PNG bytes; returns their key (the SHA-256). Storing the same bytes again succeeds."""
        ...

    async def put_image(self, image: Image.Image) -> str: ...

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises ``storage.images.ImageNotFound``."""
        ...

    async def get_image(self, key: str) -> Image.Image: ...

    async def delete(self, key: str) -> None:
        """Remove an image (no error if it is not there): a stored image prompt that no job references."""
        ...

    def location(self, key: str) -> str:
        """Where ``key`` is stored: a path under the folder, or the S3 object key (kept in ``job_images``)."""
        ...

    async def url(self, key: str) -> str | None:
        """A link a browser can open (a CDN URL or a presigned one); None for a local folder."""
        ...


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def open_image_store(
    setting: str,
    default_folder: Path,
    *,
    endpoint_url: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    region: str = "us-east-1",
    public_base_url: str | None = None,
    link_seconds: int = 7 * 24 * 3600,
) -> ImageStore:
    """The store ``IMAGE_STORE`` names (not started yet: ``await store.start()``)."""
    if setting.startswith("s3://"):
        from storage.s3_images import S3ImageStore, parse_s3_setting

        bucket, prefix = parse_s3_setting(setting)
        return S3ImageStore(
            bucket,
            prefix,
            endpoint_url=endpoint_url,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            region=region,
            public_base_url=public_base_url,
            link_seconds=link_seconds,
        )
    if "://" in setting:
        raise ImageStoreError(f"IMAGE_STORE: {setting!r} is neither a folder nor s3://BUCKET/PREFIX")
    from storage.images import LocalImageStore

    return LocalImageStore(Path(setting) if setting else default_folder)
