"""The Stable Audio 3 backend (stabilityai/stable-audio-3-*): ``detect``, ``describe``, ``load`` and ``convert``.

Two layouts, told apart by their files:

- diffusers': ``model_index.json`` naming ``StableAudio3Pipeline``, with ``transformer/``, ``vae/``,
  ``duration_embedder/``, ``scheduler/``, ``text_encoder/`` and ``tokenizer/`` folders;
- Stability's own, what the hub holds: ``model_config.json``, ``model.safetensors`` and ``t5gemma-b-b-ul2/``.
  It converts on load, strictly (``convert.py``); ``convert`` writes the diffusers layout once.

Its defaults come from the checkpoint: the distilled models (``rf_denoiser`` / a stochastic scheduler) take
8 ping-pong steps with guidance 1.0 (CFG baked in); the ``-base`` models 100 Euler steps with guidance 7.0
(Stability's advice for them). The window is the model's longest duration (``sample_size``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import InputError, ModelLoadError
from ..base import DecoderCaps
from .convert import (
    CONFIG_FILE,
    DURATION,
    SAME_L,
    SAME_S,
    TEXT_FOLDER,
    VAE,
    WEIGHTS_FILE,
    SA3Setup,
    StabilityConfig,
    read_config,
    summarize,
)

if TYPE_CHECKING:
    import torch

    from .decoder import StableAudio3Decoder

NAME = "stable-audio-3"
LAYOUT = (
    "a Stable Audio 3 folder: Stability's model_config.json, model.safetensors and t5gemma-b-b-ul2/, "
    "or diffusers' model_index.json (StableAudio3Pipeline) with its component folders"
)
PIPELINE_CLASS = "StableAudio3Pipeline"
SAME_S_MODULE = "audiostory_cli.decoders.stable_audio_3.same_s"  # where model_index.json finds AutoencoderSameS
BASE_GUIDANCE = 7.0  # guidance of the non-distilled (-base) checkpoints: Stability's CLI advice
MAX_TEXT_TOKENS = 256  # the pipeline's cap on T5Gemma tokens
WEIGHTS = "diffusion_pytorch_model.safetensors"  # a diffusers component's weights
REFERENCE_NORM_EPS = 1e-5  # eps of the DiT blocks' RMS norms in stable-audio-tools (RMSNorm's default)


ORIGINAL_FILES = (CONFIG_FILE, WEIGHTS_FILE, TEXT_FOLDER + "/")  # Stability's layout
DIFFUSERS_FILES = (
    "model_index.json", "transformer/", "vae/", "duration_embedder/", "scheduler/", "text_encoder/", "tokenizer/",
)  # fmt: skip


def detect(folder: Path) -> bool:
    return (_is_original(folder) or _is_diffusers(folder)) and not missing_files(folder)


def missing_files(folder: Path) -> list[str]:
    """The files of the layout this folder's config names that it lacks (else [])."""
    names = ORIGINAL_FILES if _is_original(folder) else DIFFUSERS_FILES if _is_diffusers(folder) else ()
    present = [(folder / n).is_dir() if n.endswith("/") else (folder / n).is_file() for n in names]
    return [name for name, there in zip(names, present, strict=True) if not there]


def _is_original(folder: Path) -> bool:
    """Stability's layout, by its config file (the weights may be missing: ``missing_files`` says)."""
    return (folder / CONFIG_FILE).is_file()


def _is_diffusers(folder: Path) -> bool:
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name") == PIPELINE_CLASS
    except (OSError, ValueError, AttributeError):
        return False


def describe(folder: Path) -> DecoderCaps:
    """Caps from config files only (no weights read)."""
    setup, text_width, channels = _setup(folder)
    stochastic = setup.stochastic
    return DecoderCaps(
        name="Stable Audio 3", sample_rate=setup.sample_rate, channels=channels,
        window_s=setup.max_frames * _hop(folder) / setup.sample_rate, text_width=text_width,
        default_steps=8 if stochastic else 100, default_guidance=1.0 if stochastic else BASE_GUIDANCE,
        windows=("auto",), continuation="latent", hop_samples=_hop(folder), frame_multiple=setup.frame_multiple,
        round_head_end_up=True,
    )  # fmt: skip


