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


# --- the full language ------------------------------------------------------------------------------

from bot.prompt import (  # noqa: E402
    DEFAULT_MAX_REPEAT,
    PromptDefaults,
    append_suffix,
    expand_permutations,
    guidance_for_stylize,
    steps_for_quality,
    steps_until_stop,
    stop_fraction,
    strength_for_image_weight,
)
from engine.chaos import TileChaos, chaos_for_tiles  # noqa: E402
from engine.weights import plain_prompts, to_compel  # noqa: E402


def test_parses_every_parameter():
    parsed = parse_prompt(
        "https://a.example/x.png http://b.example/y.jpg a fox::2 snow::-0.5 --chaos 30 --s 250 --q .5"
        " --stop 60 --tile --v SDXL --relax --repeat 3 --iw 1.5 --no blur",
        models=frozenset({"sdxl", "sd15"}),
    )
    assert parsed.image_urls == ("https://a.example/x.png", "http://b.example/y.jpg")
    assert parsed.text == "a fox::2 snow::-0.5"
    assert parsed.parts == (("a fox", 2.0), ("snow", -0.5))
    assert (parsed.chaos, parsed.stylize, parsed.quality, parsed.stop) == (30, 250, 0.5, 60)
    assert (parsed.tile, parsed.model, parsed.mode, parsed.repeat, parsed.image_weight) == (
        True, "sdxl", "relax", 3, 1.5,
    )  # fmt: skip
    assert parsed.given == {
        "chaos",
        "stylize",
        "quality",
        "stop",
        "tile",
        "model",
        "relax",
        "repeat",
        "iw",
        "no",
    }


def test_not_typed_means_none_so_defaults_can_apply():
    parsed = parse_prompt("a fox")
    assert (parsed.chaos, parsed.stylize, parsed.quality, parsed.stop, parsed.model, parsed.mode) == (
        None,
    ) * 6
    assert (parsed.tile, parsed.repeat, parsed.image_weight, parsed.image_urls, parsed.parts) == (
        False,
        1,
        None,
        (),
        (),
    )


@pytest.mark.parametrize(
    ("value", "quality"),
    [(".25", 0.25), ("0.25", 0.25), (".5", 0.5), ("0.50", 0.5), ("1", 1.0), ("1.0", 1.0), ("2", 2.0)],
)
def test_quality_spellings(value, quality):
    assert parse_prompt(f"x --q {value}").quality == quality
    assert parse_prompt(f"x --quality {value}").quality == quality


def test_aliases():
    assert parse_prompt("x --c 5").chaos == 5
    assert parse_prompt("x --s 5").stylize == 5
    assert parse_prompt("x --v niji").model == "niji"
    assert parse_prompt("x —fast").mode == "fast"


def test_render_is_canonical_and_round_trips():
    parsed = parse_prompt(
        "https://a.example/x.png fox::2 owl --q 0.50 --s 7 --v m1 --c 3 --fast --iw 2 --seed 1"
    )
    assert parsed.render() == (
        "https://a.example/x.png fox::2 owl --quality .5 --chaos 3 --stylize 7 --iw 2 --model m1 --fast --seed 1"
    )
    assert parse_prompt(parsed.render()) == parsed


def test_render_shows_what_quality_became():
    assert parse_prompt("fox --q .5").render(base_steps=30) == "fox --steps 15"
    assert parse_prompt("fox --q 2").render(base_steps=30) == "fox --steps 60"


def test_user_defaults_fill_only_what_the_prompt_does_not_say():
    defaults = PromptDefaults(model="sd15", stylize=500, quality=2.0, mode="relax")
    resolved = parse_prompt("fox --s 50 --fast").with_defaults(defaults)
    assert (resolved.model, resolved.stylize, resolved.quality, resolved.mode) == ("sd15", 50, 2.0, "fast")
    assert (
        parse_prompt("fox --steps 9").with_defaults(defaults).quality is None
    )  # --steps beats a default quality
    assert parse_prompt("fox").with_defaults(PromptDefaults()) == parse_prompt("fox")


def test_prefer_suffix_fills_parameters_the_prompt_lacks():
    assert append_suffix("fox --ar 2:3", "--ar 16:9 --s 300 --relax") == "fox --ar 2:3 --s 300 --relax"
    assert append_suffix("fox --fast", "--relax --tile") == "fox --fast --tile"
    assert append_suffix("fox", "") == "fox"
    assert parse_prompt(append_suffix("fox --stylize 5", "--s 300")).stylize == 5


def test_multi_prompt_weights():
    assert parse_prompt("hot:: dog").parts == (("hot", 1.0), ("dog", 1.0))
    assert parse_prompt("hot::2 dog").parts == (("hot", 2.0), ("dog", 1.0))
    assert parse_prompt("space ship::-0.5 cat::1.5").parts == (("space ship", -0.5), ("cat", 1.5))
    assert parse_prompt("cat::2").parts == (("cat", 2.0),)
    assert parse_prompt("cat::").parts == (("cat", 1.0),)
    assert parse_prompt("cat").weighted_parts == (("cat", 1.0),)


def test_engine_prompts_for_engines_without_weighting():
    parsed = parse_prompt("fox::2 snow::-0.5 forest --no blur")
    assert parsed.engine_prompt == "fox, forest"
    assert parsed.engine_negative == "blur, snow"
    assert parse_prompt("a fox").engine_prompt == "a fox"


