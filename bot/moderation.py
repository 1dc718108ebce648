"""Banned words: a matcher that sees through case, spacing, punctuation and common obfuscation.

``BannedWords(terms).find(prompt)`` returns the configured term that matched, or ``None``;
``moderation_message(term)`` is the answer for the user. The list comes from settings and
``/admin banned-words``; ``DEFAULT_BANNED_WORDS`` is empty (every community decides its own).

How text is compared (both the prompt and the terms go through it):

1. Unicode: NFKC (full-width, 𝐛𝐨𝐥𝐝, ⓒⓘⓡⓒⓛⓔⓓ and ligatures become plain letters), accents removed
   (``bàd`` → ``bad``), case folded, common Cyrillic/Greek look-alikes mapped to Latin (``Ьаd`` with a
   Cyrillic ``а``), invisible format characters (zero-width spaces/joiners, RTL marks) dropped.
2. Look-alike digits and symbols: ``4 @`` → a, ``3`` → e, ``0`` → o, ``1 ! |`` → i, ``$ 5`` → s,
   ``7 +`` → t. ``l`` and ``i`` are treated as the same letter, since ``1`` stands for either.
3. Repeated letters: ``baaaad`` matches ``bad``; a term's own double letters must still be there at
   least once each (``ass`` needs two ``s``, so ``as`` never matches it).
4. Spacing and punctuation: ``b a d``, ``b.a.d``, ``b-a_d`` match (runs of single characters, and
   words glued by punctuation without spaces, are joined and searched).

Word-boundary policy: a term matches a *whole word*, optionally followed by a common English ending
(``s es ed er ers ing y ies``); it never matches inside a longer word. So ``ass`` does not match
``class``, ``assassin`` or ``passage``, and ``bad`` matches ``bads`` and ``badding`` but not
``badge``. Add variants (``badword``, compounds) to the list explicitly when they should be banned.
Multi-word terms (``blood bath``) match those words in sequence, or written together.
Known limits: ``he'll`` matches ``hell`` (punctuation inside a word is an obfuscation we see through);
letters replaced by ``*`` are not guessed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_BANNED_WORDS: tuple[str, ...] = ()
MAX_SINGLE_CHAR_RUN = 40
"""Longest run of spaced-out single characters that is joined and searched (bounds the work)."""

_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "ь": "b", "е": "e", "ё": "e", "о": "o", "р": "p", "с": "c", "у": "y",
        "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "һ": "h", "ԁ": "d", "ӏ": "l", "к": "k",
        "м": "m", "н": "h", "т": "t", "г": "r", "п": "n", "и": "u",
        # Greek
        "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s", "σ": "o",
    }
)  # fmt: skip
_SKELETON = str.maketrans(
    {
        "4": "a",
        "@": "a",
        "3": "e",
        "0": "o",
        "1": "i",
        "!": "i",
        "|": "i",
        "l": "i",
        "$": "s",
        "5": "s",
        "7": "t",
        "+": "t",
    }
)
_SYMBOL_LETTERS = frozenset("@!|$+")
_SUFFIXES = frozenset({"s", "es", "ed", "er", "ers", "ing", "ings", "y", "ies", "ie"})

Runs = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class _Term:
    original: str
    runs: Runs
    words: int


def normalize(text: str) -> str:
    """Steps 1 of the module docstring: comparable lower-case text (spacing and symbols kept)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) not in ("Mn", "Cf")
    )
    return text.casefold().translate(_CONFUSABLES)


def _skeleton(token: str) -> str:
    return token.translate(_SKELETON)


def _runs(skeleton: str) -> Runs:
    runs: list[tuple[str, int]] = []
    for char in skeleton:
        if runs and runs[-1][0] == char:
            runs[-1] = (char, runs[-1][1] + 1)
        else:
            runs.append((char, 1))
    return tuple(runs)


