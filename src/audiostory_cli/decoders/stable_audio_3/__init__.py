"""The Stable Audio 3 backend (stabilityai/stable-audio-3-*): ``detect``, ``describe``, ``load`` and ``convert``.

Two layouts, told apart by their files:

- diffusers': ``model_index.json`` naming ``StableAudio3Pipeline``, with ``transformer/``, ``vae/``,
  ``duration_embedder/``, ``scheduler/``, ``text_encoder/`` and ``tokenizer/`` folders;
- Stability's own, what the hub holds: ``model_config.json``, ``model.safetensors`` and ``t5gemma-b-b-ul2/``.
  It converts on load, strictly (``convert.py``); ``convert`` writes the diffusers layout once.

Its defaults come from the checkpoint: the distilled models (``rf_denoiser`` / a stochastic scheduler) take
8 ping-pong steps with guidance 1.0 (CFG baked in); the ``-base`` models 100 Euler steps with guidance 7.0
(Stability's advice for them). The window is the model's longest duration (``sample_size``).

The code: ``config.py`` (the layouts, caps from config files), ``convert.py`` (Stability's keys -> diffusers'),
``weights.py`` (strict loading; ``convert``), ``decoder.py`` (rendering). This module is the registry's interface.
"""

from __future__ import annotations

from .config import default_caps, describe, detect, missing_files
from .weights import convert, load

NAME = "stable-audio-3"
LAYOUT = (
    "a Stable Audio 3 folder: Stability's model_config.json, model.safetensors and t5gemma-b-b-ul2/, "
    "or diffusers' model_index.json (StableAudio3Pipeline) with its component folders"
)

__all__ = ["LAYOUT", "NAME", "convert", "default_caps", "describe", "detect", "load", "missing_files"]
