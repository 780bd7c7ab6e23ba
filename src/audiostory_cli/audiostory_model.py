"""The released AudioStory checkpoint (``TencentARC/AudioStory-3B``): its LLM, query tokens, projectors,
fusion and detokenizer, loaded into our ``Planner`` and ``Decoder`` interfaces. The token protocol and the
planner that speaks it are in ``audiostory_protocol``; here the query states it returns are fused:

    query hidden states -> projector / audio_projector -> fusion MHA -> / t5_feature_scale -> Decoder text slot

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
                                       ``audiostory_protocol.TOKEN_ORDER``)
    Qwen2.5-3B-Instruct/config.json    the base LLM's config (+ generation_config.json: repetition_penalty)
    Flux_detokenizer/config.json       the DiT's sizes (TangoFlux fields)
    Flux_detokenizer/model.safetensors the Oobleck VAE (its config is read off the tensor shapes)
    flan-t5-large/                     T5 encoder + tokenizer (CFG's unconditional text); when absent, the
                                       reference in Flux_detokenizer/config.json (upstream's
                                       ``ckpt/flan-t5-large`` means ``google/flan-t5-large``)

Every key of the weights file is accounted for: a missing or unexpected key is a ``ModelLoadError``
naming it (upstream loads with ``strict=False`` and never notices).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import transformers
from torch import nn

from . import checkpoints
from . import decoder as _decoder
from .audiostory_protocol import AudioStoryPlanner, ProtocolIds, _Vocab, load_tokenizer
from .decoder import Decoder, TangoFluxDiT, TextTokens
from .errors import ModelLoadError
from .story import Plan

AUDIOSTORY_KIND = checkpoints.ModelKind(
    role="AudioStory model",
    required=(
        "config.yaml",
        "tokenizer/tokenizer.json",
        "tokenizer/added_tokens.json",
        "Flux_detokenizer/config.json",
        "Flux_detokenizer/model.safetensors",
    ),
    layout="config.yaml, pytorch_model.bin, tokenizer/{tokenizer.json, added_tokens.json}, "
    "Qwen2.5-3B-Instruct/config.json, Flux_detokenizer/{config.json, model.safetensors} and flan-t5-large/, "
    "as TencentARC/AudioStory-3B with upstream's ckpt/ folders placed inside it",
)
WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.safetensors", "model.safetensors")  # first found is read
BASE_LLM_DIR = "Qwen2.5-3B-Instruct"  # base-LLM folder when config.yaml names none
T5_DIR = "flan-t5-large"  # T5 folder inside the checkpoint; else google/flan-t5-large is resolved
FUSION_HEADS = 8  # upstream hard-codes nn.MultiheadAttention(1024, num_heads=8)
# Upstream's inference divides (semantic + MHA(semantic, residual)) once by t5_feature_scale ("inference");
# its training divides both projector outputs by it before the MHA, and the sum again ("training").
FUSION_SCALING = "inference"


@dataclass(frozen=True)
class AudioStoryConfig:
    """What config.yaml says, with upstream's defaults."""

    lora_r: int = 32  # LoRA rank
    lora_alpha: float = 32.0  # LoRA alpha: merged as W + B @ A * alpha / r
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
    modules_to_save: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm", "norm")
    vocab_size: int | None = None  # rows of the resized embedding (152277 for the release)
    base_llm_dir: str = BASE_LLM_DIR  # folder of the base LLM's config.json
    t5_feature_scale: float = 10.0  # the fused queries are divided by it
    model_dims: int | None = None  # LLM width the projectors take
    num_semantic: int = 64  # semantic (<t5_…>) query tokens per clip
    num_residual: int = 8  # residual (<aud_…>) query tokens per clip
    ignored_prefixes: tuple[str, ...] = ()  # keys of modules config.yaml declares but text-to-audio never uses

    @classmethod
    def read(cls, path: Path) -> AudioStoryConfig:
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ModelLoadError(f"cannot read {path}: {err}") from None
        llm, agent = data.get("llm_model") or {}, data.get("agent_model") or {}
        peft, pipes = llm.get("peft_config") or {}, (data.get("train_dataset") or {}).get("datapipes") or [{}]
        base = str((llm.get("model") or {}).get("pretrained_model_name_or_path") or BASE_LLM_DIR)
        unused = ("whisper_resampler_llava", "input_resampler", "output_resampler")
        try:
            return cls(
                lora_r=int(peft.get("r", 32)),
                lora_alpha=float(peft.get("lora_alpha", 32)),
                target_modules=tuple(peft.get("target_modules") or cls.target_modules),
                modules_to_save=tuple(peft.get("modules_to_save") or cls.modules_to_save),
                vocab_size=llm.get("vocab_size"),
                base_llm_dir=base.rstrip("/").rsplit("/", 1)[-1],
                t5_feature_scale=float(agent.get("t5_feature_scale", 10.0)),
                model_dims=agent.get("model_dims"),
                num_semantic=int(pipes[0].get("num_t5_out_tokens", 64)),
                num_residual=int(pipes[0].get("num_aud_out_tokens", 8)),
                ignored_prefixes=tuple(f"seedx.{name}." for name in unused if agent.get(name)),
            )
        except (TypeError, ValueError, AttributeError) as err:
            raise ModelLoadError(f"{path}: unexpected value: {err}") from None


