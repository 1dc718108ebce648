"""The one front door for prompt text: raw text in, admitted prompts out (or one short refusal).

Every entry point that turns typed text into jobs calls ``Intake``: ``/imagine`` (``read``), a Remix edit
of a button (``read_remix``), and any future one (an HTTP API, the sandbox). A check added here applies
to all of them. The steps, in the order their answers take precedence:

1. ``/prefer suffix`` (its parameters fill what the prompt lacks) — not for Remix, see ``read_remix``;
2. ``{a, b}`` permutations and ``--repeat`` (at most ``MAX_JOBS_PER_PROMPT`` jobs);
3. parsing (``bot/prompt.py``), with the engine's model aliases for ``--model``;
4. moderation (banned words, with blocks after repeated hits: ``bot/moderator.py``);
5. the image policy, on every expanded prompt: links only when ``IMAGE_URLS`` is on, at most
   ``MAX_IMAGE_PROMPTS`` images a job, the same link in every permutation (links are moderated too);
6. the user's ``/settings`` defaults (model, stylize, quality, mode) — not for Remix.

The tier's limits on size, steps, queue and fast time are checked when the job is admitted
(``JobService`` → ``QuotaService.admit``), which every path goes through as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.moderator import Moderator
from bot.prompt import (
    ParsedPrompt,
    PromptDefaults,
    PromptError,
    append_suffix,
    expand_permutations,
    parse_prompt,
)
from bot.settings import Settings
from storage.models import User

MAX_JOBS_PER_PROMPT = 40
MAX_IMAGE_PROMPTS = 1
"""Images one job can start from (an attachment or a link): the engines take one init image."""

LINKS_OFF = "Image links are turned off on this server: attach the image to /imagine instead."
SAME_LINK = (
    "Every variant of a {a, b} prompt must start with the same image link (or none of them): "
    "the jobs of one /imagine share one image prompt."
)


class IntakeRefused(Exception):
    """The text is not admitted; ``str(refusal)`` is the short answer for the user (nothing was queued)."""


@dataclass(frozen=True)
class Intake:
    settings: Settings
    moderator: Moderator
    models: frozenset[str] | None = None
    """The engine's model aliases (``--model`` must name one); None: only the name pattern is checked."""

    async def read(self, user: User, raw: str, *, attachments: int = 0) -> list[ParsedPrompt]:
        """``/imagine``: one entry per job (permutations expanded, ``--repeat`` unrolled), in order."""
        text = append_suffix(raw, user.suffix) if user.suffix else raw
        try:
            prompts = self._parse(text, attachments)
        except PromptError as error:
            raise IntakeRefused(str(error)) from None
        await self._moderate(user, prompts)
        self._check_images(prompts, attachments)
        defaults = prompt_defaults(user)
        return [parsed.with_defaults(defaults) for parsed in prompts for _ in range(parsed.repeat)]

    async def read_remix(self, user: User, raw: str, *, original: str = "") -> ParsedPrompt:
        """A Remix edit: the same parsing, moderation and image policy as ``/imagine``, for one job.

        The text edited is the parent's prompt as it was interpreted (suffix and defaults already
        applied), so neither is applied again: what the user leaves out keeps the parent's value.
        A Remix job starts from the parent's images, so its image links must stay those of ``original``.
        """
        try:
            prompts = self._parse(raw, 0)
        except PromptError as error:
            raise IntakeRefused(str(error)) from None
        await self._moderate(user, prompts)
        self._check_images(prompts, 0)
        if len(prompts) != 1 or prompts[0].repeat != 1:
            raise IntakeRefused(
                "A remix makes one job: remove the {…} permutations and --repeat, or use /imagine."
            )
        parsed = prompts[0]
        if parsed.image_urls and parsed.image_urls != _image_urls_of(original):
            raise IntakeRefused(
                "A remix keeps the original's image prompt: remove the new image links, "
                "or start from that image with /imagine."
            )
        return parsed

    def _parse(self, raw: str, attachments: int) -> list[ParsedPrompt]:
        variants = expand_permutations(raw, MAX_JOBS_PER_PROMPT)
        parsed = [parse_prompt(text, models=self.models, attachments=attachments) for text in variants]
        if sum(p.repeat for p in parsed) > MAX_JOBS_PER_PROMPT:
            raise PromptError(f"That prompt makes more than {MAX_JOBS_PER_PROMPT} jobs; split it up.")
        return parsed

    async def _moderate(self, user: User, prompts: list[ParsedPrompt]) -> None:
        # links too: they are shown in the job's public message like the rest of the prompt
        texts = [text for parsed in prompts for text in (parsed.text, parsed.negative, *parsed.image_urls)]
        refusal = await self.moderator.check(user.id, *texts)
        if refusal:
            raise IntakeRefused(refusal)

    def _check_images(self, prompts: list[ParsedPrompt], attachments: int) -> None:
        for parsed in prompts:
            if parsed.image_urls and not self.settings.image_urls:
                raise IntakeRefused(LINKS_OFF)
            given = len(parsed.image_urls) + attachments
            if given > MAX_IMAGE_PROMPTS:
                raise IntakeRefused(
                    f"A job can start from {MAX_IMAGE_PROMPTS} image; this prompt gives {given} "
                    f"({_count(len(parsed.image_urls), 'link')}, {_count(attachments, 'attachment')}). "
                    "Keep one, or run one /imagine per image."
                )
        # the jobs of one /imagine all start from the first job's image: a link only some variants (or
        # another link) name would be shown but never fetched
        if len({parsed.image_urls for parsed in prompts}) > 1:
            raise IntakeRefused(SAME_LINK)


def prompt_defaults(user: User) -> PromptDefaults:
    preferences = user.preferences or {}
    return PromptDefaults(
        model=preferences.get("model"),
        stylize=preferences.get("stylize"),
        quality=preferences.get("quality"),
        mode=preferences.get("mode"),
    )


def model_aliases(engine: object) -> frozenset[str] | None:
    """The model aliases an engine serves (its registry's names); None when it does not say."""
    specs = getattr(getattr(engine, "registry", None), "specs", None)
    return frozenset(specs) if specs else None


def _image_urls_of(prompt: str) -> tuple[str, ...]:
    try:
        return parse_prompt(prompt).image_urls
    except PromptError:
        return ()


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
