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


def test_parse_third_party_backends():
    a1111, comfy, hosted, pinned = parse_engine_setting(
        "a1111+http://ada:p%40ss@gpu4:7860?sampler=Euler%20a&poll=0.2, comfyui+https://gpu5:8188/,"
        "replicate+https://r8_tok@api.replicate.com/stability-ai/sdxl,"
        "replicate+https://r8_tok@api.replicate.com/stability-ai/sdxl:7762fd07"
    )
    assert a1111 == EngineSpec(
        "a1111", "http://gpu4:7860", "p@ss", "ada", options=(("sampler", "Euler a"), ("poll", "0.2"))
    )
    assert comfy == EngineSpec("comfyui", "https://gpu5:8188")
    assert hosted == EngineSpec("replicate", "https://api.replicate.com", "r8_tok", model="stability-ai/sdxl")
    assert pinned.version == "7762fd07" and pinned.model == "stability-ai/sdxl"
    assert "p@ss" not in repr(a1111) and "r8_tok" not in repr(hosted)
    for bad in ("a1111+gpu4:7860", "replicate+https://t@api.replicate.com/sdxl", "comfyui+ftp://x"):
        with pytest.raises(ValueError) as error:
            parse_engine_setting(bad)
        assert "t@" not in str(error.value)


def test_build_engine_mixes_kinds_in_one_pool(tmp_path):
    from engine.base import ALL_OPERATIONS, Operation
    from engine.pool import EnginePool

    settings = S("a1111+http://u:p@h:1,comfyui+http://h:2,replicate+http://t@h:3/o/m")
    pool = build_engine(settings)
    assert isinstance(pool, EnginePool)
    assert [s.kind for s in pool.status()] == ["a1111", "comfyui", "replicate"]
    assert pool.operations == ALL_OPERATIONS
    comfy_only = build_engine(S("comfyui+http://h:2"))
    assert isinstance(comfy_only, EnginePool)  # alone, still health-checked and reported
    assert Operation.ZOOM_OUT_2X not in comfy_only.operations
    bad = S("a1111+http://h:1?poll=soon")
    with pytest.raises(EngineError, match="a bad option"):
        build_engine(bad)
