"""Image generation behind one interface (see ``engine.base``). Importing this never imports torch."""

from engine.base import (
    CancelToken,
    Engine,
    EngineCancelled,
    EngineError,
    EngineFlagged,
    EngineOutOfMemory,
    EngineUnavailable,
    GenerationRequest,
    Operation,
    ProgressCallback,
    ProgressUpdate,
)

__all__ = [
    "CancelToken",
    "Engine",
    "EngineCancelled",
    "EngineError",
    "EngineFlagged",
    "EngineOutOfMemory",
    "EngineUnavailable",
    "GenerationRequest",
    "Operation",
    "ProgressCallback",
    "ProgressUpdate",
]
