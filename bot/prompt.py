"""The `/imagine` prompt language: text followed by Midjourney-style ``--parameters``.

``parse_prompt`` returns a typed ``ParsedPrompt`` or raises ``PromptError`` whose message names the
parameter, what was wrong and what is allowed; it never raises anything else. Supported here:
``--ar W:H`` (alias ``--aspect``), ``--seed N``, ``--no a, b`` and ``--steps N``. An em dash (``—``),
which phones type for ``--``, works too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
MAX_STEPS = 150
MAX_ASPECT_RATIO = 4.0
"""Widest (or tallest) ratio allowed: beyond 4:1 the short side gets too small for the model."""
MAX_RATIO_TERM = 10_000

_PARAM = re.compile(r"(?:^|(?<=\s))(?:--|—)([A-Za-z][A-Za-z0-9_-]*)")
_WHOLE_NUMBER = re.compile(r"^\d{1,12}$")


class PromptError(ValueError):
    """The prompt cannot be used; ``str(error)`` is a short message meant for the user."""


@dataclass(frozen=True)
class ParsedPrompt:
    text: str
    negative: str = ""
    aspect: tuple[int, int] = (1, 1)
    seed: int | None = None
    steps: int | None = None
    given: frozenset[str] = field(default_factory=frozenset)  # which parameters the user typed

    def render(self) -> str:
        """The prompt as interpreted, in the same language (shown on the result message)."""
        parts = [self.text]
        if self.aspect != (1, 1):
            parts.append(f"--ar {self.aspect[0]}:{self.aspect[1]}")
        if self.negative:
            parts.append(f"--no {self.negative}")
        if self.steps is not None:
            parts.append(f"--steps {self.steps}")
        if self.seed is not None:
            parts.append(f"--seed {self.seed}")
        return " ".join(parts)


def parse_prompt(raw: str) -> ParsedPrompt:
    cleaned = _clean(raw)
    if len(cleaned) > MAX_PROMPT_CHARS:
        raise PromptError(f"Your prompt is {len(cleaned)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    matches = list(_PARAM.finditer(cleaned))
    text = cleaned[: matches[0].start()].strip() if matches else cleaned.strip()
    if not text:
        raise PromptError("Your prompt is empty: describe what to draw before any --parameters.")

    values: dict[str, object] = {}
    for i, match in enumerate(matches):
        name = match.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(cleaned)
        value = cleaned[match.end() : end].strip()
        canonical = _ALIASES.get(name, name)
        parser = _PARSERS.get(canonical)
        if parser is None:
            known = ", ".join(f"--{n}" for n in _PARSERS)
            raise PromptError(f"Unknown parameter --{_shorten(name)}. Known parameters: {known}.")
        if canonical in values:
            raise PromptError(f"--{canonical} is given twice; give it once.")
        if not value:
            raise PromptError(f"--{canonical} needs a value, {_USAGE[canonical]}.")
        values[canonical] = parser(value)

    return ParsedPrompt(
        text=text,
        negative=str(values.get("no", "")),
        aspect=values.get("ar", (1, 1)),  # type: ignore[arg-type]
        seed=values.get("seed"),  # type: ignore[arg-type]
        steps=values.get("steps"),  # type: ignore[arg-type]
        given=frozenset(values),
    )


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
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _whole_number(name: str, value: str, low: int, high: int) -> int:
    if not _WHOLE_NUMBER.match(value):
        raise PromptError(f"--{name} must be a whole number from {low} to {high}, not `{_shorten(value)}`.")
    number = int(value)
    if not low <= number <= high:
        raise PromptError(f"--{name} must be from {low} to {high}; {_shorten(value)} is out of range.")
    return number


def _parse_seed(value: str) -> int:
    return _whole_number("seed", value, 0, MAX_SEED)


def _parse_steps(value: str) -> int:
    return _whole_number("steps", value, 1, MAX_STEPS)


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


_PARSERS: dict[str, Callable[[str], object]] = {
    "ar": _parse_aspect,
    "seed": _parse_seed,
    "no": _parse_negative,
    "steps": _parse_steps,
}
_ALIASES = {"aspect": "ar"}
_USAGE = {
    "ar": "like --ar 3:2",
    "seed": f"a whole number from 0 to {MAX_SEED}",
    "no": "like --no text, watermark",
    "steps": f"a whole number from 1 to {MAX_STEPS}",
}
