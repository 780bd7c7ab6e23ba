"""The AudioStory checkpoint's token protocol and its planner: the one job of turning a prompt into a ``Plan``
and the LLM's states at the plan's query tokens (the checkpoint itself is loaded by ``load.py``; the decoding grammar is ``grammar.py``, the planner ``planner.py``).

    prompt -> chat prompt -> Qwen2.5 + merged LoRA, greedy with the KV cache:
        <|think|> reasoning <|/think|>
        per clip: <|gen|> caption <timestamp>D</timestamp> <t5> N forced semantic queries </t5>
                  <aud> M forced residual queries </aud> <|/gen|>
    -> Plan (captions; D rescaled to the requested total)
    -> QueryStates: the states at the semantic and residual query tokens (teacher-forced from the plan)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelLoadError
from .config import AudioStoryConfig

# Ids of the 612 protocol tokens. upstream adds the names of added_tokens.json to the Qwen tokenizer with
# add_tokens(); transformers ignores a legacy added_tokens.json when tokenizer_config.json has
# added_tokens_decoder (Qwen2.5's has), so the names land in file order after the base vocabulary
# ("file", map A). "legacy" (map B) is what a tokenizer_config without added_tokens_decoder would give.
TOKEN_ORDER = "file"

SYSTEM_PROMPT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
USER_PROMPT = "<|im_start|>user\n{instruction}<|im_end|>\n"
ANSWER_START = "<|im_start|>assistant\n<|think|>"
# upstream draws one of 20 lead phrases with random.seed(0): always this one
PROMPT_LEAD = "Produce an in-depth, multi-layered audio that portrays "

THINK, THINK_END, GEN, GEN_END = "<|think|>", "<|/think|>", "<|gen|>", "<|/gen|>"
TS, TS_END, SEM, SEM_END, RES, RES_END = "<timestamp>", "</timestamp>", "<t5>", "</t5>", "<aud>", "</aud>"
EOS_NAMES = ("<|im_end|>", "<|endoftext|>")
TS_PREFIX = re.compile(r"(?:0|[1-9]\d{0,2})(?:\.\d{0,3})?")  # seconds: up to 999.999
TS_DONE = re.compile(r"(?:0|[1-9]\d{0,2})(?:\.\d{1,3})?")



@dataclass(frozen=True)
class GenerationLimits:
    """Bounds of one generation; clips always close because a clip opens only when one fits the budget."""

    max_new_tokens: int = 1600  # upstream's budget for the whole answer
    reasoning_tokens: int = 512  # <|/think|> is forced after this many reasoning tokens
    caption_tokens: int = 64  # longest caption in tokens (and story.MAX_CAPTION_CHARS in characters)
    timestamp_chars: int = 7  # "999.999": the longest timestamp
    gap_tokens: int = 4  # whitespace tokens the model may write before a <|gen|> (upstream lets it)
    progress_every: int = 16  # report progress every this many generated tokens


@dataclass(frozen=True)
class QueryStates:
    """The LLM's last-layer states at one plan's query tokens, in ``plan.events`` order."""

    semantic: torch.Tensor  # [events, N, H] states where <t5_00000>… are the input
    residual: torch.Tensor  # [events, M, H] states where <aud_00000>… are the input
    tokens: tuple[int, ...] = ()  # the generated ids they came from (empty when teacher-forced)


@dataclass(frozen=True)
class GeneratedClip:
    caption: str  # the caption text, timestamp removed
    duration_s: float  # the timestamp, seconds, as the model wrote it


@dataclass(frozen=True)
class Generation:
    """One answer of the model to a request."""

    reasoning: str  # the text between <|think|> and <|/think|>
    clips: tuple[GeneratedClip, ...]  # in order
    states: QueryStates  # their query states


# --- tokens -------------------------------------------------------------------------------------------


def added_token_names(path: Path) -> list[str]:
    """The protocol token names of upstream's added_tokens.json, in file order (their ids are not used)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object of token names")
    return list(data)


