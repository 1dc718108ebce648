"""Fetch a user-supplied link safely (SSRF-guarded, size- and time-limited) and decode images with Pillow.

Shared by the bot (image prompts), engine adapters (hosted outputs) and the engine server (webhooks), so it lives
in the engine core, which all three may import; it knows nothing of Discord or the database.

``fetch_image(url)`` is the only way the bot downloads a user-supplied link. It guards against:

* SSRF: only ``http``/``https``; the host name is resolved by us (``Resolver``, injectable) and every
  address is checked *after* resolution and again on *every* redirect, which we follow by hand up to
  ``FetchPolicy.max_redirects``. Refused: private, loopback, link-local, multicast, reserved,
  unspecified, shared (CGNAT) and cloud-metadata addresses, IPv4 and IPv6, including IPv4 embedded in
  IPv6 (mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64). If *any* address of a name is refused the
  link is refused.
* DNS rebinding: aiohttp connects through ``_PinnedResolver``, which hands it only the addresses we
  checked (TLS still verifies the certificate against the host name), so a second DNS answer can't
  swap in an internal address.
* Size and time: the body is streamed and dropped past ``max_bytes`` (a ``Content-Length`` above it
  is refused before reading); the whole fetch, redirects included, has one ``timeout``. Transfer
  compression is refused (``Accept-Encoding: identity``, no auto-decompression), so gzip bombs can't
  inflate past the limit. No proxies from the environment, no cookies.
* Hostile images (``decode_image``, shared with ``load_attachment_image``): only PNG, JPEG, GIF and
  WebP are opened (Pillow never reaches EPS/Ghostscript and friends); the pixel count is read from the
  header and checked *before* decoding (``MAX_PIXELS``, 50 MP: a small file declaring huge dimensions
  is refused unread); truncated or corrupt data is refused; an animation gives its first frame;
  transparency is flattened onto white; the result is RGB.
* Big photos: images within ``MAX_PIXELS`` but larger than ``MAX_SIDE`` (2048 px) on a side are
  *downscaled* to fit ``MAX_SIDE`` × ``MAX_SIDE`` (the engines work at ≤ 1024 px anyway), so a 40 MP
  phone photo works; JPEGs are decoded at a reduced scale (``draft``) to save memory.

Errors are ``ImageFetchError`` with a short message safe to show the user: it speaks of "the image
link", never repeats the URL (which may carry tokens) nor the addresses it resolved to.

Tests serve images from 127.0.0.1 by passing ``FetchPolicy(allowed_networks=(ip_network("127.0.0.0/8"),))``
(and a resolver that maps a test host name to it); the default policy refuses loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``async (host, port) -> addresses as strings``; the default uses the system resolver."""

ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")
MAX_PIXELS = 50_000_000
"""Images above 50 megapixels are refused before decoding (a decompression bomb or simply too big)."""
MAX_SIDE = 2048
"""Larger images are downscaled to fit MAX_SIDE × MAX_SIDE."""
MAX_BYTES = 16 * 1024 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
"""Named for the record: all of them are also refused as link-local/private/shared/reserved."""

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_NOT_PUBLIC_V4 = (
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("100.64.0.0/10"),  # shared address space (CGNAT), Alibaba metadata
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("240.0.0.0/4"),
)


class ImageFetchError(Exception):
    """The image can't be used; ``str(error)`` is a short message meant for the user."""


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for ``fetch_image``. ``allowed_networks`` are allowed even though not public (tests only)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = MAX_BYTES
    timeout: float = 20.0
    max_redirects: int = 5
    max_pixels: int = MAX_PIXELS
    max_side: int = MAX_SIDE
    user_agent: str = "imaginebot-image-fetch/1.0"


DEFAULT_POLICY = FetchPolicy()


