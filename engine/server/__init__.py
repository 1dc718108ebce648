"""The engine server: the local engine behind an aiohttp HTTP API (``python -m engine serve``).

``engine.server.jobs`` keeps the server's jobs (states as in PRODUCT.md, events, result images);
``engine.server.app`` maps HTTP onto it. Depends only on ``engine``.
"""

from engine.server.app import create_app
from engine.server.jobs import JobManager, ServerJob, ServerState

__all__ = ["JobManager", "ServerJob", "ServerState", "create_app"]
