"""Fuzzing the prompt parser (a fixed budget, run in CI): it never raises anything but PromptError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.prompt import PromptError, expand_permutations, parse_prompt

PIECES = st.sampled_from(
    [
        " ", "--", "—", "--ar", "--seed", "--no", "--steps", "--chaos", "--c", "--s", "--stylize", "--q",
        "--quality", "--stop", "--tile", "--model", "--v", "--fast", "--relax", "--repeat", "--iw", "--aspect",
        "::", ":", "{", "}", ",", "\\", "\\,", "1", "0", "-1", ".5", "0.25", "2", "1e9", "99999", "3:2", "0:1",
        "nan", "inf", "https://", "http://x.y/z.png ", "ftp://", "[::1]", "@", "cat", "a dog", "\u200b", "\u202e",
        "\x00", "\ud800", "\ue000", "\n", "\t", "🐱", "é", "`", "$(x)", "../", "%", "#", "\u0301", "Ⅻ", "٣",
    ]
)  # fmt: skip
PROMPTS = st.one_of(
    st.text(max_size=300), st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=40).map("".join)
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(PROMPTS, st.integers(-1, 50), st.integers(0, 3))
def test_parse_prompt_raises_only_prompt_error(raw, max_repeat, attachments):
    try:
        parsed = parse_prompt(
            raw, models=frozenset({"sd15", "v6"}), max_repeat=max_repeat, attachments=attachments
        )
    except PromptError as error:
        assert 0 < len(str(error)) < 300
        return
    assert parsed.text and len(parsed.text) <= 1000
    reparsed = parse_prompt(
        parsed.render(), models=frozenset({"sd15", "v6"}), max_repeat=max_repeat, attachments=attachments
    )
    assert reparsed == parsed


@FUZZ
@given(PROMPTS, st.integers(-1, 64))
def test_expand_permutations_raises_only_prompt_error(raw, limit):
    try:
        expanded = expand_permutations(raw, limit)
    except PromptError:
        return
    assert 1 <= len(expanded) <= max(limit, 0)
    for prompt in expanded:
        try:
            parse_prompt(prompt)
        except PromptError:
            pass