def is_public_address(ip: IPAddress) -> bool:
    """True for a globally routable unicast address; False for anything internal or special."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
    if ip in METADATA_ADDRESSES:
        return False
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in network for network in _NOT_PUBLIC_V4)
    return not ip.is_site_local


def address_allowed(ip: IPAddress, allowed_networks: tuple[IPNetwork, ...] = ()) -> bool:
    """``is_public_address``, or inside one of the explicitly ``allowed_networks``."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == network.version and ip in network for network in allowed_networks):
        return True
    return is_public_address(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in network for network in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the operating system (``getaddrinfo``), TCP addresses only, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinnedResolver(AbstractResolver):
    """Hands aiohttp only the addresses we checked, and only for the host we checked them for."""

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        self._host = host
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError("host was not checked")
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in self._addresses
        ]

    async def close(self) -> None:
        return None


async def fetch_image(
    url: str, *, policy: FetchPolicy = DEFAULT_POLICY, resolver: Resolver | None = None
) -> Image.Image:
    """Download ``url`` under ``policy`` and return it decoded (RGB, first frame, at most ``max_side``).

    Raises ``ImageFetchError`` (only) with a message for the user.
    """
    try:
        async with asyncio.timeout(policy.timeout):
            data = await _download(url, policy, resolver or system_resolver)
    except TimeoutError:
        raise ImageFetchError(f"The image link did not answer within {policy.timeout:g} s.") from None
    return await asyncio.to_thread(decode_image, data, max_pixels=policy.max_pixels, max_side=policy.max_side)


async def pinned_connector(
    url: str, *, policy: FetchPolicy = DEFAULT_POLICY, resolver: Resolver | None = None
) -> tuple[URL, aiohttp.TCPConnector]:
    """For other requests to a user-supplied address (the engine server's webhooks): the checked URL and a
    connector that reaches only the addresses checked under ``policy``. ``ImageFetchError`` when refused."""
    target = _checked_url(url)
    host, port = target.host, target.port
    assert host is not None and port is not None  # _checked_url guarantees both
    addresses = await _resolve_checked(host, port, policy, resolver or system_resolver)
    connector = aiohttp.TCPConnector(
        resolver=_PinnedResolver(host, addresses), use_dns_cache=False, force_close=True
    )
    return target, connector


async def _download(url: str, policy: FetchPolicy, resolver: Resolver) -> bytes:
    current = url
    for _hop in range(policy.max_redirects + 1):
        target = _checked_url(current)
        host, port = target.host, target.port
        assert host is not None and port is not None  # _checked_url guarantees both
        addresses = await _resolve_checked(host, port, policy, resolver)
        connector = aiohttp.TCPConnector(
            resolver=_PinnedResolver(host, addresses), use_dns_cache=False, force_close=True
        )
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector,
                    trust_env=False,
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                ) as session,
                session.get(
                    target,
                    allow_redirects=False,
                    headers={
                        "User-Agent": policy.user_agent,
                        "Accept": "image/png, image/jpeg, image/gif, image/webp, image/*;q=0.5",
                        "Accept-Encoding": "identity",
                    },
                ) as response,
            ):
                if response.status in REDIRECT_STATUSES:
                    current = _redirect_target(target, response.headers.get("Location"))
                    continue
                if response.status != 200:
                    raise ImageFetchError(
                        f"The image link answered HTTP {response.status} instead of an image."
                    )
                if response.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
                    raise ImageFetchError(
                        "The image link sent compressed data; only plain images are accepted."
                    )
                if response.content_length is not None and response.content_length > policy.max_bytes:
                    raise _too_big(policy.max_bytes)
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > policy.max_bytes:
                        raise _too_big(policy.max_bytes)
                return bytes(body)
        except (ImageFetchError, TimeoutError):
            raise
        except aiohttp.ClientSSLError:
            raise ImageFetchError(
                "The image link's secure connection (HTTPS) could not be verified."
            ) from None
        except (aiohttp.ClientError, OSError, ValueError):
            raise ImageFetchError("Could not download from the image link (connection failed).") from None
    raise ImageFetchError(
        f"The image link redirects more than {policy.max_redirects} times (a redirect loop?)."
    )


