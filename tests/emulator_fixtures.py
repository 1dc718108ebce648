"""pytest fixture ``emulator``: a started Discord API emulator whose verdict is checked after every test.

Enabled by ``pytest_plugins = ["tests.emulator_fixtures"]`` in ``tests/conftest.py``; the end-to-end tests get it
as ``emu`` (``tests/e2e/conftest.py``).

At teardown, after the emulator stopped, ``assert_clean()`` runs for every test that used the fixture: protocol
violations, unhandled routes, natural 429s the bot ran into, interactions never answered and deferred
responses left "thinking…" fail the test (the checks are listed in ``sandbox/discord_emulator/verdict.py``).
A test that provokes one of them on purpose says which, and why::

    @pytest.mark.emulator_allows(unanswered="the bot is stopped before it can answer the click")
    async def test_...(emulator): ...

A reason is required; an unknown check name is an error. When a test fails before its end, its failure report
gets a "Discord emulator" section with what the emulator saw by then, and the teardown check is skipped (one
failure per test is enough to read); so is it when the test never ran (a fixture failed to set up).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest
import pytest_asyncio

from sandbox.discord_emulator import DiscordEmulator
from sandbox.discord_emulator.verdict import CHECKS, validate_allowances

MARKER = "emulator_allows"
_CALL_FAILED = pytest.StashKey[bool]()
_RECENT_REQUESTS = 15


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**reasons): the Discord emulator's teardown check lets these checks pass, each with the "
        f"reason the test provokes it ({', '.join(CHECKS)})",
    )


def allowances(node: pytest.Item) -> dict[str, str]:
    """The checks a test's ``emulator_allows`` markers allow, with their reasons (validated)."""
    allowed: dict[str, str] = {}
    for mark in node.iter_markers(MARKER):
        if mark.args:
            raise ValueError(f"{MARKER} takes check=reason keywords, not {mark.args!r}")
        allowed.update(mark.kwargs)
    validate_allowances(allowed)
    return allowed


def summary(emu: DiscordEmulator, allow: dict[str, str]) -> str:
    """What the emulator saw: the problems it found (allowed ones marked) and the last requests."""
    lines = [f"  {p}" for p in emu.problems(allow)] or ["  no problems"]
    lines += [f"  allowed {name}: {reason}" for name, reason in allow.items()]
    recent = emu.requests[-_RECENT_REQUESTS:]
    lines.append(f"the last {len(recent)} of {len(emu.requests)} requests:")
    lines += [f"  {r.status} {r.method} {r.path}" for r in recent]
    return "\n".join(lines)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    emu = getattr(item, "funcargs", {}).get("emulator")
    if report.when == "call" and isinstance(emu, DiscordEmulator):
        item.stash[_CALL_FAILED] = report.failed
        if report.failed:
            try:
                text = summary(emu, allowances(item))
            except ValueError as exc:
                text = str(exc)
            report.sections.append(("Discord emulator", text))
    return report


@pytest_asyncio.fixture
async def emulator(request: pytest.FixtureRequest) -> AsyncIterator[DiscordEmulator]:
    """A started emulator, stopped after the test; then its verdict (see the module docstring)."""
    allow = allowances(request.node)  # a bad marker fails before the test runs
    emu = DiscordEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
    if request.node.stash.get(_CALL_FAILED, None) is False:  # the test ran and passed
        emu.assert_clean(allow)
