"""PRODUCT.md §7, prompt part: every bad input gets a specific message naming what was wrong.

Each row: the raw prompt, what the message must name (the parameter, or the construct), and a
fragment saying what is allowed or what went wrong. Messages are short (an ephemeral Discord reply)
and never echo a long or dangerous piece of the input back.
"""

from __future__ import annotations

import pytest

from bot.prompt import MAX_PROMPT_CHARS, PromptError, expand_permutations, parse_prompt

MODELS = frozenset({"sd15", "sdxl"})
URL = "https://img.example/cat.png"

CATALOGUE = [
    # (id, raw prompt, names, fragment)
    ("empty", "", "prompt", "empty"),
    ("only spaces", " \n\t ", "prompt", "empty"),
    ("only parameters", "--ar 3:2", "prompt", "empty"),
    ("10,000 characters", "a" * 10_000, "prompt", f"10000 characters long; the limit is {MAX_PROMPT_CHARS}"),
    ("100,000 characters", "a" * 100_000, "prompt", "100000 characters long"),
    ("control character", "a\x07b", "prompt", "control"),
    ("NUL", "cat\x00", "prompt", "control"),
    ("private use", "cat \ue000", "prompt", "control or unassigned"),
    ("lone surrogate", "cat \ud800", "prompt", "control or unassigned"),
    ("ar zero", "x --ar 0:1", "--ar", "from 1 to"),
    ("ar huge", "x --ar 99999:1", "--ar", "from 1 to"),
    ("ar extreme", "x --ar 5:1", "--ar", "too extreme"),
    ("ar malformed", "x --ar wide", "--ar", "two whole numbers"),
    ("ar decimal", "x --ar 1.5:1", "--ar", "two whole numbers"),
    ("seed negative", "x --seed -1", "--seed", "whole number from 0 to 4294967295"),
    ("seed exponent", "x --seed 1e9999", "--seed", "whole number"),
    ("seed too big", "x --seed 4294967296", "--seed", "out of range"),
    ("seed missing", "x --seed", "--seed", "needs a value"),
    ("steps zero", "x --steps 0", "--steps", "from 1 to 150"),
    ("steps and quality", "x --steps 20 --q 2", "--steps", "only one"),
    ("quality banana", "x --q banana", "--quality", "one of .25, .5, 1 or 2"),
    ("quality 3", "x --quality 3", "--quality", "not one of them"),
    ("quality 0", "x --q 0", "--quality", "not one of them"),
    ("quality negative", "x --q -1", "--quality", "one of .25"),
    ("quality nan", "x --q nan", "--quality", "one of .25"),
    ("chaos high", "x --chaos 101", "--chaos", "from 0 to 100"),
    ("chaos negative", "x --c -5", "--chaos", "whole number from 0 to 100"),
    ("chaos decimal", "x --chaos 5.5", "--chaos", "whole number"),
    ("stylize high", "x --s 1001", "--stylize", "from 0 to 1000"),
    ("stylize word", "x --stylize lots", "--stylize", "whole number from 0 to 1000"),
    ("stop low", "x --stop 9", "--stop", "from 10 to 100"),
    ("stop high", "x --stop 101", "--stop", "from 10 to 100"),
    ("tile with value", "x --tile yes please", "--tile", "takes no value"),
    ("fast and relax", "x --fast --relax", "--fast", "pick one"),
    ("fast with value", "x --fast 2", "--fast", "takes no value"),
    ("repeat zero", "x --repeat 0", "--repeat", "from 1 to 4 on your plan"),
    ("repeat over plan", "x --repeat 40", "--repeat", "on your plan"),
    ("iw without image", "x --iw 2", "--iw", "image link or attach"),
    ("iw high", f"{URL} x --iw 4", "--iw", "from 0 to 3"),
    ("iw word", f"{URL} x --iw heavy", "--iw", "number from 0 to 3"),
    ("iw infinity", f"{URL} x --iw inf", "--iw", "number from 0 to 3"),
    ("model unknown", "x --model dalle", "--model", "available: sd15, sdxl"),
    ("model path traversal", "x --model ../../etc/passwd", "--model", "letters, digits"),
    ("model shell", "x --v sd15;rm -rf /", "--model", "letters, digits"),
    ("model subshell", "x --model $(reboot)", "--model", "letters, digits"),
    ("model backticks", "x --model `id`", "--model", "letters, digits"),
    ("model sql", "x --model a'OR'1'='1", "--model", "letters, digits"),
    ("model too long", "x --model " + "a" * 41, "--model", "at most 40"),
    ("model format chars", "x --model sd\u202e15x", "--model", "not a model here"),
    ("unknown parameter", "x --foo 3", "--foo", "Known parameters"),
    ("misspelt parameter", "x --stylise 3", "--stylise", "did you mean --stylize"),
    ("huge unknown name", "x --" + "z" * 200, "Unknown parameter", "…"),
    ("twice", "x --s 1 --stylize 2", "--stylize", "twice"),
    ("weights sum to zero", "a::1 b::-1", "::", "add up to 0; the total must be above 0"),
    ("weights negative", "a::-2", "::", "add up to -2"),
    ("weights tiny float", "a::0.3 b::-0.1 c::-0.2", "::", "add up to 0"),
    ("weight empty part", "::2 cat", "::", "must follow some text"),
    ("weight huge", "a::1000 b", "::", "from -100 to 100"),
    ("too many parts", "::".join("abcdefghijkl"), "::", "at most 10"),
    ("ftp image link", "ftp://x.example/a.png cat", "image link", "http:// or https://"),
    ("file image link", "file:///etc/passwd cat", "image link", "http:// or https://"),
    ("image link without text", f"{URL} --ar 2:3", "image link", "no text"),
    (
        "image link with password",
        "https://u:secret@img.example/a.png cat",
        "image link",
        "user name or password",
    ),
    ("broken image link", "https://[::1/a.png cat", "image link", "not a valid web address"),
    ("too many image links", f"{URL} " * 6 + "cat", "image link", "At most 5"),
]


