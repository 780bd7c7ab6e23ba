"""The TangoFlux backend (declare-lab/TangoFlux): ``detect``, ``describe`` and ``load`` for the registry.

It loads the layout that declare-lab/TangoFlux publishes: ``config.json`` (the DiT's sizes),
``tangoflux.safetensors`` (keys ``transformer.*``, ``fc.*``, ``duration_emebdder.*``, spelled as upstream)
and ``vae.safetensors`` (the Stable Audio Open Oobleck VAE, whose config is read off its tensor shapes).
The T5 encoder comes from a ``text_encoder/`` folder beside them when present, else from the model
reference in ``config.json``'s ``text_encoder_name`` (``google/flan-t5-large``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..base import DecoderCaps
from .config import caps_for, read_tangoflux_config

if TYPE_CHECKING:
    import torch

    from .decoder import TangoFluxDecoder

NAME = "tangoflux"
FILES = ("config.json", "tangoflux.safetensors", "vae.safetensors")
LAYOUT = "config.json, tangoflux.safetensors, vae.safetensors and optionally text_encoder/, as declare-lab/TangoFlux publishes"


def detect(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def missing_files(folder: Path) -> list[str]:
    """The layout's files this folder lacks, when it holds some of them (else [])."""
    missing = [name for name in FILES if not (folder / name).is_file()]
    return missing if len(missing) < len(FILES) else []


def describe(folder: Path) -> DecoderCaps:
    return caps_for(read_tangoflux_config(folder / "config.json"))


def load(ref: str, folder: Path, *, device: torch.device, dtype: torch.dtype) -> TangoFluxDecoder:
    from .decoder import TangoFluxDecoder

    return TangoFluxDecoder.from_folder(ref, folder, device=device, dtype=dtype)
