"""Logging set-up: ``LOG_FORMAT=text`` (default) or ``json`` (one object per line, for log collectors).

Every record gets ``job_id`` when it is about a job: the job code logs ``"job %s: …"`` with the id first,
and this module reads it from there, so no call site needs to change. Secrets (the Discord token, the S3
secret key, the database password) are replaced by ``***`` in every message, whatever logged them.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

JOB_PREFIX = "job %s"


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            args = record.args
            if (
                isinstance(record.msg, str)
                and record.msg.startswith(JOB_PREFIX)
                and isinstance(args, tuple)
                and args
            ):
                record.job_id = str(args[0])
        return True


class RedactingFilter(logging.Filter):
    """Replaces each secret's text with ``***`` in the formatted message (and the traceback text)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.redact(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, fmt: str = "text", secrets: Iterable[str] = ()) -> logging.Handler:
    """Replace the root logger's handlers with one stderr handler in ``fmt``; returns it."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(JobIdFilter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_start_up()
    return handler


def quiet_start_up() -> None:
    """Silence what a user cannot act on: library warnings and chatter about how models load.

    diffusers/transformers warn about image-processor fallbacks, deprecated config keys of hub models and
    the like; discord.py logs every gateway step at INFO; progress bars of model loading go to stderr.
    Real problems still arrive as errors (``EngineError``) with a message of ours.
    """
    logging.getLogger("discord").setLevel(logging.WARNING)
    try:  # the bot has no voice features: "PyNaCl/davey is not installed, voice will NOT be supported"
        from discord import VoiceClient

        VoiceClient.warn_nacl = VoiceClient.warn_dave = False
    except ImportError:
        pass
    for name in (
        "diffusers",
        "transformers",
        "accelerate",
        "huggingface_hub",
        "torch",
        "aiobotocore",
        "botocore",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings(
            "ignore", category=category, module=r"(diffusers|transformers|torch|accelerate)"
        )
    # read by these libraries when they are imported (later, by the engine), so no import here
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_loaded_libraries() -> None:
    """Turn off diffusers' and transformers' model-loading progress bars and advice (before a model loads).

    diffusers has no environment variable for its progress bars, so its logging module is imported here;
    without the ``local`` extra there is nothing to quiet.
    """
    import importlib

    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.set_verbosity_error()
        module.disable_progress_bar()


def secrets_of(settings: Any) -> list[str]:
    """The setting values that must never appear in a log line."""
    from sqlalchemy.engine import make_url

    found = []
    for name in ("discord_token", "aws_secret_access_key", "aws_access_key_id"):
        value = getattr(settings, name, None)
        if value is not None:
            found.append(value.get_secret_value())
    password = make_url(settings.resolved_database_url).password
    if password:
        found.append(str(password))
    return found
