"""Build the bot's engine from ``ENGINE``: the local diffusers engine, engine servers, third-party backends.

``ENGINE`` is a comma-separated list; each item says what it is by its scheme::

    ENGINE=local                                               # default: in-process diffusers
    ENGINE=http://s3cret@gpu1:7861,http://s3cret@gpu2:7861      # two of our engine servers (token)
    ENGINE=local,https://gpu3.example.com:7861#s3cret          # mixed
    ENGINE=a1111+http://user:password@gpu4:7860                # AUTOMATIC1111 / Forge / SD.Next (--api)
    ENGINE=a1111+http://gpu4:7860?sampler=Euler%20a            # ... with a sampler from /sdapi/v1/samplers
    ENGINE=comfyui+http://gpu5:8188                            # ComfyUI (COMFYUI_WORKFLOWS, MODEL = checkpoint)
    ENGINE=replicate+https://r8_TOKEN@api.replicate.com/stability-ai/sdxl:VERSION   # hosted predictions

One ``local`` or engine server item gives that engine itself; several items, or any third-party backend,
give an ``EnginePool`` (least-loaded dispatch among the engines that can do the operation, failover,
health). The local engine takes ``ENGINE_BATCH_MAX`` and ``ENGINE_SAFETY_CHECKER`` from the bot's settings,
the same names an engine server reads; a remote engine server applies its own. ComfyUI reads its workflow
templates from ``COMFYUI_WORKFLOWS`` and runs them on the checkpoint ``MODEL`` names; the predictions API
maps its inputs with ``REPLICATE_INPUTS`` (see ``engine/adapters``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from engine.base import Engine, EngineError

if TYPE_CHECKING:
    from engine.local import LocalDiffusersEngine


ADAPTER_KINDS = ("a1111", "comfyui", "replicate")
"""Third-party backends, written ``KIND+http(s)://…`` (engine/adapters)."""


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # "local", "remote", or one of ADAPTER_KINDS
    url: str | None = None
    token: str | None = None  # remote/replicate: the token; a1111: the Basic auth password
    user: str | None = None  # a1111: the Basic auth user
    model: str | None = None  # replicate: OWNER/MODEL
    version: str | None = None  # replicate: a version id
    options: tuple[tuple[str, str], ...] = ()  # a1111: ?sampler=…&poll=…&timeout=…

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
        kind, plus, rest = item.partition("+")
        if plus and kind.lower() in ADAPTER_KINDS:
            specs.append(_adapter_spec(kind.lower(), rest, item))
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"ENGINE item {_safe(item)!r} is neither 'local', an http(s)://host:port URL, nor "
                "a1111+…, comfyui+… or replicate+…"
            )
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


def _adapter_spec(kind: str, url: str, item: str) -> EngineSpec:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"ENGINE item {_safe(item)!r}: write {kind}+http(s)://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"ENGINE item {_safe(item)!r} has a bad port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    base = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    options = tuple(parse_qsl(parts.query))
    if kind == "a1111":
        return EngineSpec(kind, base + parts.path.rstrip("/"), password, user, options=options)
    if kind == "comfyui":
        return EngineSpec(kind, base + parts.path.rstrip("/"), options=options)
    # replicate+https://TOKEN@host/OWNER/MODEL[:VERSION]
    model, _, version = parts.path.strip("/").partition(":")
    if model.count("/") != 1 or not all(model.split("/")):
        raise ValueError(
            f"ENGINE item {_safe(item)!r}: write replicate+https://TOKEN@host/OWNER/MODEL[:VERSION]"
        )
    return EngineSpec(kind, base, password or user, model=model, version=version or None, options=options)


def _safe(item: str) -> str:
    parts = urlsplit(item.partition("+")[2] if "+" in item.split("://")[0] else item)
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
        elif spec.kind == "remote":
            from engine.remote import RemoteEngine

            assert spec.url is not None
            engines.append(RemoteEngine(spec.url, spec.token, name=f"remote-{index + 1}"))
        else:
            engines.append(build_adapter(spec, settings, f"{spec.kind}-{index + 1}"))
    if len(engines) == 1 and specs[0].kind in ("local", "remote"):
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
    batch_max = int(getattr(settings, "engine_batch_max", 1) or 1)
    return LocalDiffusersEngine(
        settings.model,
        settings.device,
        max_batch=batch_max,
        safety_checker=getattr(settings, "engine_safety_checker", None),
    )


def build_adapter(spec: EngineSpec, settings: Any, name: str) -> Engine:
    """A third-party backend adapter (engine/adapters) for one ``ENGINE`` item."""
    assert spec.url is not None
    options = dict(spec.options)
    try:
        if spec.kind == "a1111":
            from engine.adapters.a1111 import A1111Engine

            return A1111Engine(
                spec.url,
                user=spec.user,
                password=spec.token,
                name=name,
                sampler=options.get("sampler"),
                upscaler=options.get("upscaler"),
                poll_interval=float(options.get("poll", 0.5)),
                job_timeout=float(options.get("timeout", 900)),
            )
        if spec.kind == "comfyui":
            from engine.adapters.comfyui import ComfyUIEngine

            return ComfyUIEngine(
                spec.url,
                checkpoint=str(getattr(settings, "model", "")),
                workflows=getattr(settings, "comfyui_workflows", None) or None,
                name=name,
                job_timeout=float(options.get("timeout", 900)),
            )
        from engine.adapters.replicate import PredictionsEngine, load_input_map

        assert spec.model is not None
        return PredictionsEngine(
            spec.url,
            spec.model,
            spec.token,
            version=spec.version,
            name=name,
            inputs=load_input_map(getattr(settings, "replicate_inputs", None) or None),
            slots=int(options.get("slots", 4)),
            poll_interval=float(options.get("poll", 1.0)),
            job_timeout=float(options.get("timeout", 900)),
        )
    except ValueError as error:
        raise EngineError(f"ENGINE item {name}: a bad option ({error})") from None
