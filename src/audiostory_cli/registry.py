"""The registry: a model reference -> the backend that reads it, decided by the files found there.

Callers name a model (a folder, a file, a hub id); the registry resolves it (``checkpoints.resolve``) and
asks each decoder backend, in order, whether the folder holds its layout. Adding a decoder is one module
under ``decoders/`` and one line in ``DECODER_BACKENDS``; nothing else learns its name.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, NamedTuple

from .checkpoints import DEFAULT_DECODER, ModelKind, default_planner, resolve
from .devices import keep_freed_memory
from .errors import InputError, ModelLoadError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

    from .settings import RenderOptions

    from .decoders.base import Decoder, DecoderBackend, DecoderCaps

TANGOFLUX = "declare-lab/TangoFlux"  # the decoder to name when the default one (gated) is out of reach

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
    """The backend that reads ``ref`` and the folder holding it; a miss names every layout looked for (and, for
    the default decoder, which is gated, how to render with TangoFlux instead)."""
    kind = _decoder_kind()
    try:
        folder = resolve(ref, kind)
    except ModelNotFoundError as err:
        if ref != DEFAULT_DECODER:
            raise
        said = f"{err.hint}; or" if err.hint else "or"
        raise ModelNotFoundError(err.args[0], hint=f"{said} render with TangoFlux instead, not gated (non-commercial "
                                 f"weights): --decoder {TANGOFLUX}") from None  # fmt: skip
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
    """Load the decoder ``ref`` names, through the backend its files say. On a CPU, glibc's malloc is first told
    to keep freed memory for reuse (``devices.keep_freed_memory``: the VAE's activations are not page-faulted in
    anew at every layer)."""
    backend, folder = find_decoder(ref)
    if device.type == "cpu":
        keep_freed_memory()
    return backend.load(ref, folder, device=device, dtype=dtype)


def convert_decoder(ref: str, out_dir: Path) -> Path:
    """Write the decoder ``ref`` names in the layout it loads from fastest (``audiostory convert``): Stability's
    own SA3 release -> the diffusers layout, converted strictly once instead of at every load."""
    backend, folder = find_decoder(ref)
    convert = getattr(backend, "convert", None)
    if convert is None:
        raise InputError(f"decoder '{ref}' ({backend.NAME}) loads as it is: there is nothing to convert")
    return convert(folder, Path(out_dir))


def load_planner(
    ref: str, *, device: torch.device, dtype: torch.dtype, model_name: str | None = None, engine: str | None = None,
    hidden_states: bool = False,
):  # fmt: skip
    """Load the planner ``ref`` names (a folder, a hub id, a .gguf file or an OpenAI-compatible server URL)
    with the engine that serves it (``planners.engine_for``; ``engine`` overrides). ``hidden_states``: the
    caller (a trained bridge, train-bridge) reads the LLM's hidden states, which only transformers gives."""
    from .planners import engine_for
    from .planners import load_planner as load

    if hidden_states:
        chosen = engine_for(ref, engine)
        if chosen == "openai_http" or engine not in (None, "transformers"):
            raise InputError(
                f"a trained bridge reads the planner LLM's hidden states, which the {chosen} engine does not give",
                hint="use a transformers planner with --bridge and train-bridge: a folder, a hub id or a .gguf file",
            )
        engine = "transformers"
    return load(ref, device=device, dtype=dtype, model_name=model_name, engine=engine)


class Models(NamedTuple):
    """What a command loads once."""

    planner: Any  # a Planner (or the AudioStory checkpoint's); None when not needed
    decoder: Any  # a Decoder; None when not needed
    conditioner: Any  # a Conditioner: residual fusion (with a trained bridge or not), or the checkpoint's


def load_models(
    options: RenderOptions, *, device: torch.device, dtype: torch.dtype, need_planner: bool = True,
    need_decoder: bool = True, bridge_planner: str | None = None, planner_model: str | None = None,
    planner_engine: str | None = None, status: Callable[[str], ContextManager] | None = None,
) -> Models:  # fmt: skip
    """Load what ``options`` names, once: the AudioStory checkpoint alone (``--model``), or a planner, a decoder
    and the conditioner (with its trained bridge). ``bridge_planner``: for render, the planner a bridge reads
    (default: the one it was trained with). ``status(message)``: a context around each load (the CLI's spinner)."""
    from .conditioning.residual import ResidualConditioner

    status = status or (lambda _: contextlib.nullcontext())
    if options.model is not None:
        from .models.audiostory.fusion import AudioStoryConditioner
        from .models.audiostory.load import AudioStoryModel

        with status(f"loading AudioStory model {options.model}"):
            loaded = AudioStoryModel.load(options.model, device=device, dtype=dtype)
        return Models(loaded.planner, loaded.decoder, AudioStoryConditioner(loaded))

    def planner_from(ref: str, **kwargs):
        with status(f"loading planner {ref}"):
            return load_planner(ref, device=device, dtype=dtype, **kwargs)

    bridged = options.bridge is not None  # a trained bridge reads the planner's hidden states
    planner = None
    if need_planner:
        ref = options.planner or default_planner(device, "transformers" if bridged else planner_engine)
        planner = planner_from(ref, model_name=planner_model, engine=planner_engine, hidden_states=bridged)
    decoder = None
    if need_decoder:
        ref = options.decoder or DEFAULT_DECODER
        with status(f"loading decoder {ref}"):
            decoder = load_decoder(ref, device=device, dtype=dtype)
    trained_bridge = None
    if bridged:
        from .conditioning.trained_bridge import BridgeAdapter, TrainedBridge

        if planner is None:  # render: the planner the bridge was trained with, unless --planner says
            planner = planner_from(bridge_planner or BridgeAdapter.read_config(options.bridge).planner,
                                   hidden_states=True)  # fmt: skip
        trained_bridge = TrainedBridge.load(options.bridge, planner)
    return Models(planner, decoder, ResidualConditioner(options.coherence, trained_bridge))
