"""The tiny planner: a random Qwen2 chat model (ChatML template, local BPE tokenizer) in the transformers layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .common import CORPUS, fill_random, round_up

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # Qwen's chat markers, eos = <|im_end|>
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A few KB of English about sounds, and plans written as JSON, to train the tiny tokenizer on.


@dataclass(frozen=True)
class TinyPlannerConfig:
    """Size of the tiny planner LLM: small enough to build and run in seconds on a CPU."""

    vocab_size: int = 1536  # BPE vocabulary the tokenizer is trained to (it may end up smaller)
    hidden_size: int = 64  # width of the residual stream
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention, as in Qwen2)
    intermediate_size: int = 128  # MLP width
    max_positions: int = 32768  # longest prompt + answer (the longest plan grammar admits ~13k tokens)
    init_gain: float = 4.0  # weights ~ normal(0, gain / sqrt(fan_in)): peaked enough that greedy picks are not ties


def build_tiny_planner(path: str | Path, *, seed: int = 0, config: TinyPlannerConfig = TinyPlannerConfig()) -> Path:
    """Write a tiny random Qwen2 chat model (ChatML template, local BPE tokenizer) to ``path``."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(config.vocab_size),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )
    model_config = Qwen2Config(
        vocab_size=round_up(len(tokenizer), 64),  # padded past the tokenizer, as real checkpoints are
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # the constructor's own init must not move the global RNG
        model = Qwen2ForCausalLM(model_config)
    fill_random(model, seed, config.init_gain)
    model.generation_config.eos_token_id = model_config.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def train_bpe(vocab_size: int, extra_specials: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained on ``CORPUS``, with the ChatML special tokens (then ``extra_specials``,
    e.g. a vision model's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[*CHATML_SPECIALS, *extra_specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tokenizer
