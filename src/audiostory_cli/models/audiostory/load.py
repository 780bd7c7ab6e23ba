"""Loading the released AudioStory checkpoint (``TencentARC/AudioStory-3B``) as one bundle: its LLM (LoRA
merged), query tokens, projectors, fusion and Flux detokenizer, into our planner (``planner.py``),
conditioner (``fusion.py``) and TangoFlux decoder.

Accepted layout: one folder (a local path, ``checkpoints/AudioStory-3B/`` or the hub id), holding
what upstream's ``evaluate/inference.py`` reads from several places::

    config.yaml                        upstream's Hydra config; read: llm_model.peft_config.{r, lora_alpha,
                                       target_modules, modules_to_save}, llm_model.vocab_size,
                                       llm_model.model.pretrained_model_name_or_path (its last part names the
                                       base-LLM folder below), agent_model.{t5_feature_scale, model_dims,
                                       *_resampler*}, train_dataset.datapipes[0].{num_t5_out_tokens,
                                       num_aud_out_tokens} (defaults 64 and 8)
    pytorch_model.bin                  the whole trained model (``pytorch_model.safetensors`` or
                                       ``model.safetensors`` also accepted): seedx.llm.base_model.model.*
                                       (Qwen2 + LoRA, peft 0.4 or >= 0.7 key style), seedx.projector.*,
                                       seedx.audio_projector.*, multihead_attention.*, tangoflux.{transformer,
                                       fc, duration_emebdder}.*, optionally tangoflux.text_encoder.* (T5)
    tokenizer/tokenizer.json           the Qwen2.5 tokenizer (base vocabulary and its 22 special tokens)
    tokenizer/added_tokens.json        upstream's 612 protocol token names (their ids are ignored, see
                                       ``protocol.TOKEN_ORDER``)
    Qwen2.5-3B-Instruct/config.json    the base LLM's config (+ generation_config.json: repetition_penalty)
    Flux_detokenizer/config.json       the DiT's sizes (TangoFlux fields)
    Flux_detokenizer/model.safetensors the Oobleck VAE (its config is read off the tensor shapes)
    flan-t5-large/                     T5 encoder + tokenizer (CFG's unconditional text); when absent, the
                                       reference in Flux_detokenizer/config.json (upstream's
                                       ``ckpt/flan-t5-large`` means ``google/flan-t5-large``)

Every key of the weights file is accounted for (``peft_keys.py``): a missing or unexpected key is a
``ModelLoadError`` naming it (upstream loads with ``strict=False`` and never notices).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from torch import nn

from ... import checkpoints
from ...decoders.base import TextTokens
from ...decoders.tangoflux.config import read_tangoflux_config
from ...decoders.tangoflux.decoder import TangoFluxDecoder
from ...decoders.tangoflux.modules import TangoFluxDiT
from ...decoders.tangoflux.weights import load_text_encoder, load_vae
from ...decoders.weights import read_safetensors
from ...errors import ModelLoadError
from ...story import Plan
from .config import AUDIOSTORY_KIND, T5_DIR, WEIGHT_FILES, AudioStoryConfig
from .fusion import QueryFusion, mlp_projector
from .peft_keys import LLM_PREFIX, match_weights
from .planner import AudioStoryPlanner
from .protocol import ProtocolIds, Vocab, load_tokenizer


class AudioStoryModel:
    """The loaded checkpoint: ``planner`` writes plans, ``event_texts`` conditions them, ``decoder`` renders."""

    def __init__(self, *, ref, planner, decoder, semantic_projector, residual_projector, fusion, config) -> None:
        self.ref: str = ref  # the reference it was loaded from
        self.planner: AudioStoryPlanner = planner
        self.decoder: TangoFluxDecoder = decoder  # our TangoFlux decoder: the checkpoint's DiT, the VAE, the T5
        self.semantic_projector: nn.Module = semantic_projector  # seedx.projector: H -> D
        self.residual_projector: nn.Module = residual_projector  # seedx.audio_projector: H -> D
        self.fusion: QueryFusion = fusion
        self.config: AudioStoryConfig = config

    @classmethod
    def load(cls, ref: str, *, device: torch.device, dtype: torch.dtype) -> AudioStoryModel:
        """Load every part from one folder (see the module docstring), checking every weight's key."""
        root = checkpoints.resolve(ref, AUDIOSTORY_KIND)
        if root.is_file():
            raise ModelLoadError(f"AudioStory model '{ref}' is a file; expected a folder ({AUDIOSTORY_KIND.layout})")
        with checkpoints.quiet_loading():
            return _load(ref, root, device, dtype)

    @torch.inference_mode()
    def event_texts(self, plan: Plan) -> dict[int, TextTokens]:
        """Per event index: the fused conditioning (semantic queries attend to residual queries through the
        checkpoint's fusion attention, added back, divided by t5_feature_scale) that fills the decoder's text slot."""
        states = self.planner.query_states(plan)
        dtype = self.fusion.multihead_attention.in_proj_weight.dtype
        semantic = self.semantic_projector(states.semantic.to(dtype))
        residual = self.residual_projector(states.residual.to(dtype))
        fused = self.fusion(semantic, residual).float()
        return {
            event.index: TextTokens(states=fused[i], pooled=fused[i].mean(dim=0)) for i, event in enumerate(plan.events)
        }


