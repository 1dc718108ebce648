"""``ENGINE`` parsing and ``build_engine`` (bot/engines.py)."""

import pytest

from bot.engines import EngineSpec, build_engine, parse_engine_setting
from engine.base import EngineError


def test_parse_engine_setting():
    assert parse_engine_setting("local") == [EngineSpec("local")]
    assert parse_engine_setting("http://s3cret@gpu1:7861, https://gpu2.example.com:8443/#tok,local") == [
        EngineSpec("remote", "http://gpu1:7861", "s3cret"),
        EngineSpec("remote", "https://gpu2.example.com:8443", "tok"),
        EngineSpec("local"),
    ]
    assert parse_engine_setting("http://user:pw@[::1]:80")[0] == EngineSpec("remote", "http://[::1]:80", "pw")
    assert "s3cret" not in repr(parse_engine_setting("http://s3cret@gpu1:7861"))
    for bad in ("", "ftp://x", "gpu1:7861", "http://"):
        with pytest.raises(ValueError):
            parse_engine_setting(bad)


class S:
    model = "m"
    device = "cpu"
    engine_batch_max = 3

    def __init__(self, engine):
        self.engine = engine


def test_build_engine():
    from engine.local import LocalDiffusersEngine
    from engine.pool import EnginePool
    from engine.remote import RemoteEngine

    local = build_engine(S("local"))
    assert isinstance(local, LocalDiffusersEngine) and local.slots == 3
    assert isinstance(build_engine(S("http://t@h:1")), RemoteEngine)
    pool = build_engine(S("local,http://t@h:1"))
    assert isinstance(pool, EnginePool) and len(pool.engines) == 2
    with pytest.raises(EngineError, match="neither"):
        build_engine(S("nonsense"))
