"""Loading Stable Audio 3 strictly: either layout into the diffusers modules and our decoder (``load``), Stability's
own through ``convert.py``'s key mapping; the T5Gemma text encoder, its tensors checked from the file headers;
and ``convert``, which writes Stability's layout as a diffusers folder once."""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import InputError, ModelLoadError
from ..weights import read_safetensors, strict_load, summarize
from .config import (
    ORIGINAL_FILES,
    SAME_L,
    SAME_S,
    WEIGHTS,
    describe,
    is_diffusers,
    is_original,
    missing_files,
    model_index,
    read_json,
    read_setup,
    text_dirs,
)
from .convert import DURATION, VAE, WEIGHTS_FILE, StabilityConfig, read_config

if TYPE_CHECKING:
    import torch

    from .decoder import StableAudio3Decoder

REFERENCE_NORM_EPS = 1e-5  # eps of the DiT blocks' RMS norms in stable-audio-tools (RMSNorm's default)


def load(ref: str, folder: Path, *, device: torch.device, dtype: torch.dtype) -> StableAudio3Decoder:
    """Load either layout strictly; the DiT in ``dtype``, the VAE and duration embedder in fp32."""
    import torch

    from ...checkpoints import quiet_loading
    from .decoder import StableAudio3Decoder

    caps = describe(folder)
    setup, _, _ = read_setup(folder)
    with quiet_loading():
        modules = _original_modules(folder) if is_original(folder) else _diffusers_modules(folder)
        encoder_dir, tokenizer_dir = text_dirs(folder)
        text_encoder, tokenizer = load_text_encoder(encoder_dir, tokenizer_dir, device=device, dtype=dtype)
        for module in (*modules.values(), text_encoder):
            module.requires_grad_(False)
        _reference_norm_eps(modules["transformer"])
        transformer = modules["transformer"].to(device=device, dtype=dtype).eval()
        vae = modules["vae"].to(device=device, dtype=torch.float32).eval()
        duration_embedder = modules["duration_embedder"].to(device=device, dtype=torch.float32).eval()
    if text_encoder.config.encoder.hidden_size != caps.text_width:
        raise ModelLoadError(
            f"{encoder_dir}: T5Gemma hidden size {text_encoder.config.encoder.hidden_size} does not match the "
            f"DiT's text width {caps.text_width}"
        )
    return StableAudio3Decoder(
        ref=ref, caps=caps, setup=setup, transformer=transformer, vae=vae, duration_embedder=duration_embedder,
        text_encoder=text_encoder, tokenizer=tokenizer, device=device, dtype=dtype,
    )  # fmt: skip


def _reference_norm_eps(transformer) -> None:
    """The DiT blocks' RMS norms at stable-audio-tools' eps (1e-5; diffusers builds 1e-6): with it the DiT
    computes exactly what Stability's own DiT computes (checked against Stability-AI/stable-audio-3)."""
    for block in transformer.transformer_blocks:
        for norm in (block.pre_norm, block.cross_attend_norm, block.ff_norm):
            norm.eps = REFERENCE_NORM_EPS