# --- the fusion ----------------------------------------------------------------------------------------


def mlp_projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """Upstream's ``mlp2x_gelu``: Linear, GELU, Linear (keys 0.* and 2.*)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class QueryFusion(nn.Module):
    """Semantic queries attend to their clip's residual queries; the result is added back and scaled."""

    def __init__(self, dim: int, feature_scale: float, scaling: str = FUSION_SCALING) -> None:
        super().__init__()
        if scaling not in ("inference", "training"):
            raise ValueError(f"fusion scaling {scaling!r}: must be 'inference' or 'training'")
        self.multihead_attention = nn.MultiheadAttention(dim, FUSION_HEADS)  # sequence-first, as upstream
        self.feature_scale = feature_scale
        self.scaling = scaling

    def forward(self, semantic: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``semantic`` [clips, N, D], ``residual`` [clips, M, D] (projected) -> fused [clips, N, D]."""
        if self.scaling == "training":
            semantic, residual = semantic / self.feature_scale, residual / self.feature_scale
        query, memory = semantic.transpose(0, 1), residual.transpose(0, 1)
        attended = self.multihead_attention(query, memory, memory, need_weights=False)[0].transpose(0, 1)
        return (semantic + attended) / self.feature_scale


# --- the model -------------------------------------------------------------------------------------------


class AudioStoryModel:
    """The loaded checkpoint: ``planner`` writes plans, ``event_texts`` conditions them, ``decoder`` renders."""

    def __init__(self, *, ref, planner, decoder, semantic_projector, residual_projector, fusion, config) -> None:
        self.ref: str = ref  # the reference it was loaded from
        self.planner: AudioStoryPlanner = planner
        self.decoder: Decoder = decoder  # our TangoFlux decoder: the checkpoint's DiT, the VAE, the T5
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
    flux_config = _decoder.read_tangoflux_config(flux_dir / "config.json")
    flux_config = replace(flux_config, text_encoder_name=_t5_reference(root, flux_config.text_encoder_name))
    text_encoder, t5_tokenizer = _decoder.load_text_encoder(root, flux_config, device, dtype)
    text_dim = text_encoder.config.d_model
    # 3. Empty modules in the checkpoint's shapes; every key of the file matched to them, then assigned.
    with torch.device("meta"):
        llm = transformers.Qwen2ForCausalLM(llm_config)
        fusion = QueryFusion(text_dim, config.t5_feature_scale)
        parts = {
            "seedx.projector.": mlp_projector(llm_config.hidden_size, text_dim),
            "seedx.audio_projector.": mlp_projector(llm_config.hidden_size, text_dim),
            "multihead_attention.": fusion.multihead_attention,
            "tangoflux.": TangoFluxDiT(flux_config, text_dim),
        }
    loaded = _match_weights(state, llm, parts, text_encoder, config, weights_path)
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
    vocab = _Vocab.of(tokenizer, rows, device)
    ids = ProtocolIds.of(tokenizer, config, root / "tokenizer")
    planner = AudioStoryPlanner(ref, llm.eval(), tokenizer, ids, vocab, repetition_penalty=penalty)
    vae = _decoder.load_vae(flux_dir / "model.safetensors").to(device=device, dtype=torch.float32).eval()
    render = Decoder(
        ref=ref, config=flux_config, dit=parts["tangoflux."].eval(), vae=vae, text_encoder=text_encoder,
        tokenizer=t5_tokenizer, device=device, dtype=dtype,
    )  # fmt: skip
    return AudioStoryModel(
        ref=ref, planner=planner, decoder=render, semantic_projector=parts["seedx.projector."].eval(),
        residual_projector=parts["seedx.audio_projector."].eval(), fusion=fusion.eval(), config=config,
    )  # fmt: skip


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
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
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


# --- key matching ---------------------------------------------------------------------------------------

LLM_PREFIX = "seedx.llm.base_model.model."  # peft's PeftModelForCausalLM -> LoraModel -> Qwen2ForCausalLM
T5_PREFIX = "tangoflux.text_encoder."  # the frozen T5, present when the whole module was saved
_LORA = (".lora_A.default.", ".lora_B.default.")
_SAVED, _ORIGINAL, _BASE = ".modules_to_save.default.", ".original_module.", ".base_layer."


@dataclass
class _Problems:
    """Keys of the weights file that do not fit, in the file's own naming."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def raise_if_any(self, path: Path) -> None:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.wrong)):
            if keys:
                keys = sorted(keys)
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
        if parts:
            raise ModelLoadError(
                f"{path} does not match the AudioStory model: {'; '.join(parts)}",
                hint="the file must be the released AudioStory checkpoint (keys seedx.*, multihead_attention.*, tangoflux.*)",
            )


def _match_weights(state, llm, parts, text_encoder, config: AudioStoryConfig, path: Path) -> dict[str, dict]:
    """Split the file's keys by module and check them all; any misfit is one ``ModelLoadError``."""
    problems = _Problems()
    groups: dict[str, dict[str, torch.Tensor]] = {"llm": {}, "t5": {}, **{p: {} for p in parts}}
    for key, tensor in state.items():
        if config.ignored_prefixes and key.startswith(config.ignored_prefixes):
            continue
        prefix = next((p for p in (LLM_PREFIX, T5_PREFIX, *parts) if key.startswith(p)), None)
        if prefix is None:
            problems.unexpected.append(key)
            continue
        group = {LLM_PREFIX: "llm", T5_PREFIX: "t5"}.get(prefix, prefix)
        groups[group][key.removeprefix(prefix)] = tensor
    loaded = {"llm": _merge_llm(groups.pop("llm"), _shapes(llm), config, llm.config.tie_word_embeddings, problems)}
    for prefix, module in parts.items():
        loaded[prefix] = _plain(groups.pop(prefix), _shapes(module), prefix, problems)
    if groups["t5"]:
        t5 = dict(groups["t5"])
        for alias in ("shared.weight", "encoder.embed_tokens.weight"):  # tied in T5: either name will do
            other = "encoder.embed_tokens.weight" if alias == "shared.weight" else "shared.weight"
            if alias not in t5 and other in t5:
                t5[alias] = t5[other]
        loaded["t5"] = _plain(t5, _shapes(text_encoder), T5_PREFIX, problems)
    problems.raise_if_any(path)
    return loaded


def _shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def _plain(state, expected, prefix: str, problems: _Problems) -> dict[str, torch.Tensor]:
    problems.missing += [prefix + k for k in expected if k not in state]
    problems.unexpected += [prefix + k for k in state if k not in expected]
    problems.wrong += [
        f"{prefix}{k} {tuple(v.shape)} (expected {tuple(expected[k])})"
        for k, v in state.items()
        if k in expected and v.shape != expected[k]
    ]
    return {k: v for k, v in state.items() if k in expected}


def _merge_llm(raw, expected, config: AudioStoryConfig, tied: bool, problems: _Problems) -> dict[str, torch.Tensor]:
    """peft keys -> plain Qwen2 keys: LoRA merged (W + B @ A * alpha / r), ``modules_to_save.default``
    taken over ``original_module``, the tied embedding filled in from whichever name holds it."""
    new_style = any(_BASE in k for k in raw)
    lora: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    sources: dict[str, list[tuple[str, torch.Tensor, bool]]] = {}  # name -> [(file key, tensor, is saved copy)]
    originals: dict[str, str] = {}
    for key, tensor in raw.items():
        marker = next((m for m in _LORA if m in key), None)
        if marker is not None:
            module, _, param = key.partition(marker)
            if param == "weight":
                lora.setdefault(module, {})[marker] = (key, tensor)
            else:
                problems.unexpected.append(LLM_PREFIX + key)
        elif _ORIGINAL in key:
            originals[key.replace(_ORIGINAL, ".")] = key
        else:
            name = key.replace(_SAVED, ".").replace(_BASE, ".")
            sources.setdefault(name, []).append((key, tensor, _SAVED in key))
    state = {}
    for name, entries in sources.items():
        entries.sort(key=lambda e: not e[2])  # the modules_to_save copy first: it is what peft ran
        if name not in expected:
            problems.unexpected += [LLM_PREFIX + e[0] for e in entries]
            continue
        state[name] = entries[0][1]
        problems.unexpected += [LLM_PREFIX + e[0] for e in entries[1:]]  # a second copy of one weight
    if tied:  # one matrix under two names; upstream's load lets lm_head's copy win when both are there
        if "lm_head.weight" in state:
            state["model.embed_tokens.weight"] = state["lm_head.weight"]
        elif "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
    _merge_lora(state, lora, expected, config, new_style, problems)
    for name in expected:
        if name not in state:
            problems.missing.append(LLM_PREFIX + _file_name(name, config, new_style))
    problems.wrong += [
        f"{LLM_PREFIX}{_file_name(k, config, new_style)} {tuple(v.shape)} (expected {tuple(expected[k])})"
        for k, v in state.items()
        if v.shape != expected[k]
    ]
    # original_module: the frozen pretrained copies, which peft never runs; they only need a place to be
    problems.unexpected += [LLM_PREFIX + key for name, key in originals.items() if name not in expected]
    return state


def _merge_lora(state, lora, expected, config: AudioStoryConfig, new_style: bool, problems: _Problems) -> None:
    targets = {n.removesuffix(".weight") for n in expected if _is_target(n, config)}
    for module in sorted(targets | set(lora)):
        pair = lora.get(module, {})
        if module + ".weight" not in expected:
            problems.unexpected += [LLM_PREFIX + key for key, _ in pair.values()]
            continue
        for marker in _LORA:
            if marker not in pair:
                problems.missing.append(f"{LLM_PREFIX}{module}{marker}weight")
        name = module + ".weight"
        if len(pair) < 2 or name not in state:
            continue
        (a_key, a), (b_key, b) = pair[_LORA[0]], pair[_LORA[1]]
        weight = state[name]
        if a.shape[0] != config.lora_r or b.shape != (weight.shape[0], a.shape[0]) or a.shape[1] != weight.shape[1]:
            problems.wrong.append(
                f"{LLM_PREFIX}{a_key} {tuple(a.shape)} / {b_key} {tuple(b.shape)} (weight {tuple(weight.shape)}, "
                f"r = {config.lora_r} in config.yaml)"
            )
            continue
        delta = b.float() @ a.float() * (config.lora_alpha / config.lora_r)
        state[name] = (weight.float() + delta).to(weight.dtype)


def _is_target(name: str, config: AudioStoryConfig) -> bool:
    module, _, param = name.rpartition(".")
    return param == "weight" and module.rsplit(".", 1)[-1] in config.target_modules


def _is_saved(name: str, config: AudioStoryConfig) -> bool:
    module = name.rpartition(".")[0]
    return any(module.endswith(m) for m in config.modules_to_save)  # peft 0.4 matches by suffix


def _file_name(name: str, config: AudioStoryConfig, new_style: bool) -> str:
    """How the weights file spells a plain Qwen2 key."""
    module, _, param = name.rpartition(".")
    if _is_saved(name, config):
        return f"{module}{_SAVED}{param}"
    if new_style and module.rsplit(".", 1)[-1] in config.target_modules:
        return f"{module}{_BASE}{param}"
    return name
