"""Tiny Stable Audio 3 checkpoints: the diffusers layout and Stability's published layout holding the same
random weights (the Medium architecture: differential-attention DiT, SAME-L), and a Small one (SAME-S,
standard attention) in Stability's layout; ``size="real"`` gives the Small one the real Small-SFX sizes.

The Stability layout follows stable-audio-tools' ``model_config.json`` format and key names (checked against
Stability-AI/stable-audio-3's own modules: the real-size configs below give its 685 / 997 tensors). The
tiny models keep SAME's real hop (patch 256 x stride 16 = 4096 samples, ~10.77 latent frames/s) and a short
window (``TINY_WINDOW_S``) so a long event spans several windows.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from ..decoders.stable_audio_3.convert import (
    DIT,
    NOISE_SCALE_KEY,
    VAE,
    StabilityConfig,
    build_components,
    is_computed,
    is_differential_qkv,
    levels_of,
    parse_config,
    qkv_to_stability,
    to_source,
)
from .common import CORPUS, fill_random

TINY_WINDOW_S = 30  # the tiny models' window (their sample_size), seconds
SAMPLE_RATE = 44100


def _same_config(*, small: bool, real: bool) -> dict:
    """``model.pretransform`` of model_config.json: SAME-S (chunked) or SAME-L (sliding window)."""
    channels, depth, heads, latent = (128 if small else 256, 6 if small else 12, 64, 256) if real else (8, 2, 16, 8)
    common = dict(channels=channels, c_mults=[4 if not real else 6], strides=[16], transformer_depths=[depth],
                  latent_dim=latent, differential=True, variable_stride=True, dim_heads=heads)  # fmt: skip
    chunked = {"sliding_window": None, "chunk_size": 32, "chunk_midpoint_shift": True}  # SAME-S
    common.update(chunked if small else {"sliding_window": [1, 1]})
    encoder = dict(common, in_channels=512)
    own = {"conv_mapping": True} if small else {"sinusoidal_blocks": [8 if real else 1]}
    decoder = dict(common, out_channels=512, **own)
    return {"type": "autoencoder", "config": {
        "encoder": {"type": "same", "config": encoder}, "decoder": {"type": "same", "config": decoder},
        "bottleneck": {"type": "softnorm", "config": {"dim": latent, "auto_scale": True}},
        "pretransform": {"type": "patched", "config": {"channels": 2, "patch_size": 256}},
        "latent_dim": latent, "downsampling_ratio": 4096, "io_channels": 2,
    }}  # fmt: skip


def stability_model_config(*, small: bool, real: bool) -> dict:
    """A model_config.json in stable-audio-tools' format (real: Small-SFX / Medium sizes)."""
    if real:
        dit = (1024, 20, 16, False) if small else (1536, 24, 24, True)
        text, memory, window_s, max_val = 768, 64, 120 if small else 380, 120 if small else 384
    else:
        dit, text, memory, window_s, max_val = (64, 2, 1, not small), 16, 4, TINY_WINDOW_S, TINY_WINDOW_S
    embed, depth, heads, differential = dit
    latent = _same_config(small=small, real=real)["config"]["latent_dim"]
    return {
        "model_type": "diffusion_cond", "sample_rate": SAMPLE_RATE,
        "sample_size": -(-window_s * SAMPLE_RATE // 4096) * 4096,
        "model": {
            "pretransform": _same_config(small=small, real=real),
            "conditioning": {"cond_dim": text, "configs": [
                {"id": "prompt", "type": "t5gemma", "config": {
                    "model_name": "google/t5gemma-b-b-ul2", "model_path": "t5gemma-b-b-ul2",
                    "max_length": 256 if real else 32, "padding_mode": "learned"}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": max_val,
                                                                      "fourier_features_type": "expo"}}]},
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_total"], "global_cond_ids": ["seconds_total"],
                "local_add_cond_ids": ["inpaint_mask", "inpaint_masked_input"], "diffusion_objective": "rf_denoiser",
                "config": {
                    "io_channels": latent, "embed_dim": embed, "depth": depth, "num_heads": heads,
                    "cond_token_dim": text, "global_cond_dim": text, "local_add_cond_dim": latent + 1,
                    "transformer_type": "continuous_transformer",
                    "global_cond_type": "adaLN", "timestep_features_type": "expo", "num_memory_tokens": memory,
                    "norm_type": "rms_norm", "attn_kwargs": {"qk_norm": "rms", "differential": differential},
                    "ff_kwargs": {"mult": 4}}},
            "io_channels": latent,
        },
    }  # fmt: skip


