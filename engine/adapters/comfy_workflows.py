"""ComfyUI workflow templates: API-format JSON files with placeholders, one file per kind of operation.

A template is a workflow saved with ComfyUI's "Save (API Format)": ``{node_id: {"class_type", "inputs"}}``.
Any input value may be a placeholder, written ``"{{name}}"``. A value that is exactly one placeholder is
replaced by the typed value (a number stays a number); a placeholder inside a longer text is replaced as
text (``"{{prompt}}, film grain"``). The placeholders:

==============  ===========================================================================================
``{{prompt}}``    the prompt (plain reading; ``::`` weights are not sent)
``{{negative}}``  the negative prompt (``--no``)
``{{seed}}``      the job seed (tile i of a batch is ComfyUI's batch item i of that seed)
``{{width}}``     output width in pixels          ``{{height}}`` output height in pixels
``{{steps}}``     denoising steps                 ``{{guidance}}`` CFG scale
``{{batch}}``     images to make (4 for a grid, 1 for an upscale)
``{{model}}``     the checkpoint: ``--model`` if given (a name from the server's checkpoint list), else ``MODEL``
``{{image}}``     the uploaded input image's name (for a ``LoadImage`` node)
``{{mask}}``      the uploaded mask's name (white = generate; for ``LoadImageMask`` with channel ``red``)
``{{strength}}``  img2img denoise (0-1), for the sampler's ``denoise``
==============  ===========================================================================================

Files (in ``COMFYUI_WORKFLOWS``; each missing one falls back to the bundled default when there is one):

* ``txt2img.json`` — text to image (bundled: SD1.5/SDXL checkpoint, euler/normal).
* ``img2img.json`` — image prompts, Vary (Subtle/Strong) and, without ``upscale.json``, the upscales
  (bundled: ``LoadImage`` → ``VAEEncode`` → ``RepeatLatentBatch`` → ``KSampler`` at ``{{strength}}``).
* ``upscale.json`` — optional: Upscale (Subtle/Creative), given the 2x-resized image.
* ``inpaint.json`` — optional: Zoom Out, Make Square and pans (needs ``{{image}}`` and ``{{mask}}``). No
  default is bundled (a good inpainting graph depends on the checkpoint), so without it those buttons are
  refused on ComfyUI.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.adapters.common import IMG2IMG_OPERATIONS
from engine.base import OUTPAINT_OPERATIONS, EngineError, Operation

BUNDLED = Path(__file__).with_name("comfyui_workflows")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
KNOWN = frozenset(
    {"prompt", "negative", "seed", "width", "height", "steps", "guidance", "batch", "model", "image", "mask"}
    | {"strength"}
)
REQUIRED = {
    "txt2img": {"prompt", "seed"},
    "img2img": {"prompt", "image"},
    "upscale": {"image"},
    "inpaint": {"prompt", "image", "mask"},
}


@dataclass(frozen=True)
class Workflow:
    name: str
    graph: dict[str, Any]
    placeholders: frozenset[str]

    def fill(self, values: dict[str, Any]) -> dict[str, Any]:
        """A copy of the graph with every placeholder replaced by ``values``."""
        return {node: _fill(spec, values) for node, spec in self.graph.items()}


def _fill(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    return value


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(_placeholders(item) for item in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_placeholders(item) for item in value)) if value else set()
    return set()


def load_workflow(path: Path) -> Workflow:
    """One template; ``EngineError`` naming the file when it is not an API-format workflow we can fill."""
    name = path.stem
    try:
        graph = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EngineError(f"ComfyUI workflow {path.name} cannot be read: {error}") from None
    if (
        not isinstance(graph, dict)
        or not graph
        or not all(
            isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs"), dict)
            for node in graph.values()
        )
    ):
        raise EngineError(
            f"ComfyUI workflow {path.name} is not in API format (use 'Save (API Format)' in ComfyUI)"
        )
    used = frozenset(_placeholders(graph))
    unknown = used - KNOWN
    if unknown:
        raise EngineError(
            f"ComfyUI workflow {path.name} has unknown placeholders: {', '.join(sorted(unknown))}"
        )
    missing = REQUIRED.get(name, set()) - used
    if missing:
        raise EngineError(
            f"ComfyUI workflow {path.name} needs the placeholders: "
            + ", ".join("{{" + m + "}}" for m in sorted(missing))
        )
    return Workflow(name, graph, used)


def load_workflows(folder: str | Path | None) -> dict[str, Workflow]:
    """The templates of ``folder`` (``COMFYUI_WORKFLOWS``), the bundled defaults for the ones it lacks."""
    found: dict[str, Workflow] = {}
    for source in (BUNDLED, Path(folder) if folder else None):
        if source is None:
            continue
        if not source.is_dir():
            raise EngineError(f"COMFYUI_WORKFLOWS {source} is not a folder")
        for path in sorted(source.glob("*.json")):
            if path.stem in REQUIRED:
                found[path.stem] = load_workflow(path)
    return found


def workflow_for(workflows: dict[str, Workflow], operation: Operation) -> Workflow | None:
    """The template that runs ``operation``, or None when none can."""
    if operation is Operation.TXT2IMG:
        return workflows.get("txt2img")
    if operation in OUTPAINT_OPERATIONS:
        return workflows.get("inpaint")
    if operation.is_upscale and "upscale" in workflows:
        return workflows["upscale"]
    if operation in IMG2IMG_OPERATIONS:
        return workflows.get("img2img")
    return None


def operations_of(workflows: dict[str, Workflow]) -> frozenset[Operation]:
    return frozenset(op for op in Operation if workflow_for(workflows, op) is not None)
