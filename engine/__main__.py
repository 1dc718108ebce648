"""``python -m engine serve --host H --port P``: the engine server on the settings' model.

Settings come from the environment / ``.env`` (``engine.settings``): ``MODEL``, ``MODEL_RESOLUTION``,
``MODEL_STEPS``, ``DEVICE``, ``ENGINE_TOKEN``, ``MODELS_FILE``, ``ENGINE_BATCH_MAX``... A non-loopback
host needs ``ENGINE_TOKEN``. Prints where it listens and the model; stops cleanly on SIGTERM/SIGINT
(unfinished jobs end FAILED "the engine server stopped", which remote clients treat as retryable).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys

log = logging.getLogger("engine")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(host: str, port: int, settings: object) -> int:
    from aiohttp import web

    from engine.local import LocalDiffusersEngine
    from engine.safety import safety_checker_source
    from engine.server.app import create_app
    from engine.server.jobs import Limits
    from engine.settings import EngineSettings, database_url

    assert isinstance(settings, EngineSettings)
    s = settings
    token = s.engine_token.get_secret_value() if s.engine_token else None
    engine = LocalDiffusersEngine.from_settings(s)
    app = create_app(
        engine,
        token=token,
        model_name=s.model,
        max_request_bytes=int(s.engine_max_request_mb * 2**20),
        max_jobs_kept=s.engine_max_jobs_kept,
        default_resolution=s.model_resolution,
        default_steps=s.model_steps,
        database_url=database_url(s),
        results_ttl=s.engine_results_ttl,
        limits=Limits(
            queued=s.engine_queue_timeout, processing=s.engine_run_timeout, storing=s.engine_store_timeout
        ),
        webhook_secret=s.engine_webhook_secret.get_secret_value() if s.engine_webhook_secret else None,
        webhook_allow_private=s.engine_webhook_allow_private,
    )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    print(
        f"engine server listening on http://{host}:{bound} model={s.model} device={s.device} "
        f"slots={engine.slots} auth={'token' if token else 'none'} "
        f"safety_checker={safety_checker_source(s.engine_safety_checker) or 'off'}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    print("engine server stopping", flush=True)
    await runner.cleanup()
    print("engine server stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the engine server")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=7861)
    serve_parser.add_argument("--model", default=None, help="override MODEL")
    args = parser.parse_args(argv)

    from engine.settings import EngineSettingsError, load_engine_settings

    try:
        settings = load_engine_settings(**({"model": args.model} if args.model else {}))
    except EngineSettingsError as error:
        print(f"engine: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not is_loopback(args.host) and not settings.engine_token:
        print(
            f"engine: refusing to listen on {args.host} without ENGINE_TOKEN; set ENGINE_TOKEN=<a long random "
            "string> (clients send it as 'Authorization: Bearer <token>') or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(serve(args.host, args.port, settings))


if __name__ == "__main__":
    sys.exit(main())