def _tiny_parts(raw: dict, seed: int):
    """The diffusers modules ``raw`` describes, with tame random weights from ``seed``."""
    config = parse_config(raw)
    with torch.random.fork_rng(devices=[]):
        modules = build_components(config)
    for offset, module in enumerate(modules.values()):
        fill_random(module, seed + 10 + offset, gain=1.0)
    no_op_defaults(modules, config)
    with torch.no_grad():
        for module in modules.values():  # no biases: the inputs, not constants, drive the outputs
            for name, param in module.named_parameters():
                if name.endswith("bias") and not name.startswith("bottleneck."):
                    param.zero_()
        dit = modules["transformer"]
        padding = torch.randn(dit.prompt_padding_embedding.shape, generator=torch.Generator().manual_seed(seed))
        dit.prompt_padding_embedding.copy_(padding)
        for block in dit.transformer_blocks:  # adaLN biases small: every gate near sigmoid(1)
            block.to_scale_shift_gate.mul_(0.1)
        _tame_dit(dit, modules["duration_embedder"], seed)
        _tame_vae(modules["vae"], seed)
    return config, modules


def _tame_dit(dit, duration_embedder, seed: int) -> None:
    """Scale the output projection so the random DiT predicts velocities of unit size (random blocks
    otherwise compound to velocities in the hundreds)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, dit.config.io_channels, 32), generator=generator)
    context = torch.randn((1, 8, dit.config.cond_token_dim), generator=generator)
    velocity = dit(latents, torch.tensor([0.5]), encoder_hidden_states=context,
                   global_hidden_states=duration_embedder(torch.tensor([3.0]))).sample  # fmt: skip
    dit.proj_out.weight.mul_(1.0 / velocity.std().clamp(min=1e-6))


def _tame_vae(vae, seed: int) -> None:
    """Soft-norm at identity, zero output tokens, and an output layer scaled so latents of a render's size
    decode to a peak near 0.4."""
    vae.bottleneck.scale.fill_(1.0)
    vae.bottleneck.bias.zero_()
    generator = torch.Generator().manual_seed(seed)
    for name, param in vae.named_parameters():
        if name.endswith("alpha"):
            param.fill_(1.0)  # DynamicTanh slope
        elif name.endswith(("q_norm.beta", "k_norm.beta")):  # the output tokens start at zero, so their
            param.copy_(torch.randn(param.shape, generator=generator))  # queries are this offset: the two
            # differential maps then differ and carry the latents into them (equal queries would cancel)
        elif name.endswith(("beta", "new_tokens")):
            param.zero_()  # no constant path to the output: silence decodes to silence
    vae.decoder.blocks[-1].mapping.bias.zero_()  # else a random bias, not the latents, sets the level
    latents = 1.5 * torch.randn((1, vae.config.latent_dim, 16), generator=torch.Generator().manual_seed(seed))
    peak = vae.decode(latents).sample.abs().max().clamp(min=1e-6)
    vae.decoder.blocks[-1].mapping.weight_g.mul_(0.4 / peak)


def build_text_encoder(path: Path, *, hidden: int, seed: int, real: bool):
    """The ``t5gemma-b-b-ul2/`` folder as every SA3 hub repo ships it: the full T5Gemma encoder-decoder
    (``T5GemmaForConditionalGeneration``, keys ``model.encoder.*`` and ``model.decoder.*``; tiny: one layer
    each, real: T5Gemma-b's 12 layers of 768) with a Gemma-style word-level tokenizer over ``CORPUS``
    (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2 prepended, ``<unk>`` 3), saved as transformers saves them.
    Returns (the encoder half as a ``T5GemmaEncoderModel``, the tokenizer)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import GemmaTokenizerFast, T5GemmaConfig, T5GemmaEncoderModel, T5GemmaForConditionalGeneration

    words = sorted(set(re.findall(r"[a-z0-9']+|[^\sa-z0-9']", CORPUS.lower())))
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = GemmaTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        model_max_length=256,
    )  # fmt: skip
    sizes = (dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, head_dim=64,
                  num_key_value_heads=12) if real else
             dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2,
                  head_dim=8, num_key_value_heads=1))  # fmt: skip
    module = dict(sizes, vocab_size=len(vocab), max_position_embeddings=512, query_pre_attn_scalar=sizes["head_dim"],
                  sliding_window=512, pad_token_id=0, eos_token_id=1, bos_token_id=2)  # fmt: skip
    config = T5GemmaConfig(encoder=module, decoder=module, vocab_size=len(vocab), is_encoder_decoder=False)
    with torch.random.fork_rng(devices=[]):
        encoder = T5GemmaEncoderModel(config)
    fill_random(encoder, seed, gain=1.0)
    full_config = T5GemmaConfig(encoder=module, decoder=module, vocab_size=len(vocab))
    with torch.random.fork_rng(devices=[]):
        full = T5GemmaForConditionalGeneration(full_config)
    fill_random(full.model.decoder, seed + 1000, gain=1.0)  # the decoder half: shipped, never run
    full.model.encoder.load_state_dict(encoder.encoder.state_dict(), strict=True)
    full.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return encoder, tokenizer


