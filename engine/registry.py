"""The model registry (aliases → sources and defaults) and an LRU cache of loaded pipelines.

A registry is a TOML file (``MODELS_FILE``)::

    default = "sd15"

    [models.sd15]
    source = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # hub id, diffusers folder or single file
    resolution = 512
    steps = 25
    guidance = 7.0

    [models.mine]
    source = "/models/mine.safetensors"
    config = "/models/sd15-configs"     # diffusers folder with the configs of a single file (offline)

Without a file, the registry has one model, ``default``, from ``MODEL``. A request may also name an
alias; unknown names are refused (never used as paths: a user cannot make the engine open files).
"""

from __future__ import annotations

import re
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from engine.base import EngineError

ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_ALIAS = "default"


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    source: str
    resolution: int = 512
    steps: int = 25
    guidance: float = 7.0
    config_folder: str | None = None


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec], default: str | None = None) -> None:
        if not specs:
            raise EngineError("the model registry is empty")
        self.specs = {spec.alias: spec for spec in specs}
        self.default = default or specs[0].alias
        if self.default not in self.specs:
            raise EngineError(f"default model {self.default!r} is not in the registry")

    @classmethod
    def single(
        cls, source: str, *, resolution: int = 512, steps: int = 25, config_folder: str | None = None
    ) -> ModelRegistry:
        return cls([ModelSpec(DEFAULT_ALIAS, source, resolution, steps, config_folder=config_folder)])

    def get(self, alias: str | None) -> ModelSpec:
        if alias is None or alias == "":
            return self.specs[self.default]
        spec = self.specs.get(alias)
        if spec is None:
            known = ", ".join(sorted(self.specs))
            shown = alias if ALIAS_PATTERN.match(alias) else "that name"
            raise EngineError(f"unknown model {shown}; known models: {known}")
        return spec

    def __contains__(self, alias: object) -> bool:
        return alias in self.specs


def load_registry(path: Path, *, default_source: str | None = None) -> ModelRegistry:
    """Read a TOML registry. ``default_source`` (``MODEL``) may name one of its aliases as the default."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise EngineError(f"could not read MODELS_FILE {path}: {error}") from error
    return registry_from_dict(data, base=Path(path).parent, default_source=default_source)


def registry_from_dict(
    data: dict[str, Any], *, base: Path | None = None, default_source: str | None = None
) -> ModelRegistry:
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise EngineError("MODELS_FILE needs at least one [models.<alias>] table")
    specs = []
    for alias, table in models.items():
        if not ALIAS_PATTERN.match(alias):
            raise EngineError(f"bad model alias {alias!r}: letters, digits, '.', '_' and '-' only")
        if not isinstance(table, dict) or not isinstance(table.get("source"), str):
            raise EngineError(f"model {alias}: 'source' (hub id, folder or file) is required")
        source = table["source"]
        if base is not None and source.startswith("./"):
            source = str((base / source).resolve())
        specs.append(
            ModelSpec(
                alias=alias,
                source=source,
                resolution=int(table.get("resolution", 512)),
                steps=int(table.get("steps", 25)),
                guidance=float(table.get("guidance", 7.0)),
                config_folder=table.get("config"),
            )
        )
    default = data.get("default")
    if default is None and default_source in models:
        default = default_source
    return ModelRegistry(specs, default)


K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """Loaded values (pipelines) by key, evicting the least recently used beyond a byte budget.

    The most recently used entry is always kept, even when it alone exceeds the budget (budget 0 = one
    entry). ``release(value)`` is called for each evicted value (free GPU memory there).
    """

    def __init__(self, budget_bytes: int, size_of: Callable[[V], int], release: Callable[[V], None]) -> None:
        self.budget_bytes = budget_bytes
        self._size_of = size_of
        self._release = release
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K, load: Callable[[], V]) -> V:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][0]
        value = load()
        self._entries[key] = (value, self._size_of(value))
        self._evict()
        return value

    def _evict(self) -> None:
        while len(self._entries) > 1 and self.total_bytes > self.budget_bytes:
            _, (value, _) = self._entries.popitem(last=False)
            self._release(value)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def keys(self) -> list[K]:
        return list(self._entries)

    def clear(self) -> None:
        while self._entries:
            _, (value, _) = self._entries.popitem(last=False)
            self._release(value)
