"""The registry: a model reference -> the backend that reads it, decided by the files found there.

Callers name a model (a folder, a file, a hub id); the registry resolves it (``checkpoints.resolve``) and
asks each decoder backend, in order, whether the folder holds its layout. Adding a decoder is one module
under ``decoders/`` and one line in ``DECODER_BACKENDS``; nothing else learns its name.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoints import ModelKind, resolve
from .errors import InputError, ModelLoadError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

    from .decoders.base import Decoder, DecoderBackend, DecoderCaps

# Decoder backends, as module paths, asked in this order; each has NAME, LAYOUT, detect, missing_files,
# describe and load.
DECODER_BACKENDS = (
    "audiostory_cli.decoders.tangoflux",
    "audiostory_cli.decoders.stable_audio_3",
)


def decoder_backends() -> list[DecoderBackend]:
    """The registered backends (their modules import no heavy dependency until ``load``)."""
    return [importlib.import_module(name) for name in DECODER_BACKENDS]


def _decoder_kind() -> ModelKind:
    layouts = "; or ".join(f"{b.LAYOUT}" for b in decoder_backends())
    return ModelKind(role="decoder", required=(), layout=layouts)


def find_decoder(ref: str) -> tuple[DecoderBackend, Path]:
    """The backend that reads ``ref`` and the folder holding it; a miss names every layout looked for."""
    kind = _decoder_kind()
    folder = resolve(ref, kind)
    if folder.is_file():
        raise ModelLoadError(f"decoder '{ref}' is a file; expected a folder ({kind.layout})")
    backends = decoder_backends()
    for backend in backends:
        if backend.detect(folder):
            return backend, folder
    for backend in backends:  # some of one layout's files, not all: name what is missing
        missing = backend.missing_files(folder)
        if missing:
            raise ModelNotFoundError(
                f"decoder folder {folder} lacks {', '.join(missing)}", hint=f"expected layout: {backend.LAYOUT}"
            )
    raise ModelNotFoundError(
        f"decoder folder {folder} holds no decoder layout this audiostory knows", hint=f"expected {kind.layout}"
    )


def describe_decoder(ref: str) -> DecoderCaps:
    """A decoder's caps from its config files alone: what the CLI checks before any weight loads."""
    backend, folder = find_decoder(ref)
    return backend.describe(folder)


def load_decoder(ref: str, *, device: torch.device, dtype: torch.dtype) -> Decoder:
    """Load the decoder ``ref`` names, through the backend its files say."""
    backend, folder = find_decoder(ref)
    return backend.load(ref, folder, device=device, dtype=dtype)


def convert_decoder(ref: str, out_dir: Path) -> Path:
    """Write the decoder ``ref`` names in the layout it loads from fastest (``audiostory convert``): Stability's
    own SA3 release -> the diffusers layout, converted strictly once instead of at every load."""
    backend, folder = find_decoder(ref)
    convert = getattr(backend, "convert", None)
    if convert is None:
        raise InputError(f"decoder '{ref}' ({backend.NAME}) loads as it is: there is nothing to convert")
    return convert(folder, Path(out_dir))


def load_planner(ref: str, *, device: torch.device, dtype: torch.dtype):
    """Load the planner LLM ``ref`` names (a folder, a hub id or a .gguf file)."""
    from .planner import Planner

    return Planner.load(ref, device=device, dtype=dtype)