def convert(folder: Path, out_dir: Path) -> Path:
    """Write Stability's layout in ``folder`` as a diffusers folder ``out_dir`` (save_pretrained, atomic:
    a temporary folder beside ``out_dir``, renamed when complete). An existing non-empty ``out_dir`` is
    refused."""
    import diffusers
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ...checkpoints import quiet_loading

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} already exists and is not empty", hint="give a new folder to convert into")
    if is_diffusers(folder):
        raise InputError(f"{folder} is already in the diffusers layout: there is nothing to convert")
    if not is_original(folder) or missing_files(folder):
        raise InputError(f"{folder} is not in Stability's Stable Audio 3 layout ({', '.join(ORIGINAL_FILES)})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config = read_config(folder)
        with quiet_loading():
            modules = _original_modules(folder)
            cpu = torch.device("cpu")
            text_encoder, tokenizer = load_text_encoder(*text_dirs(folder), device=cpu, dtype=torch.float32)
            for name, module in modules.items():
                module.save_pretrained(temp / name)
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, stochastic_sampling=config.distilled)
            scheduler.save_pretrained(temp / "scheduler")
            text_encoder.save_pretrained(temp / "text_encoder")
            tokenizer.model_max_length = config.text_max_tokens  # the pipeline's prompt length
            tokenizer.save_pretrained(temp / "tokenizer")
        index = model_index(config, diffusers.__version__, type(tokenizer).__name__)
        (temp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        temp.rename(out_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out_dir


# --- reading the two layouts ---------------------------------------------------------------------------


def load_original(folder: Path) -> tuple[StabilityConfig, dict[str, torch.nn.Module]]:
    """Read ``model_config.json`` and ``model.safetensors`` into the diffusers modules (fp32, CPU), strictly.
    The modules are built on the meta device and take the file's tensors as they are: no random init, no
    second copy of the weights in memory (Medium's 2.3B parameters load at their size once)."""
    import torch

    from .convert import build_components, convert_state

    config = read_config(folder)
    with torch.device("meta"):
        modules = build_components(config)
    state = read_safetensors(folder / WEIGHTS_FILE, copy=True)
    converted = convert_state(state, config, modules, folder / WEIGHTS_FILE)
    for name, module in modules.items():
        expected = module.state_dict()
        values = {key: _default(name, key, t, module) for key, t in expected.items() if key not in converted[name]}
        assign_strictly(module, {**values, **converted[name]}, folder / WEIGHTS_FILE)
        module.eval()
    return config, modules


def _default(component: str, key: str, tensor: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """The value of a tensor the Stability file does not hold (see ``is_computed``)."""
    import torch

    if component == DURATION and key == "freqs":  # StableAudio3DurationEmbedder's fixed Fourier basis
        low, high = math.log(module.config.min_freq), math.log(module.config.max_freq)
        return torch.exp(torch.linspace(0.0, 1.0, tensor.numel()) * (high - low) + low)
    if component == VAE and key == "bottleneck.running_std":
        return torch.ones(tensor.shape)
    return torch.zeros(tensor.shape)  # no learned padding vector; an inpaint projection never used


def materialize_buffers(module: torch.nn.Module) -> None:
    """Compute the non-persistent buffers a meta-built module left empty (SAME's rope frequencies)."""
    import torch

    for sub in module.modules():
        for name, buffer in list(sub._buffers.items()):
            if buffer is None or not buffer.is_meta:
                continue
            if name != "inv_freq":
                raise RuntimeError(f"{type(sub).__name__}.{name} has no value after loading")
            dim = 2 * buffer.numel()
            setattr(sub, name, 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))


def assign_strictly(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into a meta-built ``module`` as it is (``strict_load`` with ``assign``: every key matched,
    every shape checked), then compute the buffers no file holds (``materialize_buffers``)."""
    strict_load(module, state, path, assign=True)
    materialize_buffers(module)


def _original_modules(folder: Path) -> dict:
    return load_original(folder)[1]


def _diffusers_modules(folder: Path) -> dict:
    """The transformer, VAE and duration embedder of a diffusers folder, each loaded strictly."""
    import torch
    from diffusers import AutoencoderSAME, StableAudio3DiTModel
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (
        StableAudio3DurationEmbedder,
    )

    from .same_s import AutoencoderSameS

    index = read_json(folder / "model_index.json")
    vae_name = index.get("vae", [None, SAME_L])[1]
    if vae_name not in (SAME_L, SAME_S):
        raise ModelLoadError(f"{folder / 'model_index.json'}: vae class {vae_name!r} is not a SAME autoencoder")
    classes = {
        "transformer": StableAudio3DiTModel, "duration_embedder": StableAudio3DurationEmbedder,
        "vae": AutoencoderSAME if vae_name == SAME_L else AutoencoderSameS,
    }  # fmt: skip
    modules = {}
    for name, cls in classes.items():
        with torch.device("meta"):  # the file's tensors are taken as they are: no init, no second copy
            module = cls.from_config(cls.load_config(folder / name))
        path = folder / name / WEIGHTS
        assign_strictly(module, read_safetensors(path, copy=True), path)
        modules[name] = module.eval()
    return modules


def load_text_encoder(encoder_dir: Path, tokenizer_dir: Path, *, device, dtype):
    """The T5Gemma encoder and its tokenizer. ``encoder_dir`` holds either the full encoder-decoder
    (``T5GemmaForConditionalGeneration``, what every SA3 hub repo ships: ``model.encoder.*`` and
    ``model.decoder.*``) or the encoder alone (diffusers' ``text_encoder/``: ``encoder.*``); the decoder half
    is expected and left unread (``TEXT_DECODER_HALF``). Every encoder tensor is checked by name and shape
    before loading (``check_text_encoder``): a missing, unexpected or mis-shaped one is a ModelLoadError."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, T5GemmaEncoderModel

    if not (encoder_dir / "config.json").is_file():
        raise ModelLoadError(f"no T5Gemma text encoder in {encoder_dir} (config.json missing)")
    text_dtype = torch.float32 if dtype == torch.float16 else dtype  # Gemma overflows in fp16
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        config = AutoConfig.from_pretrained(encoder_dir)
        config.is_encoder_decoder = False
    except Exception as err:  # noqa: BLE001 - any loader failure is one clear message
        raise ModelLoadError(f"cannot load the T5Gemma text encoder from {encoder_dir}: {err}") from None
    shapes = safetensors_shapes(encoder_dir)
    if shapes is not None:  # checked from the file headers, before any weight is read
        with torch.device("meta"):
            expected = T5GemmaEncoderModel(config)
        check_text_encoder(shapes, expected, encoder_dir)
    try:
        encoder, info = T5GemmaEncoderModel.from_pretrained(
            encoder_dir, config=config, dtype=text_dtype, output_loading_info=True
        )
    except Exception as err:  # noqa: BLE001 - any loader failure is one clear message
        raise ModelLoadError(f"cannot load the T5Gemma text encoder from {encoder_dir}: {err}") from None
    unexpected = [k for k in info.get("unexpected_keys", []) if not TEXT_DECODER_HALF.match(k)]
    bad = {"missing": info.get("missing_keys", []), "unexpected": unexpected,
           "wrong shapes": info.get("mismatched_keys", [])}  # fmt: skip
    if any(bad.values()):
        named = "; ".join(f"{label}: {', '.join(map(str, sorted(keys)[:5]))}" for label, keys in bad.items() if keys)
        raise ModelLoadError(f"{encoder_dir}: the T5Gemma weights do not match its config: {named}")
    return encoder.to(device).eval(), tokenizer


TEXT_DECODER_HALF = re.compile(r"^(model\.)?decoder\.|^lm_head\.")  # a full T5Gemma's decoder and LM head: unused
_TEXT_ENCODER_PREFIXES = ("model.encoder.", "encoder.")  # full encoder-decoder / encoder-only spelling


def check_text_encoder(shapes: dict[str, tuple[int, ...]], encoder: torch.nn.Module, folder: Path) -> None:
    """Hold the tensor names and shapes of a T5Gemma folder against ``encoder`` (a ``T5GemmaEncoderModel``,
    meta-built is enough): ``model.encoder.X`` or ``encoder.X`` is the encoder's ``encoder.X``, a decoder-half
    name (``TEXT_DECODER_HALF``) is skipped, anything else is unexpected. Every problem is named, in the file's
    spelling, in one ModelLoadError."""
    expected = {key: tuple(t.shape) for key, t in encoder.state_dict().items()}
    found: dict[str, str] = {}  # encoder key -> the file's name for it
    problems: dict[str, list[str]] = {"missing keys": [], "unexpected keys": [], "wrong shapes": []}
    for name in sorted(shapes):
        if TEXT_DECODER_HALF.match(name):
            continue
        prefix = next((p for p in _TEXT_ENCODER_PREFIXES if name.startswith(p)), None)
        key = "encoder." + name[len(prefix) :] if prefix else None
        if key is None or key not in expected or key in found:
            problems["unexpected keys"].append(name)
            continue
        found[key] = name
        if tuple(shapes[name]) != expected[key]:
            problems["wrong shapes"].append(f"{name} {tuple(shapes[name])} (expected {expected[key]})")
    spelling = next(iter(found.values()), "model.encoder.")
    prefix = "model.encoder." if spelling.startswith("model.encoder.") else "encoder."
    problems["missing keys"] = [prefix + k[len("encoder.") :] for k in sorted(expected) if k not in found]
    if any(problems.values()):
        raise ModelLoadError(f"{folder}: the T5Gemma weights do not match its config: {summarize(problems)}")


def safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Name -> shape of every tensor in a transformers folder's safetensors file(s), from their headers (no
    weights read); None when the folder has no safetensors weights."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({folder / name for name in read_json(index).get("weight_map", {}).values()})
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        return None
    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as file:
                shapes.update({key: tuple(file.get_slice(key).get_shape()) for key in file.keys()})  # noqa: SIM118
        except Exception as err:  # noqa: BLE001 - any reader failure is one clear message
            raise ModelLoadError(f"cannot read {path}: {err}") from None
    return shapes
