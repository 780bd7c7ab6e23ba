"""The released AudioStory checkpoint's files and ``config.yaml``, with upstream's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ... import checkpoints
from ...errors import ModelLoadError

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

