"""End-to-end fixtures: ``emu`` is the shared emulator fixture under a short name."""

import pytest


@pytest.fixture
def emu(emulator):
    return emulator
