"""The one translation from a parsed prompt to a job's ``JobParams`` (storage/params.py)."""

from __future__ import annotations

from bot.prompt import ParsedPrompt, guidance_for_stylize, stop_fraction
from storage.params import JobParams


def params_for_prompt(parsed: ParsedPrompt, *, base_steps: int) -> JobParams:
    """Everything a new ``/imagine`` job needs from its prompt besides the row's own columns."""
    return JobParams(
        display=parsed.render(base_steps=base_steps),
        aspect=parsed.aspect,
        engine_prompt=parsed.engine_prompt,
        engine_negative=parsed.engine_negative,
        prompt_parts=parsed.parts,
        chaos=parsed.chaos,
        guidance=guidance_for_stylize(parsed.stylize),
        tile=parsed.tile,
        model=parsed.model,
        stop=stop_fraction(parsed.stop),
    )


def remixed_params(params: JobParams, parsed: ParsedPrompt, *, base_steps: int) -> JobParams:
    """A Remix edit: the edited prompt replaces the text and the knobs it sets; the rest is kept."""
    fresh = params_for_prompt(parsed, base_steps=base_steps)
    changes: dict[str, object] = {
        "display": fresh.display,
        "engine_prompt": fresh.engine_prompt,
        "engine_negative": fresh.engine_negative,
        "prompt_parts": fresh.prompt_parts,  # the weights belong to the text it replaces
        "remixed": True,
    }
    if parsed.chaos is not None:
        changes["chaos"] = parsed.chaos
    if parsed.stylize is not None:
        changes["guidance"] = fresh.guidance
    if parsed.tile:
        changes["tile"] = True
    if parsed.model is not None:
        changes["model"] = parsed.model
    return params.but(**changes)
