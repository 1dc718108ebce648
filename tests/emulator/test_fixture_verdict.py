"""The ``emulator`` fixture's teardown verdict, run on a small test file with pytest's own ``pytester``."""

from __future__ import annotations

import pytest

INNER_TESTS = '''
import aiohttp
import pytest


async def flood(emu):
    """Six channel messages at once: the sixth gets a natural 429."""
    url = f"{emu.api_base}/channels/{emu.channel_id}/messages"
    headers = {"Authorization": f"Bot {emu.bot_token}"}
    async with aiohttp.ClientSession() as http:
        for i in range(6):
            async with http.post(url, json={"content": str(i)}, headers=headers):
                pass


async def test_flood(emulator):
    await flood(emulator)


@pytest.mark.emulator_allows(rate_limits="floods the channel on purpose")
async def test_flood_allowed(emulator):
    await flood(emulator)


@pytest.mark.emulator_allows(rate_limits=" ")
async def test_no_reason(emulator):
    pass


async def test_fails_early(emulator):
    await flood(emulator)
    assert False, "the test's own failure"


async def test_clean(emulator):
    pass
'''


def test_the_fixture_checks_the_verdict_after_every_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.emulator_fixtures"]')
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA")
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("errors")) == (3, 1, 2), (
        outcomes
    )  # test_flood passes its call, errs at teardown
    text = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_flood *", "*rate_limits: POST /api/v10/channels/*"]
    )
    result.stdout.fnmatch_lines(["*ERROR at setup of test_no_reason*", "*needs a reason*"])
    # a test that failed on its own shows what the emulator saw, and gets no second error at teardown
    result.stdout.fnmatch_lines(["*test_fails_early*", "*Discord emulator*", "*rate_limits: POST*"])
    assert "ERROR at teardown of test_fails_early" not in text
    assert "ERROR at teardown of test_flood_allowed" not in text
