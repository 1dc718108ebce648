"""``::`` multi-prompt weights for engines (torch-free): compel's blend syntax, or a plain fallback.

A request's ``prompt_parts`` are ``(text, weight)`` pairs whose weights sum to more than 0; negative
weights push away from a concept. Engines that weight prompts (the local engine on SD 1.x/2.x models,
through compel) encode ``to_compel(parts)``; engines that cannot use ``plain_prompts``: the positively
weighted parts become the prompt and the negatively weighted ones join the negative prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

WeightedParts = Sequence[tuple[str, float]]


def to_compel(parts: WeightedParts) -> str:
    """``::`` parts as a compel prompt string.

    One part with weight 1 is the text itself (escaped); several parts become compel's blend,
    ``("a", "b").blend(2, -0.5)``: compel encodes each quoted prompt on its own and takes the weighted
    sum of the embeddings, the weights divided by their (positive) sum. Text is escaped so that a user's
    ``"``, ``(``, ``)`` or a trailing ``+``/``-`` cannot become compel syntax: quotes and parentheses are
    backslash-escaped, backslashes become spaces, and ``+``/``-`` at the end of a word are split off.
    """
    items = [(_escape(text), float(weight)) for text, weight in parts]
    if len(items) == 1 and items[0][1] == 1.0:
        return items[0][0]
    quoted = ", ".join(f'"{text}"' for text, _ in items)
    weights = ", ".join(_number(weight) for _, weight in items)
    return f"({quoted}).blend({weights})"


def plain_prompts(prompt: str, negative: str, parts: WeightedParts) -> tuple[str, str]:
    """``(prompt, negative)`` for an engine without prompt weighting."""
    if not parts:
        return prompt, negative
    positive = ", ".join(text for text, weight in parts if weight > 0)
    negatives = [text for text, weight in parts if weight < 0]
    return positive, ", ".join(t for t in [negative, *negatives] if t)


def _escape(text: str) -> str:
    text = text.replace("\\", " ").replace('"', '\\"').replace("(", "\\(").replace(")", "\\)")
    return re.sub(r"(?<=\S)([+-]+)(?=\s|$)", r" \1", text)


def _number(value: float) -> str:
    """Fixed-point, as compel's parser reads no exponents (``1e-06``)."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