def _load(ref: str, root: Path, device: torch.device, dtype: torch.dtype) -> AudioStoryModel:
    # 1. Config, tokenizer, base-LLM config, weights.
    config = AudioStoryConfig.read(root / "config.yaml")
    tokenizer = load_tokenizer(root / "tokenizer")
    llm_config, penalty = _base_llm_config(root, config)
    weights_path = _weights_file(root)
    state = _read_weights(weights_path)
    llm_config.vocab_size = rows = _embedding_rows(state, weights_path)
    _check_sizes(config, llm_config, tokenizer, rows, weights_path)
    # 2. The decoder's fixed parts: the T5 (its width D is the queries' width) and the DiT's config.
    flux_dir = root / "Flux_detokenizer"
    flux_config = read_tangoflux_config(flux_dir / "config.json")
    flux_config = replace(flux_config, text_encoder_name=_t5_reference(root, flux_config.text_encoder_name))
    text_encoder, t5_tokenizer = load_text_encoder(root, flux_config, device, dtype)
    text_dim = text_encoder.config.d_model
    # 3. Empty modules in the checkpoint's shapes; every key of the file matched to them, then assigned.
    llm, fusion, parts = empty_modules(config, llm_config, flux_config, text_dim)
    loaded = match_weights(state, llm, parts, text_encoder, config, weights_path)
    _assign(llm, loaded["llm"], device, dtype)
    llm.model.rotary_emb = type(llm.model.rotary_emb)(config=llm_config).to(device)  # a buffer, not in the file
    if llm_config.tie_word_embeddings:
        llm.lm_head.weight = llm.model.embed_tokens.weight
    for prefix, module in parts.items():
        _assign(module, loaded[prefix], device, dtype)
    if "t5" in loaded:
        text_encoder.load_state_dict(loaded["t5"], strict=False)  # aliases of the tied embedding included
    _check_no_meta(llm, fusion, *parts.values())
    # 4. Our planner and decoder around them.
    vocab = Vocab.of(tokenizer, rows, device)
    ids = ProtocolIds.of(tokenizer, config, root / "tokenizer")
    planner = AudioStoryPlanner(ref, llm.eval(), tokenizer, ids, vocab, repetition_penalty=penalty)
    vae = load_vae(flux_dir / "model.safetensors").to(device=device, dtype=torch.float32).eval()
    render = TangoFluxDecoder(
        ref=ref, config=flux_config, dit=parts["tangoflux."].eval(), vae=vae, text_encoder=text_encoder,
        tokenizer=t5_tokenizer, device=device, dtype=dtype, name="AudioStory (Flux detokenizer)",
    )  # fmt: skip
    return AudioStoryModel(
        ref=ref, planner=planner, decoder=render, semantic_projector=parts["seedx.projector."].eval(),
        residual_projector=parts["seedx.audio_projector."].eval(), fusion=fusion.eval(), config=config,
    )  # fmt: skip