@pytest.mark.parametrize(
    ("raw", "names", "fragment"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE]
)
def test_each_bad_prompt_gets_a_specific_message(raw, names, fragment):
    with pytest.raises(PromptError) as caught:
        parse_prompt(raw, models=MODELS)
    message = str(caught.value)
    assert names.lower() in message.lower()
    assert fragment in message
    assert len(message) < 200
    for dangerous in ("rm -rf", "$(reboot)", "`id`", "../", "secret", "z" * 30):
        assert dangerous not in message


def test_messages_are_all_different_per_problem():
    messages = set()
    for _, raw, _, _ in CATALOGUE:
        with pytest.raises(PromptError) as caught:
            parse_prompt(raw, models=MODELS)
        messages.add(str(caught.value))
    assert len(messages) >= len(CATALOGUE) - 12  # the same wording only for the same problem


PERMUTATIONS = [
    ("unclosed {", "a {red, green bird", "{", "never closed"),
    ("stray }", "a red} bird", "}", "no matching"),
    ("too many", "{a,b,c} {d,e,f} {g,h,i}", "permutations", "more than 20 prompts; the limit is 20"),
    ("deep nesting", "{" * 9 + "x" + "}" * 9, "{ }", "nest too deep"),
]


@pytest.mark.parametrize(
    ("raw", "names", "fragment"), [c[1:] for c in PERMUTATIONS], ids=[c[0] for c in PERMUTATIONS]
)
def test_bad_permutations_get_a_specific_message(raw, names, fragment):
    with pytest.raises(PromptError) as caught:
        expand_permutations(raw, 20)
    assert names in str(caught.value) and fragment in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\u200bb", "ab"),  # zero-width space
        ("a\u200db\ufeffc", "abc"),  # zero-width joiner, BOM
        ("\u202eevil\u202c cat", "evil cat"),  # RTL override / pop
        ("\u200f\u200ecat", "cat"),  # RTL / LTR marks
        ("line\nbreak\ttab", "line break tab"),
        ("日本の猫 🐱 --ar 2:3", "日本の猫 🐱"),
        ("a\u200b-\u200b-seed 5", "a--seed 5"),  # a hidden character can't smuggle a parameter in
    ],
)
def test_invisible_and_bidi_characters_are_dropped(raw, text):
    assert parse_prompt(raw).text == text
