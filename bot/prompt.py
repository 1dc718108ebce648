"""The `/imagine` prompt language: image links, text, then Midjourney-style ``--parameters``.

``parse_prompt`` returns a typed ``ParsedPrompt`` or raises ``PromptError`` whose message names the
parameter, what was wrong and what is allowed; it never raises anything else (a hypothesis test fuzzes
this). ``expand_permutations`` runs *before* parsing and turns ``{a, b}`` into several raw prompts.

The language::

    [https://image.link ...] text [::weight text ...] [--parameter value ...]

============================  =====================================================================
``--ar W:H`` / ``--aspect``   whole numbers, at most ``MAX_ASPECT_RATIO``:1 either way
``--seed N``                  0 .. 4294967295
``--no a, b``                 negative prompt
``--steps N``                 1 .. ``MAX_STEPS`` (exclusive with ``--quality``)
``--chaos`` / ``--c``         0 .. 100: how different the four tiles are (``engine.chaos``)
``--stylize`` / ``--s``       0 .. 1000 (default 100): mapped to guidance (``guidance_for_stylize``)
``--quality`` / ``--q``       .25, .5, 1 or 2 (also 0.25, 1.0 ...): a steps multiplier (``steps_for_quality``)
``--stop``                    10 .. 100: finish at that percentage of the steps (``steps_until_stop``)
``--tile``                    flag: seamless texture
``--model`` / ``--v``         a configured model alias (``models=``), ``MODEL_NAME_PATTERN`` always
``--fast`` / ``--relax``      flags, at most one of them
``--repeat N``                1 .. ``max_repeat`` (the tier's limit, passed in)
``--iw W``                    0 .. 3 (default 1), needs an image: mapped by ``strength_for_image_weight``
``a::2 b::-0.5``              multi-prompt weights; the total must be above 0 (``ParsedPrompt.parts``)
============================  =====================================================================

An em dash (``—``), which phones type for ``--``, works too. Parameter names are case-insensitive.

Unicode (PRODUCT.md §7): newlines and tabs become spaces; invisible format characters (zero-width
spaces/joiners, RTL/LTR marks and overrides, BOM) are dropped; control, private-use, surrogate and
unassigned characters are refused; prompts longer than ``MAX_PROMPT_CHARS`` (after that cleaning) are
refused with their length, and raw input longer than ``MAX_RAW_CHARS`` is refused before any work.

Precedence of values (see ``PromptDefaults``): a parameter typed in the prompt wins over the user's
``/settings`` default, which wins over the server default (the ``DEFAULT_*`` constants here and the
engine's configured steps). ``/prefer suffix`` parameters (``append_suffix``) fill in only parameters
that the prompt does not already give.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from engine.base import MAX_SEED, MAX_STEPS
from engine.chaos import MAX_CHAOS
from engine.weights import plain_prompts, to_compel
from storage.models import Mode

MAX_RAW_CHARS = 20_000
"""Raw input above this is refused before cleaning (Discord itself caps an option at 6,000)."""
MAX_PROMPT_CHARS = 1000
MAX_ASPECT_RATIO = 4.0
"""Widest (or tallest) ratio allowed: beyond 4:1 the short side gets too small for the model."""
MAX_RATIO_TERM = 10_000
MAX_IMAGE_URLS = 5
MAX_URL_CHARS = 2048
MAX_PARTS = 10
"""Most ``::`` parts in one prompt."""
MAX_PART_WEIGHT = 100.0
DEFAULT_MAX_REPEAT = 4
MAX_PERMUTATION_DEPTH = 8

DEFAULT_STYLIZE = 100
DEFAULT_QUALITY = 1.0
DEFAULT_STOP = 100
DEFAULT_IMAGE_WEIGHT = 1.0
QUALITY_VALUES = (0.25, 0.5, 1.0, 2.0)

MODEL_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
"""A model alias: lower-case letters, digits, ``.``, ``_``, ``-``; at most 40; no path or shell syntax."""


_PARAM = re.compile(r"(?:^|(?<=\s))(?:--|—)([A-Za-z][A-Za-z0-9_-]*)")
_WHOLE_NUMBER = re.compile(r"^\d{1,12}$")
_DECIMAL = re.compile(r"^-?(?:\d{1,6}(?:\.\d{0,6})?|\.\d{1,6})$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,15}://")
_WEIGHT_AFTER_SEPARATOR = re.compile(r"^\s*(-?(?:\d{1,6}(?:\.\d{0,6})?|\.\d{1,6}))(?=\s|$)")


class PromptError(ValueError):
    """The prompt cannot be used; ``str(error)`` is a short message meant for the user."""


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt as understood. ``None`` means "not typed": the user's or the server's default applies.

    ``text`` is the prompt text as typed (image links removed, ``::`` weights kept, so ``render``
    round-trips); ``parts`` holds the ``::`` multi-prompt split as ``(text, weight)`` pairs and is empty
    when the prompt has no ``::``. Engines use ``engine_prompt`` (plain) or ``compel_prompt`` (weighted).
    """

    text: str
    negative: str = ""
    aspect: tuple[int, int] = (1, 1)
    seed: int | None = None
    steps: int | None = None
    given: frozenset[str] = field(default_factory=frozenset)  # which parameters the user typed (canonical)
    chaos: int | None = None
    stylize: int | None = None
    quality: float | None = None
    stop: int | None = None
    tile: bool = False
    model: str | None = None
    mode: Mode | None = None
    repeat: int = 1
    image_weight: float | None = None
    image_urls: tuple[str, ...] = ()
    parts: tuple[tuple[str, float], ...] = ()

    @property
    def weighted_parts(self) -> tuple[tuple[str, float], ...]:
        """``parts``, or the whole text with weight 1 when the prompt has no ``::``."""
        return self.parts or ((self.text, 1.0),)

    @property
    def engine_prompt(self) -> str:
        """Plain text for engines without prompt weighting: the positively weighted parts, joined."""
        return plain_prompts(self.text, self.negative, self.parts)[0]

    @property
    def engine_negative(self) -> str:
        """The negative prompt for engines without weighting: ``--no`` plus negatively weighted parts."""
        return plain_prompts(self.text, self.negative, self.parts)[1]

    def compel_prompt(self) -> str:
        """The positive prompt in compel's syntax (``engine.weights.to_compel``)."""
        return to_compel(self.weighted_parts)

    def render(self, *, base_steps: int | None = None) -> str:
        """The prompt as interpreted, in the same language (shown on the result message).

        Canonical parameter names and values (``--q 0.50`` shows as ``--quality .5``, ``--v x`` as
        ``--model x``), so ``parse_prompt(p.render()) == p`` for prompts without aliases. With
        ``base_steps`` (the engine's default steps) a typed ``--quality`` is shown as the ``--steps``
        it became, so users see what ``--q .5`` did.
        """
        parts = [*self.image_urls, self.text]
        if self.aspect != (1, 1):
            parts.append(f"--ar {self.aspect[0]}:{self.aspect[1]}")
        if self.negative:
            parts.append(f"--no {self.negative}")
        if self.quality is not None and base_steps is not None:
            parts.append(f"--steps {steps_for_quality(self.quality, base_steps)}")
        elif self.quality is not None:
            parts.append(f"--quality {_format_quality(self.quality)}")
        if self.steps is not None:
            parts.append(f"--steps {self.steps}")
        if self.chaos is not None:
            parts.append(f"--chaos {self.chaos}")
        if self.stylize is not None:
            parts.append(f"--stylize {self.stylize}")
        if self.stop is not None:
            parts.append(f"--stop {self.stop}")
        if self.image_weight is not None:
            parts.append(f"--iw {_format_number(self.image_weight)}")
        if self.tile:
            parts.append("--tile")
        if self.model is not None:
            parts.append(f"--model {self.model}")
        if self.mode is not None:
            parts.append(f"--{self.mode}")
        if self.repeat != 1:
            parts.append(f"--repeat {self.repeat}")
        if self.seed is not None:
            parts.append(f"--seed {self.seed}")
        return " ".join(parts)

    def with_defaults(self, defaults: PromptDefaults) -> ParsedPrompt:
        """Fill parameters the user did not type from their ``/settings`` (the prompt wins)."""
        return replace(
            self,
            model=self.model if self.model is not None else defaults.model,
            stylize=self.stylize if self.stylize is not None else defaults.stylize,
            quality=self.quality if self.quality is not None or self.steps is not None else defaults.quality,
            mode=self.mode if self.mode is not None else defaults.mode,
        )