def test_compel_syntax():
    assert to_compel([("a fox", 1.0)]) == "a fox"
    assert to_compel([("a", 2.0), ("b", -0.5)]) == '("a", "b").blend(2, -0.5)'
    assert (
        to_compel([('say "hi" (loud)', 1.0), ("x+", 1.0)]) == '("say \\"hi\\" \\(loud\\)", "x +").blend(1, 1)'
    )
    assert parse_prompt("a::3 b").compel_prompt() == '("a", "b").blend(3, 1)'
    assert to_compel([("a", 0.000001), ("b", 1.0)]) == '("a", "b").blend(0.000001, 1)'  # no exponents


def test_plain_fallback_moves_negative_weights_to_the_negative_prompt():
    assert plain_prompts("x", "blur", ()) == ("x", "blur")
    assert plain_prompts("ignored", "blur", [("fox", 2.0), ("snow", -0.5), ("sky", 1.0)]) == (
        "fox, sky",
        "blur, snow",
    )


def test_stylize_to_guidance():
    assert guidance_for_stylize(None) == guidance_for_stylize(100) == 7.0
    assert guidance_for_stylize(0) == 11.0 and guidance_for_stylize(1000) == 3.0
    values = [guidance_for_stylize(s) for s in range(0, 1001, 50)]
    assert values == sorted(values, reverse=True)


def test_quality_to_steps():
    assert [steps_for_quality(q, 30) for q in (0.25, 0.5, 1.0, 2.0, None)] == [8, 15, 30, 60, 30]
    assert steps_for_quality(2.0, 100) == 150 and steps_for_quality(0.25, 1) == 1


def test_stop_to_steps():
    assert stop_fraction(None) == 1.0 and stop_fraction(10) == 0.1
    assert (
        steps_until_stop(50, 30) == 15 and steps_until_stop(10, 4) == 1 and steps_until_stop(None, 30) == 30
    )


def test_image_weight_to_strength():
    assert strength_for_image_weight(None) == strength_for_image_weight(1) == 0.6
    assert strength_for_image_weight(0) == 0.9 and strength_for_image_weight(3) == 0.2
    assert strength_for_image_weight(2) == 0.4


def test_chaos_spreads_the_tiles():
    assert chaos_for_tiles(None, 7.0) == (TileChaos(7.0, 0.0),) * 4
    assert chaos_for_tiles(100, 7.0) == (
        TileChaos(4.0, 0.0), TileChaos(6.0, 0.3), TileChaos(8.0, 0.3), TileChaos(10.0, 0.3),
    )  # fmt: skip
    half = chaos_for_tiles(50, 7.0)
    assert [t.guidance for t in half] == [5.5, 6.5, 7.5, 8.5] and half[1].embedding_noise == 0.15
    assert min(t.guidance for t in chaos_for_tiles(100, 2.0)) == 1.5
    assert min(t.guidance for t in chaos_for_tiles(100, 1.2)) == 1.2  # the floor never raises a low base
    off = chaos_for_tiles(100, 1.0)  # guidance off stays off: only the embedding noise spreads
    assert [t.guidance for t in off] == [1.0] * 4 and off[3].embedding_noise == 0.3
    assert chaos_for_tiles(100, 7.0, tiles=1) == (TileChaos(7.0, 0.0),)


def test_repeat_limit_is_passed_in():
    assert parse_prompt("x --repeat 8", max_repeat=8).repeat == 8
    with pytest.raises(PromptError, match=f"--repeat must be from 1 to {DEFAULT_MAX_REPEAT} on your plan"):
        parse_prompt(f"x --repeat {DEFAULT_MAX_REPEAT + 1}")


def test_iw_with_an_attachment():
    assert parse_prompt("x --iw .5", attachments=1).image_weight == 0.5


def test_models_are_checked_against_the_configured_aliases():
    assert parse_prompt("x --model SD15", models=frozenset({"sd15"})).model == "sd15"
    with pytest.raises(PromptError, match="--model `sdxl` is not a model here; available: sd15"):
        parse_prompt("x --model sdxl", models=frozenset({"sd15"}))


# --- permutations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expanded"),
    [
        ("a cat", ["a cat"]),
        ("a {red, green} bird", ["a red bird", "a green bird"]),
        ("{a, b} {c, d}", ["a c", "a d", "b c", "b d"]),
        ("x {a, {b, c}}", ["x a", "x b", "x c"]),
        ("x {a, {b, c} d}", ["x a", "x b d", "x c d"]),
        ("x {salt\\, pepper, honey}", ["x salt, pepper", "x honey"]),
        ("a \\{literal\\} b", ["a {literal} b"]),
        ("a {red,} bird", ["a red bird", "a bird"]),
        ("fox --ar {1:1, 2:3}", ["fox --ar 1:1", "fox --ar 2:3"]),
        ("x {}", ["x"]),
    ],
)
def test_permutations(raw, expanded):
    assert expand_permutations(raw, 10) == expanded


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("a {red, green", "never closed"),
        ("a red}", "no matching"),
        ("{a,b} {c,d} {e,f} {g,h}", "more than 10 prompts; the limit is 10"),
        ("{a,b}" * 200, "more than 10"),
        ("{" * 20 + "}" * 20, "nest too deep"),
    ],
)
def test_bad_permutations(raw, fragment):
    with pytest.raises(PromptError) as caught:
        expand_permutations(raw, 10)
    assert fragment in str(caught.value)
