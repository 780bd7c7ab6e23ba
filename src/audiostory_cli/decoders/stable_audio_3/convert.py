"""Stability's published Stable Audio 3 layout -> the diffusers components, strictly.

What each hub repo holds (stabilityai/stable-audio-3-*): ``model_config.json`` (stable-audio-tools' format:
``model.pretransform`` the SAME autoencoder, ``model.conditioning`` the T5Gemma prompt and the
``seconds_total`` number conditioner, ``model.diffusion`` the DiT), ``model.safetensors`` (the DiT under
``model.model.``, SAME under ``pretransform.model.``, the conditioner tensors under ``conditioner.conditioners.``;
Small 685 tensors, Medium 997) and ``t5gemma-b-b-ul2/`` (the frozen text encoder, a transformers folder).

Every tensor is mapped by the rules below, none may be left over, every shape is checked against the module
built from the config, and the first offenders are named in one ``ModelLoadError``. What changes on the way:
the differential self-attention ``to_qkv`` rows go from ``[q | k | v | q2 | k2]`` to diffusers'
``[q1 | q2 | k1 | k2 | v]``; the feed-forward and norm names follow diffusers; the prompt's learned padding
vector moves into the DiT (``prompt_padding_embedding``); SAME's ``noise_scaling_factor`` (zero channels) and
its per-layer rope ``inv_freq`` buffers are dropped after checking they hold what diffusers recomputes.
SAME-L becomes diffusers' ``AutoencoderSAME``; SAME-S (chunked attention, kernel-3 decoder mapping) our
``AutoencoderSameS``.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelLoadError
from ..weights import summarize

CONFIG_FILE = "model_config.json"  # stable-audio-tools' model config
WEIGHTS_FILE = "model.safetensors"  # DiT + SAME + conditioner tensors, float32
TEXT_FOLDER = "t5gemma-b-b-ul2"  # the T5Gemma encoder folder beside them
DIT, VAE, DURATION = "transformer", "vae", "duration_embedder"  # component names, as in diffusers' model_index
SAME_L, SAME_S = "AutoencoderSAME", "AutoencoderSameS"  # the two VAE classes

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StabilityConfig:
    """What the converter and the decoder need from ``model_config.json``."""

    sample_rate: int  # samples per second of the audio
    max_samples: int  # ``sample_size``: the longest clip one denoising pass renders, in samples
    distilled: bool  # ``diffusion_objective == "rf_denoiser"``: 8 ping-pong steps, CFG baked in
    transformer: dict  # StableAudio3DiTModel kwargs
    vae_class: str  # SAME_L or SAME_S
    vae: dict  # kwargs of that VAE class
    duration: dict  # StableAudio3DurationEmbedder kwargs
    text_max_tokens: int  # the prompt is padded / cut to this many T5Gemma tokens
    text_folder: str  # folder of the T5Gemma encoder, relative to the checkpoint
    learned_padding: bool  # padding tokens replaced by a learned vector (else zeros)
    inpaint_input: bool  # the DiT takes ``local_add_cond`` (inpaint mask + masked latents) on every pass
    auto_scale: bool = False  # the VAE bottleneck's ``auto_scale``: the file must hold its ``running_std``


@dataclass(frozen=True)
class SA3Setup:
    """What the decoder needs to know besides its modules, read from the checkpoint's config files."""

    sample_rate: int  # samples per second of the audio
    max_frames: int  # latent frames of the longest clip one pass renders (the model's window)
    frame_multiple: int  # a pass denoises a multiple of this many frames (SAME-S: one attention chunk)
    stochastic: bool  # ping-pong sampling (distilled checkpoints) instead of deterministic Euler
    text_max_tokens: int  # prompts are padded (with the learned vector) / cut to this many tokens
    inpaint_input: bool  # the DiT takes the inpainting input (mask + masked latents) on every pass


def read_config(folder: Path) -> StabilityConfig:
    """Parse ``model_config.json``; a field this converter cannot honour is a ModelLoadError naming it."""
    path = folder / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
        return parse_config(raw)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ModelLoadError(f"cannot read {path}: {type(err).__name__}: {err}") from None


