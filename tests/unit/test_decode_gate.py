"""Bounds on image decodes (issue 15 item 14): one per user at once, a few bot-wide."""

from __future__ import annotations

import asyncio

import pytest

from bot.decode_gate import DecodeBusy, DecodeGate


async def test_a_users_second_image_is_refused_while_the_first_is_read():
    gate = DecodeGate(total=2, per_user=1)
    async with gate.slot(1):
        with pytest.raises(DecodeBusy, match="still being read"):
            async with gate.slot(1):
                pass
        async with gate.slot(2):  # another user is not affected
            assert gate.busy_users == 2
    assert gate.busy_users == 0
    async with gate.slot(1):  # free again once the first is done
        pass


async def test_beyond_the_bot_wide_bound_the_next_decode_waits_for_a_slot():
    gate = DecodeGate(total=1, per_user=1)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def second() -> None:
        async with gate.slot(2):
            entered.set()

    async with gate.slot(1):
        task = asyncio.create_task(second())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(entered.wait()), 0.2)  # it is waiting, not running
        release.set()
    await asyncio.wait_for(task, 5)
    assert entered.is_set()
