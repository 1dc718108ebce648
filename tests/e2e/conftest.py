"""End-to-end fixtures: ``emu`` is the shared emulator fixture under a short name.

Its teardown is the harness's: after the test (and so after every bot it started), the emulator's verdict must
be clean; ``@pytest.mark.emulator_allows(check="reason")`` lets a test provoke a check on purpose (see
``tests/emulator_fixtures.py``).
"""

import pytest


@pytest.fixture
def emu(emulator):
    return emulator