def parse_config(raw: dict) -> StabilityConfig:
    """The parsed ``model_config.json`` (a dict); a field this converter cannot honour is a ModelLoadError."""
    model, diffusion = raw["model"], raw["model"]["diffusion"]
    dit = diffusion["config"]
    transformer_type = dit.get("transformer_type", "continuous_transformer")
    _require("model.diffusion.config.transformer_type", transformer_type, "continuous_transformer")
    _require("model.diffusion.config.global_cond_type", dit.get("global_cond_type"), "adaLN")
    _require("model.diffusion.config.timestep_features_type", dit.get("timestep_features_type"), "expo")
    _require("model.diffusion.config.patch_size", dit.get("patch_size", 1), 1)
    _require("model.diffusion.config.timestep_features_logsnr", dit.get("timestep_features_logsnr", False), False)
    cross = diffusion.get("cross_attention_cond_ids")
    _require("model.diffusion.cross_attention_cond_ids", cross, ["prompt", "seconds_total"])
    _require("model.diffusion.global_cond_ids", diffusion.get("global_cond_ids"), ["seconds_total"])
    local = diffusion.get("local_add_cond_ids", [])
    if local:
        _require("model.diffusion.local_add_cond_ids", local, ["inpaint_mask", "inpaint_masked_input"])
    transformer = dict(
        io_channels=dit["io_channels"], patch_size=1, embed_dim=dit["embed_dim"], depth=dit["depth"],
        num_heads=dit["num_heads"], cond_token_dim=dit["cond_token_dim"], global_cond_dim=dit["global_cond_dim"],
        local_add_cond_dim=dit.get("local_add_cond_dim") or dit["io_channels"] + 1,
        timestep_features_dim=dit.get("timestep_features_dim", 256), ff_mult=dit.get("ff_kwargs", {}).get("mult", 4),
        num_memory_tokens=dit.get("num_memory_tokens", 0),
        use_differential_attention=bool(dit.get("attn_kwargs", {}).get("differential", False)),
    )  # fmt: skip
    conditioners = {c["id"]: c for c in model["conditioning"]["configs"]}
    prompt, seconds = conditioners["prompt"], conditioners["seconds_total"]
    _require("model.conditioning.configs[prompt].type", prompt["type"], "t5gemma")
    _require("model.conditioning.configs[seconds_total].config.fourier_features_type",
             seconds["config"].get("fourier_features_type"), "expo")  # fmt: skip
    padding = prompt["config"].get("padding_mode", "zero")
    if padding not in ("zero", "learned") or prompt["config"].get("project_out"):
        raise ModelLoadError(
            f"model_config.json: prompt conditioner padding_mode {padding!r} / project_out not supported"
        )
    vae_class, vae = _vae_kwargs(model["pretransform"]["config"], raw["sample_rate"])
    bottleneck = model["pretransform"]["config"].get("bottleneck") or {}
    return StabilityConfig(
        sample_rate=int(raw["sample_rate"]), max_samples=int(raw["sample_size"]),
        distilled=diffusion.get("diffusion_objective") == "rf_denoiser", transformer=transformer,
        vae_class=vae_class, vae=vae,
        duration=dict(output_dim=model["conditioning"]["cond_dim"], min_val=float(seconds["config"].get("min_val", 0)),
                      max_val=float(seconds["config"].get("max_val", 1))),
        text_max_tokens=int(prompt["config"].get("max_length", 128)), text_folder=TEXT_FOLDER,
        learned_padding=padding == "learned", inpaint_input=bool(local) and "local_add_cond_dim" in dit,
        auto_scale=bool((bottleneck.get("config") or {}).get("auto_scale", False)),
    )  # fmt: skip


