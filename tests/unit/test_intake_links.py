"""Image links in expanded prompts (issue 15 item 16): checked in every permutation, moderated like text."""

from __future__ import annotations

import pytest

from bot.intake import SAME_LINK, Intake, IntakeRefused
from bot.settings import load_settings
from storage.models import User


class RecordingModerator:
    """Refuses any text containing "gore"; records what it was asked to read."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def check(self, user_id: int, *texts: str) -> str | None:
        self.texts.extend(texts)
        return "refused" if any("gore" in text for text in texts) else None


def intake(moderator: RecordingModerator) -> Intake:
    settings = load_settings(_env_file=None, discord_token="x", image_urls=True)
    return Intake(settings, moderator)  # type: ignore[arg-type]


async def test_every_permutation_must_use_the_same_link():
    reader = intake(RecordingModerator())
    user = User(id=1)
    shared = await reader.read(user, "https://a.example/1.png {cat, dog}")
    assert [p.image_urls for p in shared] == [("https://a.example/1.png",)] * 2
    for raw in (
        "{https://a.example/1.png cat, dog}",
        "{https://a.example/1.png cat, https://b.example/2.png dog}",
    ):
        with pytest.raises(IntakeRefused) as refused:
            await reader.read(user, raw)
        assert str(refused.value) == SAME_LINK


async def test_links_are_moderated_like_the_prompt_text():
    moderator = RecordingModerator()
    with pytest.raises(IntakeRefused, match="refused"):
        await intake(moderator).read(User(id=1), "{cat, https://example.com/gore.png dog}")
    assert "https://example.com/gore.png" in moderator.texts
