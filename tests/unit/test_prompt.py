import pytest

from bot.prompt import MAX_PROMPT_CHARS, ParsedPrompt, PromptError, parse_prompt


def test_parses_the_skeleton_parameters():
    parsed = parse_prompt("a red fox in snow --ar 3:2 --seed 42 --no blur, text --steps 12")
    assert parsed == ParsedPrompt(
        text="a red fox in snow",
        negative="blur, text",
        aspect=(3, 2),
        seed=42,
        steps=12,
        given=frozenset({"ar", "seed", "no", "steps"}),
    )


def test_defaults_when_no_parameters():
    parsed = parse_prompt("  a   cat \n on a mat ")
    assert parsed.text == "a cat on a mat"
    assert (parsed.aspect, parsed.seed, parsed.steps, parsed.negative) == ((1, 1), None, None, "")


def test_em_dash_and_alias_and_case():
    parsed = parse_prompt("owl —AR 16:9")
    assert parsed.aspect == (16, 9)
    assert parse_prompt("owl --aspect 2:3").aspect == (2, 3)


def test_render_shows_the_prompt_as_interpreted():
    assert parse_prompt("fox --seed 7 --ar 3:2 --no  a ,, b").render() == "fox --ar 3:2 --no a, b --seed 7"


def test_invisible_characters_are_dropped():
    assert parse_prompt("a\u200bb\u202ec").text == "abc"


def test_a_double_dash_inside_a_word_is_text():
    assert parse_prompt("x--seed 3").text == "x--seed 3"


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("--ar 3:2", "empty"),
        ("x" * (MAX_PROMPT_CHARS + 1), "limit is"),
        ("a\x00b", "control"),
        ("x --ar 0:1", "from 1 to"),
        ("x --ar 99999:1", "from 1 to"),
        ("x --ar 5:1", "too extreme"),
        ("x --ar 3x2", "two whole numbers"),
        ("x --ar 1.5:1", "two whole numbers"),
        ("x --seed -1", "whole number"),
        ("x --seed 1e9999", "whole number"),
        ("x --seed 4294967296", "out of range"),
        ("x --seed 99999999999999999999999", "whole number"),
        ("x --steps 0", "out of range"),
        ("x --steps banana", "whole number"),
        ("x --seed", "needs a value"),
        ("x --seed 1 --seed 2", "twice"),
        ("x --foo 3", "Unknown parameter --foo"),
        ("x --" + "z" * 200, "Unknown parameter"),
    ],
)
def test_bad_prompts_get_a_specific_message(prompt, fragment):
    with pytest.raises(PromptError) as caught:
        parse_prompt(prompt)
    message = str(caught.value)
    assert fragment in message
    assert len(message) < 200
