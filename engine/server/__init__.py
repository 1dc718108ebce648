"""The engine server: the local engine behind an aiohttp HTTP API (``python -m engine serve``).

``jobs`` runs and remembers the jobs (states as in PRODUCT.md), ``store`` keeps them in a database (the only
part of ``engine`` that imports ``storage``), ``app`` is our job API, ``a1111`` and ``openai_images`` the
A1111 and OpenAI Images APIs on the same queue, ``webhooks`` and ``metrics`` what their names say; the wire
schema shared with ``engine.remote`` is ``engine.wire``.
"""

from engine.server.app import create_app
from engine.server.jobs import JobManager, Limits, ServerJob, ServerState

__all__ = ["JobManager", "Limits", "ServerJob", "ServerState", "create_app"]
