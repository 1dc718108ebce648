"""Membership tiers and the quota period, loaded from a TOML file (``bot/tiers.toml`` by default)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_TIERS_FILE = Path(__file__).with_name("tiers.toml")
PERIODS = ("day", "week", "month")


class TierConfigError(ValueError):
    """The tiers file is missing or wrong; ``str()`` names the file, the tier and the field."""


@dataclass(frozen=True)
class Tier:
    name: str
    priority: int
    fast_seconds: float
    daily_jobs: int
    max_concurrent: int
    max_queued: int
    relax: bool
    max_resolution: int
    max_steps: int


@dataclass(frozen=True)
class TierConfig:
    tiers: dict[str, Tier]
    default: str
    period: str = "month"

    def get(self, name: str | None) -> Tier:
        """The named tier, or the default one for ``None`` or a tier since removed from the file."""
        return self.tiers.get(name or self.default) or self.tiers[self.default]

    def period_start(self, now: datetime) -> datetime:
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "day":
            return day
        if self.period == "week":
            return day - timedelta(days=day.weekday())
        return day.replace(day=1)

    def period_end(self, now: datetime) -> datetime:
        start = self.period_start(now)
        if self.period == "day":
            return start + timedelta(days=1)
        if self.period == "week":
            return start + timedelta(days=7)
        return (start + timedelta(days=32)).replace(day=1)


def load_tiers(path: Path | None = None) -> TierConfig:
    path = path or DEFAULT_TIERS_FILE
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TierConfigError(f"tiers file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise TierConfigError(f"tiers file {path} is not valid TOML: {error}") from None
    raw_tiers = data.get("tiers")
    if not isinstance(raw_tiers, dict) or not raw_tiers:
        raise TierConfigError(f"{path}: needs at least one [tiers.<name>] table")
    tiers = {name: _tier(path, name, values) for name, values in raw_tiers.items()}
    default = data.get("default", next(iter(tiers)))
    if default not in tiers:
        raise TierConfigError(f"{path}: default tier {default!r} is not one of {sorted(tiers)}")
    period = data.get("quota", {}).get("period", "month")
    if period not in PERIODS:
        raise TierConfigError(f"{path}: [quota] period must be one of {PERIODS}, not {period!r}")
    return TierConfig(tiers=tiers, default=default, period=period)


_EXPECTED_TYPES: dict[str, type | tuple[type, ...]] = {"bool": bool, "int": int, "float": (int, float)}


def _tier(path: Path, name: str, values: object) -> Tier:
    if not isinstance(values, dict):
        raise TierConfigError(f"{path}: [tiers.{name}] must be a table")
    kwargs: dict[str, object] = {"name": name}
    for field in fields(Tier)[1:]:
        if field.name not in values:
            raise TierConfigError(f"{path}: [tiers.{name}] is missing {field.name}")
        value = values[field.name]
        expected = _EXPECTED_TYPES[str(field.type)]
        if not isinstance(value, expected) or (field.type != "bool" and isinstance(value, bool)):
            raise TierConfigError(
                f"{path}: [tiers.{name}] {field.name} must be a {field.type}, not {value!r}"
            )
        if field.type != "bool" and value < 0:  # type: ignore[operator]
            raise TierConfigError(f"{path}: [tiers.{name}] {field.name} must not be negative")
        kwargs[field.name] = value
    unknown = set(values) - {f.name for f in fields(Tier)}
    if unknown:
        raise TierConfigError(f"{path}: [tiers.{name}] has unknown keys {sorted(unknown)}")
    return Tier(**kwargs)  # type: ignore[arg-type]
