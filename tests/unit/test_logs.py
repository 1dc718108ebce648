"""LOG_FORMAT=json: one object per line with the job id; secrets replaced wherever they appear."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bot.logs import configure_logging, secrets_of
from bot.settings import load_settings

TOKEN = "MTIzNDU2Nzg5.secret-token-value"


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    handler = configure_logging("INFO", "json", [TOKEN, "hunter22"])
    handler.setStream(stream)
    yield stream
    root.handlers[:], root.level = saved


def test_json_lines_carry_the_job_id_and_never_a_secret(captured):
    log = logging.getLogger("bot.jobs")
    log.info("job %s: succeeded", "abc123")
    log.warning("connecting with %s to postgres://u:hunter22@db", TOKEN)
    try:
        raise RuntimeError(f"bad token {TOKEN}")
    except RuntimeError:
        log.exception("job %s: crashed", "def456")

    lines = captured.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r.get("job_id") for r in records] == ["abc123", None, "def456"]
    assert records[0]["message"] == "job abc123: succeeded" and records[0]["level"] == "INFO"
    assert records[1]["message"] == "connecting with *** to postgres://u:***@db"
    assert "RuntimeError: bad token ***" in records[2]["exception"]
    assert TOKEN not in captured.getvalue() and "hunter22" not in captured.getvalue()


def test_the_secrets_come_from_the_settings():
    settings = load_settings(
        _env_file=None,
        discord_token=TOKEN,
        database_url="postgresql+asyncpg://bot:pw-in-url@db/imaginebot",
        aws_secret_access_key="s3-secret-key",
    )
    assert set(secrets_of(settings)) == {TOKEN, "pw-in-url", "s3-secret-key"}