def empty_modules(config: AudioStoryConfig, llm_config, flux_config, text_dim: int):
    """(LLM, fusion, {file prefix: module}) in the checkpoint's shapes, built on the meta device (no memory,
    no init): what ``match_weights`` holds the file's keys against before anything is assigned."""
    with torch.device("meta"):
        llm = transformers.Qwen2ForCausalLM(llm_config)
        fusion = QueryFusion(text_dim, config.t5_feature_scale)
        parts = {
            "seedx.projector.": mlp_projector(llm_config.hidden_size, text_dim),
            "seedx.audio_projector.": mlp_projector(llm_config.hidden_size, text_dim),
            "multihead_attention.": fusion.multihead_attention,
            "tangoflux.": TangoFluxDiT(flux_config, text_dim),
        }
    return llm, fusion, parts


def _check_no_meta(*modules: nn.Module) -> None:
    for module in modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_meta:
                raise ModelLoadError(f"bug: {type(module).__name__}.{name} was left without a value")


def _base_llm_config(root: Path, config: AudioStoryConfig):
    """The base LLM's config (its weights all come from the checkpoint) and its repetition penalty."""
    folder = root / config.base_llm_dir
    if not (folder / "config.json").exists():
        raise ModelLoadError(
            f"AudioStory model {root} lacks {config.base_llm_dir}/config.json (the base LLM's config)",
            hint=f"copy config.json and generation_config.json of Qwen/{config.base_llm_dir} there",
        )
    try:
        llm_config = transformers.AutoConfig.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {err}") from None
    if llm_config.model_type != "qwen2":
        raise ModelLoadError(f"{folder / 'config.json'}: model_type {llm_config.model_type!r}, expected 'qwen2'")
    penalty = 1.0
    if (folder / "generation_config.json").exists():
        penalty = float(json.loads((folder / "generation_config.json").read_text()).get("repetition_penalty", 1.0))
    return llm_config, penalty


def _t5_reference(root: Path, name: str) -> str:
    """The T5 folder inside the checkpoint, a path relative to it, or a hub id (upstream's local
    ``ckpt/flan-t5-large`` means ``google/flan-t5-large``)."""
    for candidate in (root / T5_DIR, root / name):
        if candidate.is_dir():
            return str(candidate)
    if name.startswith("ckpt/"):
        return "google/" + name.rsplit("/", 1)[-1]
    return name


def _weights_file(root: Path) -> Path:
    for name in WEIGHT_FILES:
        if (root / name).is_file():
            return root / name
    raise ModelLoadError(
        f"AudioStory model {root} has no weights file ({' or '.join(WEIGHT_FILES)})",
        hint=f"expected layout: {AUDIOSTORY_KIND.layout}",
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {path}: {err}") from None


def _embedding_rows(state: dict[str, torch.Tensor], path: Path) -> int:
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensor = state.get(LLM_PREFIX + name)
        if tensor is not None:
            return tensor.shape[0]
    raise ModelLoadError(f"{path}: no {LLM_PREFIX}model.embed_tokens.weight or lm_head.weight")


def _check_sizes(config: AudioStoryConfig, llm_config, tokenizer, rows: int, path: Path) -> None:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if rows < size:
        raise ModelLoadError(f"{path}: the embedding has {rows} rows but the tokenizer has {size} tokens")
    if config.vocab_size is not None and config.vocab_size != rows:
        raise ModelLoadError(
            f"{path}: the embedding has {rows} rows but config.yaml says vocab_size {config.vocab_size}"
        )
    if config.model_dims is not None and config.model_dims != llm_config.hidden_size:
        raise ModelLoadError(
            f"config.yaml says model_dims {config.model_dims} but the base LLM's hidden_size is {llm_config.hidden_size}"
        )


def _assign(module: nn.Module, state: dict[str, torch.Tensor], device, dtype) -> None:
    """Fill a module built on the meta device with the file's tensors, cast once each (tied ones stay one)."""
    converted: dict[int, torch.Tensor] = {}
    for key, tensor in state.items():
        if id(tensor) not in converted:
            converted[id(tensor)] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
        state[key] = converted[id(tensor)]
    module.load_state_dict(state, strict=True, assign=True)