def load(ref: str, folder: Path, *, device: torch.device, dtype: torch.dtype) -> StableAudio3Decoder:
    """Load either layout strictly; the DiT in ``dtype``, the VAE and duration embedder in fp32."""
    import torch

    from ...checkpoints import quiet_loading
    from .decoder import StableAudio3Decoder

    caps = describe(folder)
    setup, _, _ = _setup(folder)
    with quiet_loading():
        modules = _original_modules(folder) if _is_original(folder) else _diffusers_modules(folder)
        encoder_dir, tokenizer_dir = _text_dirs(folder)
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
    if _is_diffusers(folder):
        raise InputError(f"{folder} is already in the diffusers layout: there is nothing to convert")
    if not _is_original(folder) or missing_files(folder):
        raise InputError(f"{folder} is not in Stability's Stable Audio 3 layout ({', '.join(ORIGINAL_FILES)})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config = read_config(folder)
        with quiet_loading():
            modules = _original_modules(folder)
            cpu = torch.device("cpu")
            text_encoder, tokenizer = load_text_encoder(*_text_dirs(folder), device=cpu, dtype=torch.float32)
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
    state = read_tensors(folder / WEIGHTS_FILE)
    converted = convert_state(state, config, modules, folder / WEIGHTS_FILE)
    for name, module in modules.items():
        expected = module.state_dict()
        values = {key: _default(name, key, t, module) for key, t in expected.items() if key not in converted[name]}
        module.load_state_dict({**values, **converted[name]}, strict=True, assign=True)
        materialize_buffers(module)
        module.eval()
    return config, modules


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, each copied once into its own (aligned) memory: the modules take
    them as they are, and a tensor left at the file's offset would round differently in matmuls."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            return {key: file.get_tensor(key).clone() for key in file.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - any reader failure is one clear message
        raise ModelLoadError(f"cannot read {path}: {err}") from None


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
    """Load ``state`` into a meta-built ``module`` only if every key matches and every shape fits
    (``check_strictly``)."""
    check_strictly(module, state, path)
    module.load_state_dict(state, strict=True, assign=True)
    materialize_buffers(module)


def check_strictly(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every key of ``module`` in ``state``, nothing else, every shape as the module's (meta tensors are
    enough); else one ModelLoadError naming the first offenders."""
    expected = module.state_dict()
    common = set(state) & set(expected)
    problems = {
        "missing keys": sorted(set(expected) - set(state)),
        "unexpected keys": sorted(set(state) - set(expected)),
        "wrong shapes": [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                         for k in sorted(common) if state[k].shape != expected[k].shape],
    }  # fmt: skip
    if any(problems.values()):
        raise ModelLoadError(f"{path} does not match the model: {summarize(problems)}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from None


def _setup(folder: Path) -> tuple[SA3Setup, int, int]:
    """(setup, text width, audio channels) from config files alone."""
    if _is_original(folder):
        config = read_config(folder)
        vae, max_samples, stochastic = config.vae, config.max_samples, config.distilled
        vae_class, tokens, text_width = config.vae_class, config.text_max_tokens, config.transformer["cond_token_dim"]
        inpaint, sample_rate = config.inpaint_input, config.sample_rate
    else:
        index = _read_json(folder / "model_index.json")
        vae = _read_json(folder / "vae" / "config.json")
        vae_class = index.get("vae", [None, SAME_L])[1]
        text_width = _read_json(folder / "transformer" / "config.json")["cond_token_dim"]
        scheduler = index.get("scheduler", [None, ""])[1] or ""
        stochastic = "PingPong" in scheduler or bool(  # newer diffusers name the distilled sampler's class
            _read_json(folder / "scheduler" / "scheduler_config.json").get("stochastic_sampling")
        )
        sample_rate = int(vae.get("sampling_rate", 44100))
        max_val = _read_json(folder / "duration_embedder" / "config.json").get("max_val", 384.0)
        max_samples = int(index.get("_sample_size", max_val * sample_rate))
        tokenizer_config = folder / "tokenizer" / "tokenizer_config.json"
        limit = _read_json(tokenizer_config).get("model_max_length", 0) if tokenizer_config.is_file() else 0
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
    vae = read_config(folder).vae if _is_original(folder) else _read_json(folder / "vae" / "config.json")
    return vae["patch_size"] * _prod(vae.get("strides", vae.get("encoder_strides", [16])))


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


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

    index = _read_json(folder / "model_index.json")
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
        assign_strictly(module, read_tensors(folder / name / WEIGHTS), folder / name / WEIGHTS)
        modules[name] = module.eval()
    return modules


def _text_dirs(folder: Path) -> tuple[Path, Path]:
    if _is_original(folder):
        return folder / TEXT_FOLDER, folder / TEXT_FOLDER
    return folder / "text_encoder", folder / "tokenizer"


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
        files = sorted({folder / name for name in _read_json(index).get("weight_map", {}).values()})
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
