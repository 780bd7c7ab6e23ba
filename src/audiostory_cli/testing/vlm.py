"""The tiny describer: a random Qwen2-VL vision-language model (ChatML template with image parts, local BPE
tokenizer, Qwen2-VL image processor) in the transformers layout, loaded like Qwen/Qwen2.5-VL-3B-Instruct
(``AutoModelForImageTextToText``, its tokenizer and image processor). Its text is random; the describer's sentence
constraint makes it a valid description."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .common import fill_random, round_up
from .planner import CHATML_SPECIALS, train_bpe

VISION_SPECIALS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")  # Qwen2-VL's markers
VLM_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyVlmConfig:
    """Size of the tiny vision-language model: builds and describes a frame in well under a second on a CPU."""

    vocab_size: int = 1536  # BPE vocabulary the tokenizer is trained to
    hidden_size: int = 64  # width of the language model's residual stream (and the vision merger's output)
    num_layers: int = 2  # language model blocks
    num_heads: int = 4  # attention heads (head size 16: the rope sections below add up to 8)
    num_kv_heads: int = 2  # key/value heads
    intermediate_size: int = 128  # MLP width
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # Qwen2-VL's rotary sections (time, height, width), sum = head/2
    vision_depth: int = 2  # vision transformer blocks
    vision_dim: int = 32  # vision transformer width
    vision_heads: int = 2  # vision attention heads
    max_pixels: int = 28 * 28 * 16  # the image processor resizes each frame to at most 16 merged patches
    init_gain: float = 4.0  # weights ~ normal(0, gain / sqrt(fan_in))


def build_tiny_vlm(path: str | Path, *, seed: int = 0, config: TinyVlmConfig = TinyVlmConfig()) -> Path:
    """Write a tiny random Qwen2-VL model with its processor (tokenizer, image processor, chat template)."""
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(config.vocab_size, VISION_SPECIALS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=VLM_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (*CHATML_SPECIALS, *VISION_SPECIALS)}
    head_dim = config.hidden_size // config.num_heads
    if 2 * sum(config.mrope_section) != head_dim:
        raise ValueError(f"mrope_section {config.mrope_section} must add up to half the head size ({head_dim})")
    model_config = Qwen2VLConfig(
        text_config={
            "vocab_size": round_up(len(tokenizer), 64),
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                "mrope_section": list(config.mrope_section)},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": config.vision_depth,
            "embed_dim": config.vision_dim,
            "hidden_size": config.hidden_size,
            "num_heads": config.vision_heads,
            "mlp_ratio": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # the constructor's own init must not move the global RNG
        model = Qwen2VLForConditionalGeneration(model_config)
    fill_random(model, seed, config.init_gain)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path, safe_serialization=True)
    # the processor's parts as a Qwen2-VL folder holds them (the PIL image processor: no torchvision needed)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=config.max_pixels).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
