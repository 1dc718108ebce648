"""The S3 image store against moto's S3 server: content-addressed keys under the prefix, reading back,
links (CDN base URL or presigned), and a clear start-up error for a bucket that does not exist."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from PIL import Image

from storage.image_store import ImageStoreError, open_image_store
from storage.images import ImageNotFound, encode_png
from storage.s3_images import S3ImageStore, parse_s3_setting
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY


def s3_store(endpoint: str, bucket: str, prefix: str = "results", **options) -> S3ImageStore:
    store = open_image_store(
        f"s3://{bucket}/{prefix}",
        default_folder=None,  # type: ignore[arg-type]
        endpoint_url=endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region=REGION,
        **options,
    )
    assert isinstance(store, S3ImageStore)
    return store


async def test_put_get_and_presigned_link(s3_server, bucket):
    store = s3_store(s3_server.endpoint, bucket)
    await store.start()
    try:
        image = Image.new("RGB", (8, 8), (200, 10, 10))
        key = await store.put_image(image)
        assert key == hashlib.sha256(encode_png(image)).hexdigest()
        assert await store.put_image(image) == key  # the same bytes again: the same object, no error
        assert s3_server.keys(bucket) == [f"results/{key[:2]}/{key}.png"] == [store.location(key)]
        back = await store.get_image(key)
        assert back.size == (8, 8) and back.getpixel((0, 0)) == (200, 10, 10)
        with pytest.raises(ImageNotFound):
            await store.get("f" * 64)
        with pytest.raises(ImageNotFound):
            await store.get("../../etc/passwd")

        link = await store.url(key)
        assert link is not None and "X-Amz-Signature=" in link and "X-Amz-Expires=604800" in link
        async with httpx.AsyncClient() as http:
            answer = await http.get(link)
        assert answer.status_code == 200 and answer.content == encode_png(image)
    finally:
        await store.close()


async def test_a_public_base_url_makes_cdn_links(s3_server, bucket):
    store = s3_store(s3_server.endpoint, bucket, "p", public_base_url="https://cdn.example.com/")
    await store.start()
    try:
        key = await store.put(encode_png(Image.new("RGB", (4, 4))))
        assert await store.url(key) == f"https://cdn.example.com/p/{key[:2]}/{key}.png"
    finally:
        await store.close()


async def test_a_missing_bucket_is_a_clear_error_at_start(s3_server):
    store = s3_store(s3_server.endpoint, "no-such-bucket")
    with pytest.raises(
        ImageStoreError, match=r"the bucket 'no-such-bucket' does not exist .*create it first"
    ):
        await store.start()


async def test_an_unreachable_endpoint_is_a_clear_error_at_start():
    from tests.postgres import free_port

    store = S3ImageStore(
        "images", "results", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY, attempts=1,
    )  # fmt: skip
    with pytest.raises(ImageStoreError, match="cannot reach s3://images/results at http://127.0.0.1:"):
        await store.start()


def test_settings_are_parsed():
    assert parse_s3_setting("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_setting("s3://bucket") == ("bucket", "")
    with pytest.raises(ImageStoreError):
        parse_s3_setting("s3:///prefix")
    with pytest.raises(ImageStoreError, match="neither a folder nor"):
        open_image_store("gs://bucket", default_folder=None)  # type: ignore[arg-type]