def _vae_kwargs(ae: dict, sample_rate: int) -> tuple[str, dict]:
    enc, dec = ae["encoder"]["config"], ae["decoder"]["config"]
    for name in ("conformer", "layer_scale", "feat_scale", "cross_attn"):
        if enc.get(name) or dec.get(name):
            raise ModelLoadError(f"model_config.json: SAME option {name} is not supported")
    if not enc.get("dyt", True):
        raise ModelLoadError("model_config.json: SAME with dyt=false is not supported")
    patch = ae["pretransform"]["config"]
    levels = len(enc["strides"])
    common = dict(
        audio_channels=int(patch["channels"]), patch_size=int(patch["patch_size"]), latent_dim=int(ae["latent_dim"]),
        dim_heads=int(enc.get("dim_heads", 128)), ff_mult=int(enc.get("ff_mult", 3)), sampling_rate=int(sample_rate),
    )  # fmt: skip
    sinusoidal_enc = list(enc.get("sinusoidal_blocks", [0] * levels))
    sinusoidal_dec = list(dec.get("sinusoidal_blocks", [0] * levels))
    if enc.get("sliding_window") is None:  # SAME-S: chunked attention
        return SAME_S, dict(
            common, channels=int(enc["channels"]), c_mults=list(enc["c_mults"]), strides=list(enc["strides"]),
            transformer_depths=list(enc["transformer_depths"]), differential=bool(enc.get("differential", True)),
            chunk_size=int(enc.get("chunk_size", 128)),
            chunk_midpoint_shift=bool(enc.get("chunk_midpoint_shift", False)),
            encoder_mapping_kernel=3 if enc.get("conv_mapping") else 1,
            decoder_mapping_kernel=3 if dec.get("conv_mapping") else 1,
            encoder_sinusoidal_blocks=sinusoidal_enc, decoder_sinusoidal_blocks=sinusoidal_dec,
            variable_stride=bool(enc.get("variable_stride", False)),
        )  # fmt: skip
    window = list(enc["sliding_window"])
    if enc.get("conv_mapping") or dec.get("conv_mapping") or not enc.get("variable_stride") or len(set(window)) != 1:
        raise ModelLoadError("model_config.json: a sliding-window SAME needs conv_mapping off, variable_stride "
                             "on and a symmetric sliding_window (as SAME-L)")  # fmt: skip
    return SAME_L, dict(
        common, encoder_channels=int(enc["channels"]), encoder_c_mults=list(enc["c_mults"]),
        encoder_strides=list(enc["strides"]), encoder_transformer_depths=list(enc["transformer_depths"]),
        use_differential_attention=bool(enc.get("differential", True)), sliding_window=int(window[0]),
        encoder_sinusoidal_blocks=sinusoidal_enc, decoder_sinusoidal_blocks=sinusoidal_dec,
    )  # fmt: skip


def _require(field: str, value: Any, expected: Any) -> None:
    if value != expected:
        raise ModelLoadError(
            f"model_config.json: {field} = {json.dumps(value)}; this converter reads {json.dumps(expected)}"
        )


# --- building the components ---------------------------------------------------------------------------


def build_components(config: StabilityConfig) -> dict[str, torch.nn.Module]:
    """The diffusers modules ``config`` describes (random init; ``load_original`` fills them)."""
    from diffusers import AutoencoderSAME, StableAudio3DiTModel
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import (
        StableAudio3DurationEmbedder,
    )

    from .same_s import AutoencoderSameS

    vae_class = AutoencoderSAME if config.vae_class == SAME_L else AutoencoderSameS
    with warnings.catch_warnings():  # diffusers' SAME builds its convs with the deprecated weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        return {
            DIT: StableAudio3DiTModel(**config.transformer),
            VAE: vae_class(**config.vae),
            DURATION: StableAudio3DurationEmbedder(**config.duration),
        }


# --- the key mapping, both ways --------------------------------------------------------------------------

_DIT_TOP = ("memory_tokens", "rotary_pos_emb.", "global_cond_embedder.")  # under the inner ``transformer.``
_DIT_INNER = [("ff.ff.0.proj.", "ff.proj_in."), ("ff.ff.2.", "ff.proj_out.")]
_TRB_INNER = [("pre_norm.", "norm_attn."), ("self_attn.", "attn."), ("ff_norm.", "norm_ff."), *_DIT_INNER]
_PADDING = "conditioner.conditioners.prompt.padding_embedding"
_DURATION = "conditioner.conditioners.seconds_total.embedder.embedding.1."
_ROPE = re.compile(r"^pretransform\.model\.(en|de)coder\.layers\.\d+\.transformers\.\d+\.rope\.inv_freq$")
NOISE_SCALE_KEY = "pretransform.model.bottleneck.noise_scaling_factor"


