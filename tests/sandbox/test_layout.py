"""The emulator lives in ``sandbox/discord_emulator``; no test may import it from its old home in ``tests/``."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
OLD_PATH = re.compile(r"(from|import)\s+tests\.discord_emulator|tests/discord_emulator")


def test_nothing_in_tests_imports_the_emulator_from_the_old_path() -> None:
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if path != Path(__file__).resolve() and OLD_PATH.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert not (TESTS / "discord_emulator").exists()
