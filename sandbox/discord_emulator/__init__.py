"""A Discord API emulator (REST + gateway) that real, unmodified discord.py 2.7.1 talks to.

Start it, point discord.py at it (``point_discord_py_at``), run a bot, then drive users (``invoke_slash``,
``click``, ``submit_modal``) and inspect what the bot did (``messages``, ``violations``, ``requests``).

``assert_clean()`` is the verdict (``verdict.py`` lists its checks): protocol violations (an early retry after an
injected 429 included), unhandled routes, natural 429s, unanswered interactions and deferred responses left
"thinking…". A test that provokes one on purpose names it with its reason:
``assert_clean(allow={"unanswered": "why"})``, or in pytest ``@pytest.mark.emulator_allows(unanswered="why")``;
the ``emulator`` fixture (``tests/emulator_fixtures.py``) runs the verdict after every test that uses it.
"""

from .clock import EmulatorClock, snowflake_time
from .connect import bot_environment, point_discord_py_at
from .emulator import CommandNotSynced, DiscordEmulator
from .errors import APIError
from .ratelimit import Fault
from .records import EPHEMERAL, LOADING, Attachment, Interaction, Message, RateLimitHit, RequestRecord, User

__all__ = [
    "APIError",
    "Attachment",
    "CommandNotSynced",
    "DiscordEmulator",
    "EPHEMERAL",
    "EmulatorClock",
    "Fault",
    "Interaction",
    "LOADING",
    "Message",
    "RateLimitHit",
    "RequestRecord",
    "User",
    "bot_environment",
    "point_discord_py_at",
    "snowflake_time",
]
