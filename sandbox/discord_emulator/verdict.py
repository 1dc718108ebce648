"""The emulator's verdict on a run: everything a bot did that Discord (or a user) would hold against it.

Each check has a name; a test that provokes one on purpose allows it by name *with the reason why*
(``assert_clean(allow={"unanswered": "the bot is stopped before it can answer"})``, or in pytest the
``emulator_allows`` marker, see ``tests/emulator_fixtures.py``). An allowance without a reason is refused.

==============  ==================================================================================================
check           fails when
==============  ==================================================================================================
violations      a request broke one of Discord's rules (late or double acknowledgement, limits, expired token,
                a retry sooner than an injected 429's ``retry_after``, ...); see ``DiscordEmulator.violations``
unhandled       a request hit a route the emulator does not know
rate_limits     the bot ran into a natural 429 (``rate_limit_hits``; injected ones are the test's own doing)
unanswered      an interaction got no response at all (the user sees "This interaction failed")
thinking        a deferred response still shows "<bot> is thinking…": it was never edited or followed up
==============  ==================================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .emulator import DiscordEmulator

CHECKS = ("violations", "unhandled", "rate_limits", "unanswered", "thinking")

_INTERACTION_KINDS = {2: "slash command", 3: "component click", 5: "modal submit"}


def validate_allowances(allow: Mapping[str, str]) -> None:
    """Raise ``ValueError`` for an unknown check name or an allowance without a stated reason."""
    for name, reason in allow.items():
        if name not in CHECKS:
            raise ValueError(f"unknown emulator check {name!r}; the checks are {', '.join(CHECKS)}")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"allowing the emulator check {name!r} needs a reason (a non-empty string)")


def findings(emu: DiscordEmulator) -> dict[str, list[str]]:
    """What each check found, by check name (empty lists for clean checks)."""
    unanswered = [
        f"{_INTERACTION_KINDS.get(ix.type, f'type {ix.type}')} {ix.id} ({_what(ix.payload)}) by user "
        f"{ix.user_id} got no response" + (f"; refused callbacks: {ix.rejected}" if ix.rejected else "")
        for ix in emu.interactions()
        if not ix.responses
    ]
    thinking = [
        f"message {m.id} (response to interaction {m.interaction_id}) still says the bot is thinking"
        for m in emu.messages()
        if m.loading and not m.deleted
    ]
    rate_limits = [
        f"{hit.method} {hit.path}: 429 on bucket {hit.bucket} (retry_after {hit.retry_after}s"
        + (", global)" if hit.is_global else ")")
        for hit in emu.rate_limit_hits
    ]
    return {
        "violations": list(emu.violations),
        "unhandled": list(emu.unhandled),
        "rate_limits": rate_limits,
        "unanswered": unanswered,
        "thinking": thinking,
    }


def problems(emu: DiscordEmulator, allow: Mapping[str, str] | None = None) -> list[str]:
    """One line per finding of every check not allowed, prefixed with the check's name."""
    allowed = dict(allow or {})
    validate_allowances(allowed)
    return [
        f"{name}: {line}" for name, lines in findings(emu).items() if name not in allowed for line in lines
    ]


def _what(payload: dict[str, object]) -> str:
    data = payload.get("data")
    if not isinstance(data, dict):
        return "?"
    return str(data.get("name") or data.get("custom_id") or "?")