def _tokens(normalized: str) -> list[tuple[str, bool]]:
    """Words of letters, digits and look-alike symbols, each with whether a space came before it."""
    tokens: list[tuple[str, bool]] = []
    current: list[str] = []
    spaced = True
    gap_has_space = True
    for char in normalized:
        if char.isalnum() or char in _SYMBOL_LETTERS:
            if not current:
                spaced = gap_has_space
            current.append(char)
        else:
            if current:
                tokens.append(("".join(current), spaced))
                current = []
                gap_has_space = False
            if char.isspace():
                gap_has_space = True
    if current:
        tokens.append(("".join(current), spaced))
    # A "!" ending a word is punctuation ("bad!"), not an i.
    return [(token.rstrip("!") or token, spaced) for token, spaced in tokens]


def _matches(candidate: Runs, term: Runs) -> bool:
    """Whole-word match: the term's runs (each at least as long), then nothing or a common ending."""
    if len(candidate) < len(term):
        return False
    for (char, count), (want, need) in zip(candidate, term, strict=False):
        if char != want or count < need:
            return False
    rest = "".join(char for char, _ in candidate[len(term) :])
    return rest == "" or rest in _SUFFIXES


class BannedWords:
    """A compiled banned-word list. ``find`` is pure and fast enough for every prompt."""

    def __init__(self, terms: Iterable[str] = DEFAULT_BANNED_WORDS) -> None:
        self._terms: list[_Term] = []
        self._by_first: dict[str, list[_Term]] = {}
        for original in terms:
            words = [_skeleton(token) for token, _ in _tokens(normalize(original))]
            joined = "".join(words)
            if not joined:
                continue
            term = _Term(original=original.strip(), runs=_runs(joined), words=len(words))
            self._terms.append(term)
            self._by_first.setdefault(term.runs[0][0], []).append(term)

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(term.original for term in self._terms)

    def __len__(self) -> int:
        return len(self._terms)

    def find(self, text: str) -> str | None:
        """The first banned term found in ``text`` (as configured), or ``None``."""
        if not self._terms or not text:
            return None
        for candidate in self._candidates(text):
            runs = _runs(candidate)
            for term in self._by_first.get(runs[0][0], ()):
                if _matches(runs, term.runs):
                    return term.original
        return None

    def _candidates(self, text: str) -> Iterable[str]:
        tokens = _tokens(normalize(text))
        skeletons = [_skeleton(token) for token, _ in tokens]
        max_words = max(term.words for term in self._terms)
        for index, (token, _) in enumerate(tokens):
            yield skeletons[index]
            stripped = token.strip("".join(_SYMBOL_LETTERS))
            if stripped and stripped != token:
                yield _skeleton(stripped)
            for span in range(2, max_words + 1):  # multi-word terms: consecutive words
                if index + span <= len(tokens):
                    yield "".join(skeletons[index : index + span])
        # Words glued by punctuation without spaces: b.a.d, bad-ass, f_o_o.
        start = 0
        for index in range(1, len(tokens) + 1):
            if index == len(tokens) or tokens[index][1]:
                if index - start > 1:
                    yield "".join(skeletons[start:index])
                start = index
        # Spaced-out single characters: "b a d" (every contiguous stretch of the run).
        run: list[str] = []
        for skeleton in [*skeletons, ""]:
            if len(skeleton) == 1 and len(run) < MAX_SINGLE_CHAR_RUN:
                run.append(skeleton)
                continue
            for i in range(len(run)):
                for j in range(i + 2, len(run) + 1):
                    yield "".join(run[i:j])
            run = [skeleton] if len(skeleton) == 1 else []


def moderation_message(term: str | None = None) -> str:
    """The answer to a banned prompt (ephemeral), in Midjourney's style."""
    which = f" (it contains `{term.replace('`', '')}`, which is on this server's banned list)" if term else ""
    return (
        "Sorry! Our moderator thinks this prompt is probably against this community's standards"
        f"{which}. Please rephrase it and try again. Trying to get around the filter may get your "
        "access paused for a while."
    )
