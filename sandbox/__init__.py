"""Try the bot without Discord: the Discord API emulator (``sandbox.discord_emulator``) that real discord.py talks to.

The emulator depends on nothing of ours (aiohttp only); the tests and the sandbox both drive the real bot through it.
"""