def _write_original(path: Path, raw: dict, seed: int, *, real: bool) -> Path:
    from safetensors.torch import save_file

    from ..checkpoints import quiet_loading
    from ..decoders.stable_audio_3.convert import TEXT_FOLDER

    path.mkdir(parents=True, exist_ok=True)
    with quiet_loading():
        config, modules = _tiny_parts(raw, seed)
        (path / "model_config.json").write_text(json.dumps(raw, indent=2) + "\n")
        save_file(stability_state(modules, config), str(path / "model.safetensors"))
        hidden = raw["model"]["conditioning"]["cond_dim"]
        build_text_encoder(path / TEXT_FOLDER, hidden=hidden, seed=seed + 1, real=real)
    return path


def build_tiny_stable_audio_3_original(path: str | Path, *, seed: int = 0) -> Path:
    """Stability's layout (model_config.json, model.safetensors, t5gemma-b-b-ul2/), Medium architecture,
    the same weights as ``build_tiny_stable_audio_3(seed=seed)``."""
    return _write_original(Path(path), stability_model_config(small=False, real=False), seed, real=False)


def build_tiny_stable_audio_3_small(path: str | Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """Stability's layout with the Small architecture (SAME-S, standard attention); ``size="real"``: the
    real Small-SFX sizes (459M DiT, SAME-S, T5Gemma-b's layers; the vocabulary stays the corpus's)."""
    if size not in ("tiny", "real"):
        raise ValueError(f"size = {size!r}: must be 'tiny' or 'real'")
    real = size == "real"
    return _write_original(Path(path), stability_model_config(small=True, real=real), seed, real=real)


def build_tiny_stable_audio_3(path: str | Path, *, seed: int = 0) -> Path:
    """The diffusers layout (model_index.json naming StableAudio3Pipeline, one save_pretrained folder per
    component), holding the weights of ``build_tiny_stable_audio_3_original(seed=seed)``."""
    from ..checkpoints import quiet_loading

    with quiet_loading():
        return _write_diffusers(Path(path), seed)


def _write_diffusers(path: Path, seed: int) -> Path:
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    from ..decoders.stable_audio_3.config import model_index

    raw = stability_model_config(small=False, real=False)
    config, modules = _tiny_parts(raw, seed)
    for name, module in modules.items():
        module.save_pretrained(path / name)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, stochastic_sampling=config.distilled)
    scheduler.save_pretrained(path / "scheduler")
    text = path / ".t5gemma"
    encoder, _ = build_text_encoder(text, hidden=raw["model"]["conditioning"]["cond_dim"], seed=seed + 1, real=False)
    encoder.save_pretrained(path / "text_encoder")  # the encoder half alone, as diffusers' text_encoder/
    tokenizer = AutoTokenizer.from_pretrained(text)
    tokenizer.model_max_length = config.text_max_tokens  # as the pipeline reads it: the prompt's token count
    tokenizer.save_pretrained(path / "tokenizer")
    shutil.rmtree(text)
    index = model_index(config, diffusers.__version__, type(tokenizer).__name__)
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


# --- writing Stability's layout from diffusers modules (the key mapping run backwards) ---------------


def no_op_defaults(modules: dict[str, torch.nn.Module], config: StabilityConfig) -> None:
    """What ``is_computed`` leaves to the module must be its no-op value, not its random init."""
    with torch.no_grad():
        dit = modules[DIT]
        if not config.learned_padding:
            dit.prompt_padding_embedding.zero_()
        if not config.inpaint_input:
            for block in dit.transformer_blocks:
                for param in block.to_local_embed.parameters():
                    param.zero_()
        modules[VAE].bottleneck.running_std.fill_(1.0)


def stability_state(modules: dict[str, torch.nn.Module], config: StabilityConfig) -> dict[str, torch.Tensor]:
    """The inverse: diffusers modules -> tensors spelled as Stability's ``model.safetensors`` (the tiny
    builder writes the published layout with this, so both layouts hold the same weights)."""
    levels = levels_of(config)
    state: dict[str, torch.Tensor] = {}
    for component, module in modules.items():
        for name, tensor in module.state_dict().items():
            if is_computed(component, name, config):
                continue
            if is_differential_qkv(component, name, config):
                tensor = qkv_to_stability(tensor)
            state[to_source(component, name, levels)] = tensor.detach().clone().contiguous()
    vae = modules[VAE]
    for side in ("encoder", "decoder"):
        for i, block in enumerate(getattr(vae, side).blocks):
            index = i if side == "encoder" else i + 3
            for j, layer in enumerate(block.transformers):
                inv = layer.attn.rope.inv_freq
                state[f"pretransform.model.{side}.layers.{index}.transformers.{j}.rope.inv_freq"] = inv.clone()
    state[NOISE_SCALE_KEY] = torch.ones(1, 0, 1)
    state["pretransform.model.bottleneck.running_std"] = vae.bottleneck.running_std.detach().clone()
    return state
