"""Result images in S3 (or any S3-compatible store: MinIO, R2, Ceph…): ``IMAGE_STORE=s3://BUCKET/PREFIX``.

Written with ``aiobotocore`` (aio-libs): the asynchronous face of botocore, so it speaks S3 exactly as
boto3 and the AWS CLI do (signatures, regions, custom endpoints, the standard retry mode that retries
throttling, 5xx answers and dropped connections with backoff) and runs on aiohttp, which the bot already
uses. ``aioboto3`` is only a resource-style wrapper over it, and ``obstore`` (Rust) would add a native
wheel for speed the bot does not need (a result is four PNGs).

Keys are ``PREFIX/ab/<sha256>.png``; an object exists only once its upload completed, so the key a job
records (after every upload of the job succeeded) always names a whole image. Links: with
``IMAGE_PUBLIC_BASE_URL`` (a CDN in front of the bucket) ``<base>/<key>``; else a presigned GET that
expires after ``IMAGE_LINK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from storage.image_store import ImageStoreError, decode_png
from storage.images import _KEY, ImageNotFound, encode_png

UPLOAD_ATTEMPTS = 5
"""botocore's standard retry mode: attempts per request (retrying 5xx, throttling, broken connections)."""


def parse_s3_setting(setting: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix")."""
    parts = urlsplit(setting)
    if parts.scheme != "s3" or not parts.netloc:
        raise ImageStoreError(f"IMAGE_STORE: {setting!r} is not s3://BUCKET/PREFIX")
    return parts.netloc, parts.path.strip("/")


class S3ImageStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
        public_base_url: str | None = None,
        link_seconds: int = 7 * 24 * 3600,
        attempts: int = UPLOAD_ATTEMPTS,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.link_seconds = link_seconds
        self._client_options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": AioConfig(
                signature_version="s3v4",  # presigned links too (botocore would presign with v2)
                retries={"total_max_attempts": attempts, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"} if endpoint_url else None,
            ),
        }
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    async def start(self) -> None:
        """Connect and check the bucket exists and answers (a clear error at start-up, not at the first job)."""
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client("s3", **self._client_options)
        )
        self._exit_stack = stack
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            await self.close()
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ImageStoreError(
                    f"IMAGE_STORE: the bucket {self.bucket!r} does not exist ({self.where}); create it first"
                ) from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise ImageStoreError(
                    f"IMAGE_STORE: access to the bucket {self.bucket!r} was denied ({self.where}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                ) from None
            raise ImageStoreError(f"IMAGE_STORE: {self.where} answered {code or error}") from None
        except BotoCoreError as error:
            await self.close()
            raise ImageStoreError(f"IMAGE_STORE: cannot reach {self.where}: {error}") from None

    async def close(self) -> None:
        if self._exit_stack is not None:
            await self._exit_stack.aclose()
        self._exit_stack = self._client = None

    def location(self, key: str) -> str:
        if not _KEY.match(key):
            raise ImageNotFound(key)
        name = f"{key[:2]}/{key}.png"
        return f"{self.prefix}/{name}" if self.prefix else name

    async def put(self, data: bytes) -> str:
        """Upload (retried by botocore); raises ``ImageStoreError`` when every attempt failed."""
        key = hashlib.sha256(data).hexdigest()
        try:
            await self._connected().put_object(
                Bucket=self.bucket, Key=self.location(key), Body=data, ContentType="image/png"
            )
        except (ClientError, BotoCoreError) as error:
            raise ImageStoreError(f"could not upload an image to {self.where}: {error}") from None
        return key

    async def put_image(self, image: Image.Image) -> str:
        return await self.put(await asyncio.to_thread(encode_png, image))

    async def get(self, key: str) -> bytes:
        try:
            response = await self._connected().get_object(Bucket=self.bucket, Key=self.location(key))
            async with response["Body"] as body:
                data: bytes = await body.read()
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                raise ImageNotFound(key) from None
            raise ImageStoreError(f"could not read image {key} from {self.where}: {error}") from None
        return data

    async def get_image(self, key: str) -> Image.Image:
        return await asyncio.to_thread(decode_png, await self.get(key))

    async def delete(self, key: str) -> None:
        """Remove an object (S3 answers success when it is not there)."""
        try:
            await self._connected().delete_object(Bucket=self.bucket, Key=self.location(key))
        except (ClientError, BotoCoreError) as error:
            raise ImageStoreError(f"could not delete image {key} from {self.where}: {error}") from None

    async def url(self, key: str) -> str | None:
        if self.public_base_url:
            return f"{self.public_base_url}/{self.location(key)}"
        link: str = await self._connected().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.location(key)},
            ExpiresIn=self.link_seconds,
        )
        return link

    def _connected(self) -> Any:
        if self._client is None:
            raise ImageStoreError("the S3 image store is not started")
        return self._client
