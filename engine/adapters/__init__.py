"""Adapters that drive third-party image backends through the one Engine interface (engine.base).

* ``a1111`` — AUTOMATIC1111-compatible ``/sdapi/v1`` servers (also Forge, SD.Next).
* ``comfyui`` — ComfyUI with workflow templates (``comfy_workflows``).
* ``replicate`` — hosted predictions APIs in Replicate's shape.

Each adapter maps our operations with ``common.plan``, says what it can do in ``operations`` and has a cheap
``health()``; nothing here imports Discord or the database.
"""
