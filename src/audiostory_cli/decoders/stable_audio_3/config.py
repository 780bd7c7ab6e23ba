"""The two Stable Audio 3 layouts and their config files: which layout a folder holds (``detect``), what it lacks
(``missing_files``), and what it can do (``describe``, ``read_setup``), from config files alone: no weight is
read. ``model_index`` writes the diffusers layout's index (``convert`` and the tiny builder)."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ModelLoadError
from ..base import DecoderCaps
from .convert import (
    CONFIG_FILE,
    SAME_L,
    SAME_S,
    TEXT_FOLDER,
    WEIGHTS_FILE,
    SA3Setup,
    StabilityConfig,
    read_config,
)

PIPELINE_CLASS = "StableAudio3Pipeline"
SAME_S_MODULE = "audiostory_cli.decoders.stable_audio_3.same_s"  # where model_index.json finds AutoencoderSameS
BASE_GUIDANCE = 7.0  # guidance of the non-distilled (-base) checkpoints: Stability's CLI advice
MAX_TEXT_TOKENS = 256  # the pipeline's cap on T5Gemma tokens
WEIGHTS = "diffusion_pytorch_model.safetensors"  # a diffusers component's weights


# The published Small-SFX's model_config.json, as ``read_setup`` reads it (../shared/manifests/
# reconstructed_model_configs.json): SAME-S with patch 256 x stride 16, chunks of 32 / 16 = 2 latent frames,
# rf_denoiser (distilled), T5Gemma-b (768 wide, 256 tokens), the inpainting input. Its window: 120 s (Stability's
# README; the file's exact sample_size is not published), rounded up to whole 4096-sample frames, as the
# real-size tiny builder writes it.
SMALL_SFX_HOP = 256 * 16  # audio samples per latent frame
SMALL_SFX_TEXT_WIDTH = 768  # T5Gemma-b's hidden size
SMALL_SFX = SA3Setup(
    sample_rate=44100, max_frames=-(-120 * 44100 // SMALL_SFX_HOP), frame_multiple=2, stochastic=True,
    text_max_tokens=256, inpaint_input=True,
)  # fmt: skip

ORIGINAL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TEXT_FOLDER + "/")  # Stability's layout
DIFFUSERS_FILES = (
    "model_index.json", "transformer/", "vae/", "duration_embedder/", "scheduler/", "text_encoder/", "tokenizer/",
)  # fmt: skip


def detect(folder: Path) -> bool:
    return (is_original(folder) or is_diffusers(folder)) and not missing_files(folder)


def missing_files(folder: Path) -> list[str]:
    """The files of the layout this folder's config names that it lacks (else [])."""
    names = ORIGINAL_FILES if is_original(folder) else DIFFUSERS_FILES if is_diffusers(folder) else ()
    present = [(folder / n).is_dir() if n.endswith("/") else (folder / n).is_file() for n in names]
    return [name for name, there in zip(names, present, strict=True) if not there]


def is_original(folder: Path) -> bool:
    """Stability's layout, by its config file (the weights may be missing: ``missing_files`` says)."""
    return (folder / CONFIG_FILE).is_file()


def is_diffusers(folder: Path) -> bool:
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name") == PIPELINE_CLASS
    except (OSError, ValueError, AttributeError):
        return False


def describe(folder: Path) -> DecoderCaps:
    """Caps from config files only (no weights read)."""
    setup, text_width, channels = read_setup(folder)
    return caps_for(setup, text_width=text_width, channels=channels, hop_samples=_hop(folder))


def default_caps() -> DecoderCaps:
    """The caps of the published Small-SFX (``stabilityai/stable-audio-3-small-sfx``, the default decoder), for
    a dry run when its files are not on this machine: nothing is read or downloaded."""
    return caps_for(SMALL_SFX, text_width=SMALL_SFX_TEXT_WIDTH, channels=2, hop_samples=SMALL_SFX_HOP)


