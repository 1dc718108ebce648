from datetime import UTC, datetime

import pytest

from bot.tiers import DEFAULT_TIERS_FILE, TierConfigError, load_tiers


def test_bundled_tiers_load():
    config = load_tiers()
    assert config.default == "free" and list(config.tiers) == ["free", "basic", "standard", "pro"]
    assert [t.priority for t in config.tiers.values()] == [0, 1, 2, 3]
    assert config.get(None).name == "free" and config.get("gone").name == "free"


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        (
            "month",
            datetime(2026, 12, 31, 23, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        (
            "week",
            datetime(2026, 11, 26, 5, tzinfo=UTC),
            datetime(2026, 11, 23, tzinfo=UTC),
            datetime(2026, 11, 30, tzinfo=UTC),
        ),
        (
            "day",
            datetime(2026, 11, 26, 5, tzinfo=UTC),
            datetime(2026, 11, 26, tzinfo=UTC),
            datetime(2026, 11, 27, tzinfo=UTC),
        ),
    ],
)
def test_periods(tmp_path, period, now, start, end):
    path = tmp_path / "tiers.toml"
    path.write_text(DEFAULT_TIERS_FILE.read_text().replace('period = "month"', f'period = "{period}"'))
    config = load_tiers(path)
    assert (config.period_start(now), config.period_end(now)) == (start, end)


NUMBERS = (
    "priority",
    "fast_seconds",
    "daily_jobs",
    "max_concurrent",
    "max_queued",
    "max_resolution",
    "max_steps",
)


def tier_table(value: object = 1, **overrides: object) -> str:
    """A [tiers.free] table with every number set to ``value`` (and ``overrides`` as raw TOML values)."""
    lines = [f"{key} = {overrides.get(key, value)}" for key in NUMBERS]
    return "[tiers.free]\n" + "\n".join(lines) + "\nrelax = false"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not toml [", "not valid TOML"),
        ("default = 'x'", "at least one"),
        ("default = 'gold'\n" + tier_table(), "default tier 'gold'"),
        ("[tiers.free]\npriority = 1", "missing fast_seconds"),
        (tier_table(max_steps="'many'"), "max_steps must be a int"),
        (tier_table(-1), "must not be negative"),
    ],
)
def test_bad_tier_files_name_the_problem(tmp_path, content, fragment):
    path = tmp_path / "tiers.toml"
    path.write_text(content)
    with pytest.raises(TierConfigError, match=fragment):
        load_tiers(path)
    with pytest.raises(TierConfigError, match="does not exist"):
        load_tiers(tmp_path / "missing.toml")