@dataclass(frozen=True)
class PromptDefaults:
    """A user's ``/settings`` defaults; ``None`` leaves the server default."""

    model: str | None = None
    stylize: int | None = None
    quality: float | None = None
    mode: Mode | None = None


def parse_prompt(
    raw: str,
    *,
    models: frozenset[str] | None = None,
    max_repeat: int = DEFAULT_MAX_REPEAT,
    attachments: int = 0,
) -> ParsedPrompt:
    """Parse one prompt (after ``expand_permutations``).

    ``models``: the configured model aliases (``--model`` must be one; ``None`` checks only the name
    pattern). ``max_repeat``: the tier's ``--repeat`` limit. ``attachments``: how many images the user
    attached (``--iw`` needs an image link or an attachment).
    """
    if not isinstance(raw, str):
        raise PromptError("Your prompt must be text.")
    if len(raw) > MAX_RAW_CHARS:
        raise PromptError(f"Your prompt is {len(raw)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    cleaned = _clean(raw)
    if len(cleaned) > MAX_PROMPT_CHARS:
        raise PromptError(f"Your prompt is {len(cleaned)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    matches = list(_PARAM.finditer(cleaned))
    head = cleaned[: matches[0].start()].strip() if matches else cleaned.strip()
    image_urls, text = _split_image_urls(head)
    if not text:
        if image_urls:
            raise PromptError(
                "Your prompt has image links but no text: describe what to draw after the links."
            )
        raise PromptError("Your prompt is empty: describe what to draw before any --parameters.")

    values: dict[str, object] = {}
    for i, match in enumerate(matches):
        name = match.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(cleaned)
        value = cleaned[match.end() : end].strip()
        canonical = _ALIASES.get(name, name)
        if canonical not in _PARSERS:
            raise PromptError(_unknown_parameter(name))
        if canonical in values:
            raise PromptError(f"--{canonical} is given twice; give it once.")
        if canonical in _FLAGS:
            if value:
                raise PromptError(
                    f"--{canonical} takes no value (found `{_shorten(value)}`); put text before the parameters."
                )
            values[canonical] = True
            continue
        if not value:
            raise PromptError(f"--{canonical} needs a value, {_USAGE[canonical]}.")
        if canonical == "model":
            values[canonical] = _parse_model(value, models)
        elif canonical == "repeat":
            values[canonical] = _whole_number("repeat", value, 1, max(1, max_repeat), "on your plan")
        else:
            values[canonical] = _PARSERS[canonical](value)

    if "fast" in values and "relax" in values:
        raise PromptError("--fast and --relax can't be used together; pick one.")
    if "steps" in values and "quality" in values:
        raise PromptError("--steps and --quality both set the steps; give only one of them.")
    if "iw" in values and not image_urls and attachments <= 0:
        raise PromptError(
            "--iw sets the weight of an image prompt: start the prompt with an image link or attach one."
        )
    parts = _split_weights(text)

    mode = Mode.FAST if "fast" in values else Mode.RELAX if "relax" in values else None
    return ParsedPrompt(
        text=text,
        negative=str(values.get("no", "")),
        aspect=values.get("ar", (1, 1)),  # type: ignore[arg-type]
        seed=values.get("seed"),  # type: ignore[arg-type]
        steps=values.get("steps"),  # type: ignore[arg-type]
        given=frozenset(values),
        chaos=values.get("chaos"),  # type: ignore[arg-type]
        stylize=values.get("stylize"),  # type: ignore[arg-type]
        quality=values.get("quality"),  # type: ignore[arg-type]
        stop=values.get("stop"),  # type: ignore[arg-type]
        tile=bool(values.get("tile", False)),
        model=values.get("model"),  # type: ignore[arg-type]
        mode=mode,
        repeat=values.get("repeat", 1),  # type: ignore[arg-type]
        image_weight=values.get("iw"),  # type: ignore[arg-type]
        image_urls=image_urls,
        parts=parts,
    )


def append_suffix(raw: str, suffix: str) -> str:
    """Apply a ``/prefer suffix``: its parameters are appended unless the prompt already gives them.

    Only the suffix's ``--parameters`` are used (text before them is ignored); ``--fast``/``--relax``
    in the suffix yield to either of them in the prompt. The result still goes through ``parse_prompt``.
    """
    given = {_ALIASES.get(m.group(1).lower(), m.group(1).lower()) for m in _PARAM.finditer(_clean(raw))}
    if given & {"fast", "relax"}:
        given |= {"fast", "relax"}
    cleaned = _clean(suffix)
    matches = list(_PARAM.finditer(cleaned))
    kept = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(cleaned)
        name = match.group(1).lower()
        if _ALIASES.get(name, name) not in given:
            kept.append(cleaned[match.start() : end].strip())
    return " ".join([raw.rstrip(), *kept]) if kept else raw


# ---------------------------------------------------------------------------------------------------
# Parameter → engine value mappings. Pure, monotone, documented; the engine and jobs service use them.


def guidance_for_stylize(stylize: int | None) -> float:
    """``--stylize`` 0..1000 → classifier-free guidance scale, 11.0 .. 3.0 (default 100 → 7.0).

    Midjourney's stylize trades literal prompt-following for the model's own aesthetics, so guidance
    *falls* as stylize rises: piecewise linear through (0, 11.0), (100, 7.0) and (1000, 3.0). 7.0 is
    the engine's usual default, so an unstyled prompt renders as before.
    """
    s = DEFAULT_STYLIZE if stylize is None else min(max(stylize, 0), 1000)
    if s <= 100:
        return round(11.0 - 0.04 * s, 3)
    return round(7.0 - 4.0 * (s - 100) / 900, 3)


def steps_for_quality(quality: float | None, base_steps: int) -> int:
    """``--quality`` → denoising steps: ``base_steps`` times the quality (.25, .5, 1, 2), at least 1,
    at most ``MAX_STEPS``. With base 30: .25 → 8, .5 → 15, 1 → 30, 2 → 60."""
    q = DEFAULT_QUALITY if quality is None else quality
    return max(1, min(MAX_STEPS, math.ceil(base_steps * q)))


def steps_until_stop(stop: int | None, steps: int) -> int:
    """``--stop`` 10..100 → how many of ``steps`` to run before decoding (ceil(steps × stop/100), ≥ 1).

    The engine stops the denoising loop after that step and decodes its current x0 estimate, so the
    image is softer/less finished, like Midjourney's ``--stop``. ``stop_fraction`` is the same as a
    fraction.
    """
    return max(1, math.ceil(steps * stop_fraction(stop)))


def stop_fraction(stop: int | None) -> float:
    """``--stop`` as the fraction of the steps to run: 10 → 0.1, 100 (the default) → 1.0."""
    return (DEFAULT_STOP if stop is None else min(max(stop, 10), 100)) / 100


def strength_for_image_weight(image_weight: float | None) -> float:
    """``--iw`` 0..3 → img2img strength (how much of the image is re-imagined), 0.9 .. 0.2.

    A higher image weight keeps more of the image, so strength falls: piecewise linear through
    (0, 0.9), (1, 0.6) (the default, the engine's usual img2img strength) and (3, 0.2).
    """
    w = DEFAULT_IMAGE_WEIGHT if image_weight is None else min(max(image_weight, 0.0), 3.0)
    if w <= 1:
        return round(0.9 - 0.3 * w, 4)
    return round(0.6 - 0.2 * (w - 1), 4)


# ---------------------------------------------------------------------------------------------------
# {a, b} permutations


@dataclass
class _Group:
    options: list[list[str | _Group]]


def expand_permutations(raw: str, limit: int) -> list[str]:
    """Expand ``{a, b}`` groups into every combination, in order: ``"a {red, green} {cat, dog}"`` →
    ``["a red cat", "a red dog", "a green cat", "a green dog"]``.

    Groups nest (``{a, {b, c}}`` = ``{a, b, c}``), options are stripped (an empty option drops the
    group), and ``\\,`` ``\\{`` ``\\}`` are literal (unescaped in the results, also outside groups).
    Groups may appear anywhere, parameters included (``--ar {1:1, 2:3}``). Raises ``PromptError`` for
    an unclosed ``{``, a stray ``}``, nesting deeper than ``MAX_PERMUTATION_DEPTH``, or more than
    ``limit`` results (counted before expanding anything).
    """
    if not isinstance(raw, str):
        raise PromptError("Your prompt must be text.")
    if len(raw) > MAX_RAW_CHARS:
        raise PromptError(f"Your prompt is {len(raw)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    root: list[str | _Group] = []
    stack: list[tuple[_Group, list[str | _Group]]] = []  # (group, the sequence the group sits in)
    current = root
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            current.append("".join(buffer))
            buffer.clear()

    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\\" and i + 1 < len(raw) and raw[i + 1] in ",{}":
            buffer.append(raw[i + 1])
            i += 2
            continue
        if char == "{":
            flush()
            if len(stack) >= MAX_PERMUTATION_DEPTH:
                raise PromptError(
                    f"Permutations nest too deep: at most {MAX_PERMUTATION_DEPTH} levels of {{ }}."
                )
            group = _Group(options=[[]])
            current.append(group)
            stack.append((group, current))
            current = group.options[0]
        elif char == "," and stack:
            flush()
            group = stack[-1][0]
            group.options.append([])
            current = group.options[-1]
        elif char == "}":
            if not stack:
                raise PromptError("Permutations: a `}` has no matching `{` (write \\} for a literal brace).")
            flush()
            _, current = stack.pop()
        else:
            buffer.append(char)
        i += 1
    if stack:
        raise PromptError(
            "Permutations: a `{` is never closed; close it with `}` (or write \\{ for a literal brace)."
        )
    flush()

    cap = max(0, limit)
    count = _count(root, cap + 1)
    if count > cap:
        raise PromptError(f"Your {{ }} permutations make more than {cap} prompts; the limit is {cap}.")
    return [re.sub(r" {2,}", " ", text).strip() for text in _expand(root)]


def _count(sequence: list[str | _Group], cap: int) -> int:
    total = 1
    for item in sequence:
        if isinstance(item, _Group):
            options = 0
            for option in item.options:
                options = min(cap, options + _count(option, cap))
            total = min(cap, total * options)
    return total


def _expand(sequence: list[str | _Group]) -> list[str]:
    results = [""]
    for item in sequence:
        if isinstance(item, _Group):
            choices = [text.strip() for option in item.options for text in _expand(option)]
        else:
            choices = [item]
        results = [prefix + choice for prefix in results for choice in choices]
    return results


# ---------------------------------------------------------------------------------------------------
# Helpers


def _clean(raw: str) -> str:
    """Whitespace and newlines become spaces; invisible format characters (zero-width, RTL marks) go."""
    out = []
    for char in raw:
        category = unicodedata.category(char)
        if char.isspace():
            out.append(" ")
        elif category == "Cf":
            continue
        elif category in ("Cc", "Cs", "Co", "Cn"):
            raise PromptError("Your prompt contains control or unassigned characters; remove them and retry.")
        else:
            out.append(char)
    return re.sub(r" {2,}", " ", "".join(out)).strip()


def _shorten(text: str, limit: int = 24) -> str:
    """A piece of user input safe to quote in a message: short, and without backticks."""
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else str(value)


def _format_quality(value: float) -> str:
    return {0.25: ".25", 0.5: ".5", 1.0: "1", 2.0: "2"}.get(value, _format_number(value))


def _unknown_parameter(name: str) -> str:
    shown = _shorten(name)
    close = difflib.get_close_matches(name, [*_PARSERS, *_ALIASES], n=1, cutoff=0.75)
    if close:
        return f"Unknown parameter --{shown}; did you mean --{close[0]}?"
    return f"Unknown parameter --{shown}. Known parameters: {' '.join('--' + n for n in _PARSERS)}."


def _whole_number(name: str, value: str, low: int, high: int, where: str = "") -> int:
    suffix = f" {where}" if where else ""
    if not _WHOLE_NUMBER.match(value):
        raise PromptError(
            f"--{name} must be a whole number from {low} to {high}{suffix}, not `{_shorten(value)}`."
        )
    number = int(value)
    if not low <= number <= high:
        raise PromptError(
            f"--{name} must be from {low} to {high}{suffix}; {_shorten(value)} is out of range."
        )
    return number


def _decimal(name: str, value: str, low: float, high: float) -> float:
    if not _DECIMAL.match(value):
        raise PromptError(f"--{name} must be a number from {low:g} to {high:g}, not `{_shorten(value)}`.")
    number = float(value)
    if not low <= number <= high:
        raise PromptError(f"--{name} must be from {low:g} to {high:g}; {_shorten(value)} is out of range.")
    return number


def _parse_seed(value: str) -> int:
    return _whole_number("seed", value, 0, MAX_SEED)


def _parse_steps(value: str) -> int:
    return _whole_number("steps", value, 1, MAX_STEPS)


def _parse_chaos(value: str) -> int:
    return _whole_number("chaos", value, 0, MAX_CHAOS)


def _parse_stylize(value: str) -> int:
    return _whole_number("stylize", value, 0, 1000)


def _parse_stop(value: str) -> int:
    return _whole_number("stop", value, 10, 100)


def _parse_image_weight(value: str) -> float:
    return _decimal("iw", value, 0.0, 3.0)


def _parse_quality(value: str) -> float:
    allowed = "--quality must be one of .25, .5, 1 or 2"
    if not _DECIMAL.match(value) or value.startswith("-"):
        raise PromptError(f"{allowed}, not `{_shorten(value)}`.")
    number = float(value)
    if number not in QUALITY_VALUES:
        raise PromptError(f"{allowed}; {_shorten(value)} is not one of them.")
    return number


def _parse_aspect(value: str) -> tuple[int, int]:
    usage = f"--ar takes two whole numbers like 3:2 (at most {MAX_ASPECT_RATIO:g}:1 either way)"
    match = re.fullmatch(r"(\d{1,6})\s*:\s*(\d{1,6})", value)
    if not match:
        raise PromptError(f"{usage}, not `{_shorten(value)}`.")
    width, height = int(match.group(1)), int(match.group(2))
    if width == 0 or height == 0 or width > MAX_RATIO_TERM or height > MAX_RATIO_TERM:
        raise PromptError(f"{usage}; both numbers must be from 1 to {MAX_RATIO_TERM}.")
    if max(width / height, height / width) > MAX_ASPECT_RATIO:
        raise PromptError(f"{usage}; {width}:{height} is too extreme.")
    return width, height


def _parse_negative(value: str) -> str:
    terms = [term.strip() for term in value.split(",")]
    return ", ".join(term for term in terms if term)


def _parse_model(value: str, models: frozenset[str] | None) -> str:
    name = value.lower()
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise PromptError(
            "--model takes a model name of letters, digits, '.', '_' or '-' (at most 40 characters); "
            "/settings lists the models."
        )
    if models is not None and name not in {m.lower() for m in models}:
        available = ", ".join(sorted(models)[:10]) or "none configured"
        raise PromptError(f"--model `{name}` is not a model here; available: {_shorten(available, 120)}.")
    return name


def _split_image_urls(head: str) -> tuple[tuple[str, ...], str]:
    """Leading whitespace-separated links are image prompts; the rest is the text."""
    words = head.split(" ")
    urls: list[str] = []
    while words and _SCHEME.match(words[0]):
        word = words.pop(0)
        scheme = word.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise PromptError(
                f"Image links must start with http:// or https://, not {_shorten(scheme, 16)}://."
            )
        if len(word) > MAX_URL_CHARS:
            raise PromptError(f"An image link is {len(word)} characters long; the limit is {MAX_URL_CHARS}.")
        try:
            parts = urlsplit(word)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            host = None
        if not host:
            raise PromptError(f"The image link `{_shorten(word, 60)}` is not a valid web address.")
        if parts.username is not None or parts.password is not None:
            raise PromptError("Image links must not contain a user name or password.")
        urls.append(word)
        if len(urls) > MAX_IMAGE_URLS:
            raise PromptError(f"At most {MAX_IMAGE_URLS} image links may start a prompt.")
    return tuple(urls), " ".join(words).strip()


def _split_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``a::2 b::-0.5 c`` → (("a", 2), ("b", -0.5), ("c", 1)); () when there is no ``::``."""
    if "::" not in text:
        return ()
    chunks = text.split("::")
    parts: list[tuple[str, float]] = []
    pending = chunks[0].strip()
    for chunk in chunks[1:]:
        match = _WEIGHT_AFTER_SEPARATOR.match(chunk)
        weight = 1.0
        if match:
            weight = float(match.group(1))
            chunk = chunk[match.end() :]
        if not pending:
            raise PromptError("Multi-prompt: each `::` must follow some text, like `hot dog::2 bun::1`.")
        if abs(weight) > MAX_PART_WEIGHT:
            raise PromptError(
                f"Multi-prompt weights (::) must be from -{MAX_PART_WEIGHT:g} to {MAX_PART_WEIGHT:g}; "
                f"{_shorten(match.group(1) if match else '')} is out of range."
            )
        parts.append((pending, weight))
        pending = chunk.strip()
    if pending:
        parts.append((pending, 1.0))
    if len(parts) > MAX_PARTS:
        raise PromptError(f"Multi-prompt: at most {MAX_PARTS} `::` parts, not {len(parts)}.")
    total = round(sum(weight for _, weight in parts), 6) + 0.0  # no "-0"
    if total <= 0:
        raise PromptError(
            f"Multi-prompt weights (::) add up to {_format_number(total)}; the total must be above 0."
        )
    return tuple(parts)


_PARSERS: dict[str, Callable[[str], object]] = {
    "ar": _parse_aspect,
    "seed": _parse_seed,
    "no": _parse_negative,
    "steps": _parse_steps,
    "chaos": _parse_chaos,
    "stylize": _parse_stylize,
    "quality": _parse_quality,
    "stop": _parse_stop,
    "tile": bool,
    "model": str,
    "fast": bool,
    "relax": bool,
    "repeat": str,
    "iw": _parse_image_weight,
}
_FLAGS = frozenset({"tile", "fast", "relax"})
_ALIASES = {"aspect": "ar", "c": "chaos", "s": "stylize", "q": "quality", "v": "model", "version": "model"}
_USAGE = {
    "ar": "like --ar 3:2",
    "seed": f"a whole number from 0 to {MAX_SEED}",
    "no": "like --no text, watermark",
    "steps": f"a whole number from 1 to {MAX_STEPS}",
    "chaos": "a whole number from 0 to 100",
    "stylize": "a whole number from 0 to 1000",
    "quality": "one of .25, .5, 1 or 2",
    "stop": "a whole number from 10 to 100",
    "model": "a model name (see /settings)",
    "repeat": "a whole number like --repeat 2",
    "iw": "a number from 0 to 3",
}
