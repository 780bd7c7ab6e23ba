"""The checkpoint's weight keys -> our modules: peft's LoRA merged (``W + B @ A * alpha / r``),
``modules_to_save`` copies taken over the frozen originals, the tied embedding filled in from whichever name
holds it; every key accounted for, misfits named in the file's own spelling."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...decoders.weights import mismatches
from ...errors import ModelLoadError
from .config import AudioStoryConfig

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


def match_weights(state, llm, parts, text_encoder, config: AudioStoryConfig, path: Path) -> dict[str, dict]:
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
    found = mismatches(expected, state, prefix)
    problems.missing += found["missing keys"]
    problems.unexpected += found["unexpected keys"]
    problems.wrong += found["wrong shapes"]
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

