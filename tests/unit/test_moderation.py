"""bot.moderation: robust banned-word matching without Scunthorpe false positives."""

from __future__ import annotations

import pytest

from bot.moderation import DEFAULT_BANNED_WORDS, BannedWords, moderation_message

WORDS = BannedWords(["ass", "badword", "hell", "blood bath", "Gore"])


@pytest.mark.parametrize(
    ("prompt", "term"),
    [
        ("a badword here", "badword"),
        ("BADWORD", "badword"),
        ("a b a d w o r d", "badword"),
        ("b.a.d.w.o.r.d!", "badword"),
        ("b-a_d w*o*r*d", "badword"),
        ("b*dword", None),  # letters replaced by * are not guessed
        ("b4dw0rd", "badword"),
        ("b@dword", "badword"),
        ("baaaadwooord", "badword"),
        ("bad\u200bword", "badword"),
        ("ｂａｄｗｏｒｄ", "badword"),  # full-width
        ("𝐛𝐚𝐝𝐰𝐨𝐫𝐝", "badword"),  # mathematical bold
        ("bаdwоrd", "badword"),  # Cyrillic а and о
        ("bàdwörd", "badword"),
        ("badwords and more", "badword"),
        ("so much gore", "Gore"),
        ("g0r3", "Gore"),
        ("what the h3ll", "hell"),
        ("what the he11", "hell"),
        ("a$$", "ass"),
        ("@ss", "ass"),
        ("a s s", "ass"),
        ("a blood bath", "blood bath"),
        ("a bloodbath", "blood bath"),
        ("a b l o o d  b a t h", "blood bath"),
    ],
)
def test_obfuscations_are_seen_through(prompt, term):
    assert WORDS.find(prompt) == term


@pytest.mark.parametrize(
    "prompt",
    [
        "a classy glass of grass",
        "an assassin in a passage",
        "the embassy, assets and bass",
        "hello, shell, hellebore",
        "as seen on a bad day, a word",
        "a badge of gorgeous goretex",
        "blood on a bath mat",
        "",
        "a cat",
    ],
)
def test_innocent_words_containing_a_term_do_not_match(prompt):
    assert WORDS.find(prompt) is None


def test_default_list_is_empty_and_matches_nothing():
    assert DEFAULT_BANNED_WORDS == ()
    assert BannedWords().find("anything at all, badword") is None
    assert len(BannedWords(["", "  ", "..."])) == 0


def test_terms_are_reported_as_configured():
    assert BannedWords(["  Bad Word "]).terms == ("Bad Word",)
    assert BannedWords(["Bad Word"]).find("b a d w o r d") == "Bad Word"


def test_long_inputs_take_linear_work():
    """No quadratic blow-up on long prompts: the text examined grows in step with the input (counted, not
    timed, so a busy machine cannot fail it)."""
    text = "a " * 3000 + "x" * 5000 + " a$ " * 500

    def work(prompt: str) -> int:
        return sum(len(candidate) for candidate in WORDS._candidates(prompt))

    assert WORDS.find(text) is None and WORDS.find(text * 2) is None
    assert work(text * 2) <= 2.1 * work(text)


def test_message_in_midjourneys_style():
    message = moderation_message("gore")
    assert message.startswith("Sorry!") and "`gore`" in message
    assert "`" not in moderation_message("a`b").replace("`ab`", "")
    assert "banned list" not in moderation_message()
