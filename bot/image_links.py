"""Which image links a /imagine may use: every expanded prompt is checked, and a link is only ever shown
(in the job's public message) if the bot accepted it and will fetch it.

The engines take one image prompt per job, and the jobs of one /imagine share the image that was
fetched for the first of them. So the rule is: at most one image link, the same in every permutation
(or none in all of them), never together with an attached image, and only when ``IMAGE_URLS`` is on.
Links are also part of the text that moderation reads (``texts_to_moderate``).
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.prompt import ParsedPrompt

LINKS_OFF = "Image links are turned off on this server: attach the image to /imagine instead."
LINK_AND_ATTACHMENT = "Use either an attached image or an image link, not both."
ONE_LINK = "Only one image link can be used per prompt; keep the one you want."
SAME_LINK = "Every variant of a {permutation} prompt must start with the same image link (or none of them)."


def image_link_refusal(
    prompts: Sequence[ParsedPrompt], *, links_allowed: bool, attachment: bool
) -> str | None:
    """The answer for the user when the expanded ``prompts`` use image links the bot will not accept."""
    links = {parsed.image_urls for parsed in prompts}
    if not any(links):
        return None
    if not links_allowed:
        return LINKS_OFF
    if attachment:
        return LINK_AND_ATTACHMENT
    if len(links) > 1:
        return SAME_LINK.format(permutation="{a, b}")
    if any(len(urls) > 1 for urls in links):
        return ONE_LINK
    return None


def texts_to_moderate(prompts: Sequence[ParsedPrompt]) -> list[str]:
    """Everything of the prompts a user sees echoed: the texts, the negatives and the image links."""
    return [text for parsed in prompts for text in (parsed.text, parsed.negative, *parsed.image_urls)]
