"""Build the bot's engine from ``ENGINE``: the local diffusers engine, remote engine servers, or a mix.

``ENGINE`` is a comma-separated list; each item is either ``local`` or an engine server URL with an
optional token, written ``http(s)://TOKEN@host:port`` or ``http(s)://host:port#TOKEN``::

    ENGINE=local                                               # default: in-process diffusers
    ENGINE=http://s3cret@gpu1:7861,http://s3cret@gpu2:7861      # two engine servers
    ENGINE=local,https://gpu3.example.com:7861#s3cret          # mixed

One item gives that engine itself; several give an ``EnginePool`` (least-loaded dispatch, failover).
The local engine takes ``ENGINE_BATCH_MAX`` and ``ENGINE_SAFETY_CHECKER`` from the bot's settings, the same
names an engine server reads; a remote engine server applies its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from engine.base import Engine, EngineError

if TYPE_CHECKING:
    from engine.local import LocalDiffusersEngine


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # "local" or "remote"
    url: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"EngineSpec({self.kind!r}, {self.url!r})"  # never the token


def parse_engine_setting(value: str) -> list[EngineSpec]:
    """``ENGINE`` → specs; raises ``ValueError`` with a message naming the bad item."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise ValueError("ENGINE is empty; use 'local' or engine server URLs")
    specs = []
    for item in items:
        if item.lower() == "local":
            specs.append(EngineSpec("local"))
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ENGINE item {_safe(item)!r} is neither 'local' nor an http(s)://host:port URL")
        token = parts.fragment or None
        if parts.username:
            token = parts.password or parts.username  # token@host, or user:token@host
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # IPv6 literal
            netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        specs.append(
            EngineSpec("remote", urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), token)
        )
    return specs


def _safe(item: str) -> str:
    parts = urlsplit(item)
    return item if not (parts.username or parts.fragment) else f"{parts.scheme}://…@{parts.hostname}"


def build_engine(settings: Any) -> Engine:
    """The engine the bot runs jobs on (see module docstring)."""
    try:
        specs = parse_engine_setting(getattr(settings, "engine", "local") or "local")
    except ValueError as error:
        raise EngineError(str(error)) from None
    engines: list[Engine] = []
    for index, spec in enumerate(specs):
        if spec.kind == "local":
            engines.append(build_local_engine(settings))
        else:
            from engine.remote import RemoteEngine

            assert spec.url is not None
            engines.append(RemoteEngine(spec.url, spec.token, name=f"remote-{index + 1}"))
    if len(engines) == 1:
        return engines[0]
    from engine.pool import EnginePool

    return EnginePool(engines)


def build_local_engine(settings: Any) -> LocalDiffusersEngine:
    """The in-process diffusers engine on ``MODEL`` / ``DEVICE`` with the bot's local-engine settings."""
    try:
        from engine.local import LocalDiffusersEngine
    except ImportError as error:
        raise EngineError(
            f"the local engine needs the 'local' extra (pip install -e '.[local]'): {error.name} is missing"
        ) from None
    batch_max: int | Literal["auto"] = getattr(settings, "engine_batch_max", "auto") or "auto"
    data_dir = getattr(settings, "data_dir", None)
    return LocalDiffusersEngine(
        settings.model,
        settings.device,
        max_batch=batch_max,
        preview_interval=getattr(settings, "engine_preview_interval", 1.0),
        compile_unet=getattr(settings, "engine_torch_compile", False),
        compile_cache_dir=Path(data_dir) / "inductor-cache" if data_dir else None,
        safety_checker=getattr(settings, "engine_safety_checker", None),
    )