def caps_for(setup: SA3Setup, *, text_width: int, channels: int, hop_samples: int) -> DecoderCaps:
    """What a Stable Audio 3 checkpoint of this setup can do."""
    stochastic = setup.stochastic
    return DecoderCaps(
        name="Stable Audio 3", sample_rate=setup.sample_rate, channels=channels,
        window_s=setup.max_frames * hop_samples / setup.sample_rate, text_width=text_width,
        default_steps=8 if stochastic else 100, default_guidance=1.0 if stochastic else BASE_GUIDANCE,
        windows=("auto",), continuation="latent", hop_samples=hop_samples, frame_multiple=setup.frame_multiple,
        round_head_end_up=True,
    )  # fmt: skip


def model_index(config: StabilityConfig, diffusers_version: str, tokenizer_class: str) -> dict:
    """The ``model_index.json`` of the diffusers layout; ``_sample_size`` and ``_inpaint_input`` keep what
    the diffusers components do not say (the window, and whether the DiT gets the inpainting input)."""
    vae = ["diffusers", SAME_L] if config.vae_class == SAME_L else [SAME_S_MODULE, SAME_S]
    return {
        "_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers_version,
        "_sample_size": config.max_samples, "_inpaint_input": config.inpaint_input,
        "duration_embedder": ["diffusers", "StableAudio3DurationEmbedder"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "T5GemmaEncoderModel"], "tokenizer": ["transformers", tokenizer_class],
        "transformer": ["diffusers", "StableAudio3DiTModel"], "vae": vae,
    }  # fmt: skip


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from None


def read_setup(folder: Path) -> tuple[SA3Setup, int, int]:
    """(setup, text width, audio channels) from config files alone."""
    if is_original(folder):
        config = read_config(folder)
        vae, max_samples, stochastic = config.vae, config.max_samples, config.distilled
        vae_class, tokens, text_width = config.vae_class, config.text_max_tokens, config.transformer["cond_token_dim"]
        inpaint, sample_rate = config.inpaint_input, config.sample_rate
    else:
        index = read_json(folder / "model_index.json")
        vae = read_json(folder / "vae" / "config.json")
        vae_class = index.get("vae", [None, SAME_L])[1]
        text_width = read_json(folder / "transformer" / "config.json")["cond_token_dim"]
        scheduler = index.get("scheduler", [None, ""])[1] or ""
        stochastic = "PingPong" in scheduler or bool(  # newer diffusers name the distilled sampler's class
            read_json(folder / "scheduler" / "scheduler_config.json").get("stochastic_sampling")
        )
        sample_rate = int(vae.get("sampling_rate", 44100))
        max_val = read_json(folder / "duration_embedder" / "config.json").get("max_val", 384.0)
        max_samples = int(index.get("_sample_size", max_val * sample_rate))
        tokenizer_config = folder / "tokenizer" / "tokenizer_config.json"
        limit = read_json(tokenizer_config).get("model_max_length", 0) if tokenizer_config.is_file() else 0
        limit = limit or MAX_TEXT_TOKENS
        tokens, inpaint = min(int(limit), MAX_TEXT_TOKENS), bool(index.get("_inpaint_input", True))
    strides = vae.get("strides", vae.get("encoder_strides", [16]))
    multiple = vae["chunk_size"] // strides[0] if vae_class == SAME_S else 1
    hop = vae["patch_size"] * _prod(strides)
    max_frames = (max_samples // hop) // multiple * multiple
    setup = SA3Setup(
        sample_rate=sample_rate, max_frames=max_frames, frame_multiple=multiple, stochastic=stochastic,
        text_max_tokens=tokens, inpaint_input=inpaint,
    )  # fmt: skip
    return setup, int(text_width), int(vae.get("audio_channels", 2))


def _hop(folder: Path) -> int:
    vae = read_config(folder).vae if is_original(folder) else read_json(folder / "vae" / "config.json")
    return vae["patch_size"] * _prod(vae.get("strides", vae.get("encoder_strides", [16])))


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def text_dirs(folder: Path) -> tuple[Path, Path]:
    if is_original(folder):
        return folder / TEXT_FOLDER, folder / TEXT_FOLDER
    return folder / "text_encoder", folder / "tokenizer"