def token_order(names: list[str], legacy_ids: dict[str, int], order: str | None = None) -> list[str]:
    """The order in which the names get ids after the base vocabulary (``order`` None: ``TOKEN_ORDER``): file
    order ("file"), or sorted by their stated ids, a later duplicate replacing an earlier one, the names left
    out appended in file order ("legacy")."""
    order = order or TOKEN_ORDER
    if order == "file":
        return list(names)
    if order != "legacy":
        raise ValueError(f"token order {order!r}: must be 'file' or 'legacy'")
    by_id: dict[int, str] = {}
    for name in names:
        by_id[legacy_ids[name]] = name
    kept = [by_id[i] for i in sorted(by_id)]
    return kept + [n for n in names if n not in set(kept)]


def load_tokenizer(folder: Path, order: str | None = None):
    """The Qwen2.5 tokenizer with the protocol tokens appended after its vocabulary (names it already holds
    keep their ids, as transformers' ``add_tokens`` does)."""
    from tokenizers import AddedToken, Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as err:  # noqa: BLE001 - any parse failure is one message
        raise ModelLoadError(f"cannot read {folder / 'tokenizer.json'}: {err}") from None
    path = folder / "added_tokens.json"
    legacy = json.loads(path.read_text()) if path.exists() else {}
    names = [n for n in token_order(added_token_names(path), legacy, order) if tokenizer.token_to_id(n) is None]
    tokenizer.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    return tokenizer


@dataclass(frozen=True)
class ProtocolIds:
    """Ids of the generation protocol's tokens."""

    think: int
    think_end: int
    gen: int
    gen_end: int
    ts: int
    ts_end: int
    sem: int
    sem_end: int
    res: int
    res_end: int
    semantic: tuple[int, ...]  # <t5_00000> … <t5_{N-1}>
    residual: tuple[int, ...]  # <aud_00000> … <aud_{M-1}>
    eos: tuple[int, ...]  # <|im_end|>, <|endoftext|>

    @classmethod
    def of(cls, tokenizer, config: AudioStoryConfig, where: Path) -> ProtocolIds:
        def find(name: str) -> int:
            token = tokenizer.token_to_id(name)
            if token is None:
                raise ModelLoadError(f"{where}: the tokenizer lacks the token {name}")
            return token

        return cls(
            *(find(n) for n in (THINK, THINK_END, GEN, GEN_END, TS, TS_END, SEM, SEM_END, RES, RES_END)),
            semantic=tuple(find(f"<t5_{i:05d}>") for i in range(config.num_semantic)),
            residual=tuple(find(f"<aud_{i:05d}>") for i in range(config.num_residual)),
            eos=tuple(find(n) for n in EOS_NAMES),
        )

    def clip_run(self) -> list[int]:
        """What follows <t5>: every query token and closer, up to and including <|/gen|>."""
        return [*self.semantic, self.sem_end, self.res, *self.residual, self.res_end, self.gen_end]


@dataclass
class Vocab:
    """Per-token facts the decoding masks need, over the embedding's rows."""

    text: torch.Tensor  # [V] bool: a plain text token (no special, no protocol token)
    blank: torch.Tensor  # [V] bool: text that is whitespace only
    chars: torch.Tensor  # [V] long: characters the token decodes to
    numeric: dict[int, str]  # tokens made of digits and '.' only, with their text

    @classmethod
    def of(cls, tokenizer, rows: int, device: torch.device) -> Vocab:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        texts = tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
        special = set(tokenizer.get_added_tokens_decoder())
        text = [i not in special and bool(piece) for i, piece in enumerate(texts)] + [False] * (rows - size)
        blank = [t and not piece.strip() for t, piece in zip(text, texts)] + [False] * (rows - size)
        chars = [len(piece) if t else 1 << 30 for t, piece in zip(text, texts)] + [1 << 30] * (rows - size)
        numeric = {i: piece for i, piece in enumerate(texts) if text[i] and re.fullmatch(r"[0-9.]+", piece)}

        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(tensor(text, torch.bool), tensor(blank, torch.bool), tensor(chars, torch.long), numeric)


# --- the decoding grammar --------------------------------------------------------------------------------