def _swap(text: str, pairs, reverse: bool = False) -> str:
    for a, b in pairs:
        a, b = (b, a) if reverse else (a, b)
        if text.startswith(a):
            return b + text[len(a) :]
    return text


def to_target(key: str, levels: int) -> tuple[str, str] | None:
    """Stability key -> (component, diffusers key); None for a key no rule maps."""
    if key == _PADDING:
        return DIT, "prompt_padding_embedding"
    if key.startswith(_DURATION):
        return DURATION, "linear." + key[len(_DURATION) :]
    if key.startswith("model.model."):
        rest = key[len("model.model.") :]
        if rest.startswith("transformer.layers."):
            index, _, inner = rest[len("transformer.layers.") :].partition(".")
            return DIT, f"transformer_blocks.{index}.{_swap(inner, _DIT_INNER)}"
        if rest.startswith("transformer."):
            inner = rest[len("transformer.") :]
            inner = _swap(inner, [("project_in.", "proj_in."), ("project_out.", "proj_out.")])
            return (DIT, inner) if inner.startswith(_DIT_TOP + ("proj_in.", "proj_out.")) else None
        return DIT, rest
    if not key.startswith("pretransform.model."):
        return None
    rest = key[len("pretransform.model.") :]
    match = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.*)$", rest)
    if match:
        side, index, inner = match.group(1), int(match.group(2)), match.group(3)
        proj = index == (levels + 1 if side == "encoder" else 1)
        if proj:
            return VAE, f"{side}.proj.{inner}"
        block = index if side == "encoder" else index - 3
        if not 0 <= block < levels:
            return None
        if inner.startswith("transformers."):
            number, _, tail = inner[len("transformers.") :].partition(".")
            inner = f"transformers.{number}.{_swap(tail, _TRB_INNER)}"
        return VAE, f"{side}.blocks.{block}.{inner}"
    if rest.startswith("bottleneck."):
        return VAE, _swap(rest, [("bottleneck.scaling_factor", "bottleneck.scale")])
    return None


def to_source(component: str, key: str, levels: int) -> str:
    """(component, diffusers key) -> the Stability key it comes from (inverse of ``to_target``)."""
    if component == DURATION:
        return _DURATION + key[len("linear.") :]
    if component == DIT:
        if key == "prompt_padding_embedding":
            return _PADDING
        if key.startswith("transformer_blocks."):
            index, _, inner = key[len("transformer_blocks.") :].partition(".")
            return f"model.model.transformer.layers.{index}.{_swap(inner, _DIT_INNER, reverse=True)}"
        if key.startswith(_DIT_TOP + ("proj_in.", "proj_out.")):
            projections = [("project_in.", "proj_in."), ("project_out.", "proj_out.")]
            return "model.model.transformer." + _swap(key, projections, reverse=True)
        return "model.model." + key
    side, _, rest = key.partition(".")
    if side == "bottleneck":
        return "pretransform.model." + _swap(key, [("bottleneck.scaling_factor", "bottleneck.scale")], reverse=True)
    if rest.startswith("proj."):
        index = levels + 1 if side == "encoder" else 1
        return f"pretransform.model.{side}.layers.{index}.{rest[len('proj.') :]}"
    block, _, inner = rest[len("blocks.") :].partition(".")
    index = int(block) if side == "encoder" else int(block) + 3
    if inner.startswith("transformers."):
        number, _, tail = inner[len("transformers.") :].partition(".")
        inner = f"transformers.{number}.{_swap(tail, _TRB_INNER, reverse=True)}"
    return f"pretransform.model.{side}.layers.{index}.{inner}"