def _checked_url(url: str) -> URL:
    try:
        target = URL(url)
        host, port = target.host, target.port
    except (ValueError, TypeError):
        raise ImageFetchError("The image link is not a valid web address.") from None
    if target.scheme not in ("http", "https"):
        raise ImageFetchError("Image links must start with http:// or https://.")
    if not host or port is None:
        raise ImageFetchError("The image link is not a valid web address.")
    if target.user is not None or target.password is not None:
        raise ImageFetchError("Image links must not contain a user name or password.")
    return target


def _redirect_target(base: URL, location: str | None) -> str:
    if not location:
        raise ImageFetchError("The image link redirected without saying where to.")
    try:
        return str(base.join(URL(location)))
    except (ValueError, TypeError):
        raise ImageFetchError("The image link redirected to an invalid address.") from None


async def _resolve_checked(host: str, port: int, policy: FetchPolicy, resolver: Resolver) -> list[IPAddress]:
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        found: list[Any] = [literal]
    else:
        try:
            found = await resolver(host, port)
        except (OSError, UnicodeError, ValueError):
            raise ImageFetchError("The image link's host name could not be found.") from None
    addresses: list[IPAddress] = []
    for item in found:
        try:
            ip = ipaddress.ip_address(str(item).split("%", 1)[0])
        except ValueError:
            raise ImageFetchError("The image link's host name could not be found.") from None
        if not address_allowed(ip, policy.allowed_networks):
            raise ImageFetchError(
                "The image link points to a private or internal network address; only public addresses are allowed."
            )
        addresses.append(ip)
    if not addresses:
        raise ImageFetchError("The image link's host name could not be found.")
    return addresses


def _too_big(limit: int) -> ImageFetchError:
    return ImageFetchError(f"The image is larger than {limit // (1024 * 1024)} MB.")


def load_attachment_image(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> Image.Image:
    """A Discord attachment's bytes → image, with the same checks as ``fetch_image`` (CPU-bound:
    call it through ``asyncio.to_thread``)."""
    if len(data) > max_bytes:
        raise _too_big(max_bytes)
    return decode_image(data, max_pixels=max_pixels, max_side=max_side)


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> Image.Image:
    """Bytes → RGB image (first frame, downscaled to fit ``max_side``); ``ImageFetchError`` otherwise."""
    if not data:
        raise ImageFetchError("The image is empty.")
    try:
        image = Image.open(BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageFetchError(
            f"The image declares more than {max_pixels // 1_000_000} megapixels; that is not allowed."
        ) from None
    except Exception:  # UnidentifiedImageError, and anything a malformed header makes Pillow raise
        raise ImageFetchError("That is not an image Imaginebot can read (PNG, JPEG, GIF or WebP).") from None
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageFetchError("The image has no pixels.")
        if width * height > max_pixels:
            raise ImageFetchError(
                f"The image is {width}×{height} ({width * height / 1e6:.0f} megapixels); "
                f"the limit is {max_pixels // 1_000_000} megapixels."
            )
        if image.format == "JPEG" and max(width, height) > max_side:
            image.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale
        image.seek(0)
        image.load()
        frame: Image.Image = image
        if frame.mode in ("RGBA", "LA", "PA") or (frame.mode == "P" and "transparency" in frame.info):
            rgba = frame.convert("RGBA")
            frame = Image.new("RGB", rgba.size, (255, 255, 255))
            frame.paste(rgba, mask=rgba.getchannel("A"))
        elif frame.mode != "RGB":
            frame = frame.convert("RGB")
        if max(frame.size) > max_side:
            frame = frame.copy() if frame is image else frame
            frame.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return frame if frame is not image else frame.copy()
    except ImageFetchError:
        raise
    except Exception:  # truncated data, corrupt chunks, decoder errors
        raise ImageFetchError("The image is damaged or incomplete; try another file.") from None
    finally:
        image.close()
