"""Planners: a story prompt -> a validated ``Plan``. One JSON-plan core (``base``), engines that only turn a
chat and a JSON schema into text, and ``load_planner``, which picks the engine from the reference:

    a ``.gguf`` file          -> llama_cpp     (pip install "audiostory-cli[llama]")
    ``http(s)://…`` base URL  -> openai_http   (any OpenAI-compatible server)
    a folder or a hub id      -> transformers

``engine`` overrides the choice (``"transformers"`` for a ``.gguf`` file: transformers' own GGUF loader).
The AudioStory checkpoint's planner (``models.audiostory``) fits the same ``Planner`` protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError
from .base import LIMITS, JsonPlanner, PlanLimits, Planner

if TYPE_CHECKING:
    import torch

ENGINES = ("transformers", "llama_cpp", "openai_http")  # the --planner-engine choices

__all__ = ["ENGINES", "LIMITS", "JsonPlanner", "PlanLimits", "Planner", "engine_for", "load_planner"]


def engine_for(ref: str, engine: str | None = None) -> str:
    """The engine that serves ``ref``: ``engine`` when given, else by what the reference looks like."""
    from .openai_http import is_http_ref

    if engine is not None:
        if engine not in ENGINES:
            raise InputError(f"planner engine = {engine!r}: must be one of {', '.join(ENGINES)}")
        if (engine == "openai_http") != is_http_ref(ref):
            what = "an http(s):// server URL" if engine == "openai_http" else "a model folder, file or hub id"
            raise InputError(f"planner engine {engine} needs {what}, got {ref!r}")
        return engine
    if is_http_ref(ref):
        return "openai_http"
    if ref.lower().endswith(".gguf"):
        return "llama_cpp"
    return "transformers"


def load_planner(
    ref: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    model_name: str | None = None,
    engine: str | None = None,
) -> Planner:
    """Load the planner ``ref`` with the engine ``engine_for`` picks. ``model_name`` names the model on a
    server (default: the first it lists); ``device``/``dtype`` apply to transformers (llama.cpp offloads to
    the GPU when ``device`` is CUDA and its build has CUDA; a GGUF file keeps its own quantization)."""
    chosen = engine_for(ref, engine)
    if model_name is not None and chosen != "openai_http":
        raise InputError(f"--planner-model {model_name!r} names a model on a server; the planner {ref!r} is not one",
                         hint="give an http(s)://…/v1 --planner, or drop --planner-model")  # fmt: skip
    if chosen == "openai_http":
        from .openai_http import OpenAIHttpPlanner

        return OpenAIHttpPlanner.load(ref, model_name=model_name)
    if chosen == "llama_cpp":
        from .llama_cpp import LlamaCppPlanner

        return LlamaCppPlanner.load(ref, gpu=device.type == "cuda")
    from .transformers import TransformersPlanner

    return TransformersPlanner.load(ref, device=device, dtype=dtype)
