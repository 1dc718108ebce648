"""engine.safe_fetch: SSRF policy, redirects, limits and hostile images, against a local aiohttp server."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import zlib
from collections.abc import AsyncIterator
from io import BytesIO

import pytest
from aiohttp import web
from PIL import Image

from engine.safe_fetch import (
    DEFAULT_POLICY,
    FetchPolicy,
    ImageFetchError,
    address_allowed,
    decode_image,
    fetch_image,
    is_public_address,
    load_attachment_image,
)

LOCAL = FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),), timeout=3.0)


def png_bytes(size=(64, 48), color=(200, 30, 30), mode="RGB") -> bytes:
    out = BytesIO()
    Image.new(mode, size, color).save(out, "PNG")
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width × height pixels (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out = BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


# --- address policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.0.192",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
        "2001:db8::1",  # documentation
    ],
)
def test_internal_addresses_are_refused(address):
    ip = ipaddress.ip_address(address)
    assert not is_public_address(ip)
    assert not address_allowed(ip)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert address_allowed(ipaddress.ip_address(address))


def test_allowed_networks_override_only_what_they_name():
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), loopback)
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), loopback)
    assert not address_allowed(ipaddress.ip_address("10.0.0.1"), loopback)


# --- decoding ------------------------------------------------------------------------------------------


def test_a_png_decodes_to_rgb():
    image = load_attachment_image(png_bytes((64, 48)))
    assert image.mode == "RGB" and image.size == (64, 48)
    assert image.getpixel((3, 3)) == (200, 30, 30)


def test_transparency_is_flattened_on_white():
    image = decode_image(png_bytes((8, 8), (0, 0, 0, 0), mode="RGBA"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not an image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not an image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
        (png_bytes((300, 300))[:200], "damaged or incomplete"),
        (png_declaring(100_000, 100_000), "megapixels"),
        (png_declaring(8000, 7000), "megapixels"),
    ],
)
def test_bad_images_get_a_specific_message(data, fragment):
    with pytest.raises(ImageFetchError) as caught:
        load_attachment_image(data)
    assert fragment in str(caught.value)


def test_a_truncated_png_is_refused():
    out = BytesIO()
    Image.effect_noise((300, 300), 60).convert("RGB").save(out, "PNG")
    data = out.getvalue()
    with pytest.raises(ImageFetchError, match="damaged or incomplete"):
        load_attachment_image(data[: len(data) // 2])


def test_the_first_frame_of_an_animated_gif():
    image = load_attachment_image(animated_gif())
    assert image.mode == "RGB" and image.size == (32, 32)
    red, green, blue = image.getpixel((5, 5))
    assert red > 200 and green < 50 and blue < 50


def test_a_40_megapixel_image_is_downscaled():
    out = BytesIO()
    Image.new("L", (8000, 5000), 128).save(out, "PNG", compress_level=1)
    image = load_attachment_image(out.getvalue())
    assert image.mode == "RGB" and image.size == (2048, 1280)


def test_attachment_byte_limit():
    with pytest.raises(ImageFetchError, match="larger than"):
        load_attachment_image(png_bytes(), max_bytes=10)


# --- fetching --------------------------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[str]:
    image = png_bytes((40, 30), (10, 200, 10))

    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/png")

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="not an image")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=image)

    async def huge(request: web.StreamResponse) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"\0" * 65536)
        return response

    def redirect(location: str):
        async def handler(request: web.Request) -> web.Response:
            raise web.HTTPFound(location.replace("{port}", str(request.url.port)))

        return handler

    app = web.Application()
    app.router.add_get("/ok.png", ok)
    app.router.add_get("/text", text)
    app.router.add_get("/missing", missing)
    app.router.add_get("/hang", hang)
    app.router.add_get("/huge", huge)
    app.router.add_get("/loop", redirect("/loop"))
    app.router.add_get("/to-ok", redirect("/ok.png"))
    app.router.add_get("/to-private", redirect("http://10.0.0.1/x.png"))
    app.router.add_get("/to-metadata", redirect("http://169.254.169.254/latest/meta-data/"))
    app.router.add_get("/to-file", redirect("file:///etc/passwd"))
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_fetch_succeeds_with_the_test_override(server):
    image = await fetch_image(f"{server}/ok.png", policy=LOCAL)
    assert image.size == (40, 30) and image.getpixel((1, 1)) == (10, 200, 10)


async def test_the_default_policy_refuses_the_same_loopback_server(server):
    with pytest.raises(ImageFetchError, match="private or internal"):
        await fetch_image(f"{server}/ok.png", policy=DEFAULT_POLICY)


async def test_connects_to_the_checked_address_not_a_fresh_lookup(server):
    port = server.rsplit(":", 1)[1]
    seen = []

    async def resolver(host: str, port_: int) -> list[str]:
        seen.append(host)
        return ["127.0.0.1"]

    image = await fetch_image(f"http://images.invalid:{port}/ok.png", policy=LOCAL, resolver=resolver)
    assert image.size == (40, 30) and seen == ["images.invalid"]


@pytest.mark.parametrize(
    "answer", [["10.0.0.7"], ["93.184.216.34", "127.0.0.1"], ["169.254.169.254"], ["::1"]]
)
async def test_a_name_resolving_to_an_internal_address_is_refused(answer):
    async def resolver(host: str, port: int) -> list[str]:
        return answer

    with pytest.raises(ImageFetchError, match="private or internal"):
        await fetch_image("https://cdn.example.com/cat.png", resolver=resolver)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/x.png",  # 127.0.0.1 as one decimal number
        "http://0x7f.1/x.png",
        "http://10.0.0.1/x.png",
    ],
)
async def test_private_loopback_and_metadata_urls_are_refused(url):
    with pytest.raises(ImageFetchError) as caught:
        await fetch_image(url, policy=FetchPolicy(timeout=3.0))
    message = str(caught.value)
    assert "private or internal" in message or "could not be found" in message
    assert "127.0.0.1" not in message and "169.254" not in message


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/", "http://user:pw@example.com/a.png"],
)
async def test_other_schemes_and_credentials_are_refused(url):
    with pytest.raises(ImageFetchError) as caught:
        await fetch_image(url)
    assert "pw" not in str(caught.value)


async def test_a_url_that_never_answers_hits_the_time_limit(server):
    policy = FetchPolicy(allowed_networks=LOCAL.allowed_networks, timeout=0.3)
    with pytest.raises(ImageFetchError, match="did not answer within 0.3 s"):
        await fetch_image(f"{server}/hang", policy=policy)


async def test_a_redirect_loop_is_stopped(server):
    with pytest.raises(ImageFetchError, match="redirects more than 5 times"):
        await fetch_image(f"{server}/loop", policy=LOCAL)


async def test_a_redirect_is_followed_and_checked(server):
    assert (await fetch_image(f"{server}/to-ok", policy=LOCAL)).size == (40, 30)


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata"])
async def test_a_redirect_to_a_private_address_is_refused(server, path):
    with pytest.raises(ImageFetchError, match="private or internal") as caught:
        await fetch_image(f"{server}{path}", policy=LOCAL)
    assert "10.0.0.1" not in str(caught.value) and "169.254" not in str(caught.value)


async def test_a_redirect_to_another_scheme_is_refused(server):
    with pytest.raises(ImageFetchError, match="http:// or https://"):
        await fetch_image(f"{server}/to-file", policy=LOCAL)


async def test_the_size_limit_stops_the_stream(server):
    policy = FetchPolicy(allowed_networks=LOCAL.allowed_networks, max_bytes=256 * 1024)
    with pytest.raises(ImageFetchError, match="larger than"):
        await fetch_image(f"{server}/huge", policy=policy)


@pytest.mark.parametrize(("path", "fragment"), [("/text", "not an image"), ("/missing", "HTTP 404")])
async def test_non_images_and_errors(server, path, fragment):
    with pytest.raises(ImageFetchError, match=fragment):
        await fetch_image(f"{server}{path}", policy=LOCAL)


async def test_a_closed_port_is_a_connection_error():
    with pytest.raises(ImageFetchError, match="connection failed"):
        await fetch_image("http://127.0.0.1:1/x.png", policy=LOCAL)