def qkv_to_diffusers(weight: torch.Tensor) -> torch.Tensor:
    """Fused differential self-attention rows ``[q | k | v | q2 | k2]`` -> ``[q1 | q2 | k1 | k2 | v]``."""
    import torch

    q, k, v, q2, k2 = weight.chunk(5, dim=0)
    return torch.cat([q, q2, k, k2, v], dim=0)


def qkv_to_stability(weight: torch.Tensor) -> torch.Tensor:
    """Inverse of ``qkv_to_diffusers``."""
    import torch

    q, q2, k, k2, v = weight.chunk(5, dim=0)
    return torch.cat([q, k, v, q2, k2], dim=0)


def is_differential_qkv(component: str, key: str, config: StabilityConfig) -> bool:
    if not key.endswith("to_qkv.weight"):
        return False
    if component == DIT:
        return config.transformer["use_differential_attention"]
    return bool(config.vae.get("use_differential_attention", config.vae.get("differential", True)))


def levels_of(config: StabilityConfig) -> int:
    return len(config.vae.get("encoder_strides", config.vae.get("strides", [])))


# --- the strict conversion ------------------------------------------------------------------------------


def convert_state(
    state: dict[str, torch.Tensor], config: StabilityConfig, modules: dict[str, torch.nn.Module], source: Path
) -> dict[str, dict[str, torch.Tensor]]:
    """Stability's tensors -> one state dict per component, checked against ``modules``; every problem
    (unmapped key, key no module has, missing key, wrong shape, unexpected dropped value) named in one error."""
    levels = levels_of(config)
    targets = {name: module.state_dict() for name, module in modules.items()}  # once: each call walks the module
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}
    problems: dict[str, list[str]] = {"unexpected keys": [], "missing keys": [], "wrong shapes": [], "bad values": []}
    for key in sorted(state):
        tensor = state[key]
        if _ROPE.match(key) or key == NOISE_SCALE_KEY:
            if not _droppable(key, tensor):
                problems["bad values"].append(key)
            continue
        target = to_target(key, levels)
        if target is None or target[1] not in targets[target[0]]:
            problems["unexpected keys"].append(key)
            continue
        component, name = target
        if is_differential_qkv(component, name, config):
            tensor = qkv_to_diffusers(tensor) if tensor.shape[0] % 5 == 0 else tensor
        out[component][name] = tensor
    for component in modules:
        for name, expected in targets[component].items():
            if name not in out[component]:
                if not is_computed(component, name, config):
                    problems["missing keys"].append(to_source(component, name, levels))
            elif out[component][name].shape != expected.shape:
                problems["wrong shapes"].append(
                    f"{to_source(component, name, levels)} {tuple(state[to_source(component, name, levels)].shape)}"
                    f" (expected {tuple(expected.shape)})"
                )
    if any(problems.values()):
        raise ModelLoadError(f"{source} does not match its {CONFIG_FILE}: {summarize(problems)}")
    return out


def _droppable(key: str, tensor: torch.Tensor) -> bool:
    """A dropped tensor must hold nothing diffusers would not recompute: zero noise channels; rope
    frequencies ``10000 ** (-2i / d)``."""
    import torch

    if key == NOISE_SCALE_KEY:
        return tensor.numel() == 0
    if tensor.is_meta:  # shapes only (a dry run of the mapping): no values to check
        return True
    dim = 2 * tensor.numel()
    expected = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    return torch.allclose(tensor.float(), expected, rtol=1e-5)


def is_computed(component: str, name: str, config: StabilityConfig) -> bool:
    """Target tensors the Stability file does not hold: buffers diffusers computes, and what a config
    without them leaves at its no-op value (zero padding vector, unused inpaint projection, unit std). With
    ``auto_scale`` on (every published config) the VAE's ``running_std`` is learnt: the file must hold it."""
    if component == DURATION and name == "freqs":
        return True
    if component == DIT and name == "prompt_padding_embedding":
        return not config.learned_padding
    if component == DIT and ".to_local_embed." in name:
        return not config.inpaint_input
    if component == VAE and name == "bottleneck.running_std":
        return not config.auto_scale
    return False

