"""Greedy decoding under the plan's JSON schema, with llguidance: the one constraint library of the engines
that decode token by token (transformers, llama.cpp). A server constrains on its own side.

Measured on the plan schema with Qwen2.5's 152k vocabulary on 2 busy CPU cores: llguidance compiles it in
20-50 ms and masks in 1-4 ms a token; xgrammar took 39-42 s to compile the same schema (every request has
its own: the total and --max-events are in it), 3-6 ms a token, and it pulls ~1 GB of triton. Both refuse
the same out-of-bounds answers. Forced stretches (the keys, ``","``) go to the model in one step, with
the token the model chose before them.

    prompt ids -> [mask -> (one string allowed: its token | logits -> argmax) -> consume (+ forced)] until done
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import PlanError
from ..story import Progress, ProgressFn
from .base import ANSWER_SEPARATORS

JSON_OPTIONS = {  # the separators of the example answers in the chat (base.ANSWER_SEPARATORS)
    "whitespace_flexible": False,
    "item_separator": ANSWER_SEPARATORS[0],
    "key_separator": ANSWER_SEPARATORS[1],
}
_SPELLED_OUT_MAX = 8  # more allowed tokens than this: a choice for the model (checking them costs time)
NextLogits = Callable[[Sequence[int]], np.ndarray]  # feed these ids, get the last position's logits [vocab]


def json_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar of ``schema`` (compact, one space after ',' and ':')."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def decode_json(
    next_logits: NextLogits,
    prompt_ids: Sequence[int],
    tokenizer: Any,
    schema: dict[str, Any],
    *,
    ref: str,
    budget: int,
    progress: ProgressFn,
    progress_every: int = 8,
) -> str:
    """The greedy answer to ``prompt_ids`` that satisfies ``schema`` (``tokenizer``: an
    ``llguidance.LLTokenizer`` of the model's vocabulary). Stops when the JSON is complete; the schema
    bounds the answer, so ``budget`` is only a guard."""
    import llguidance

    matcher = llguidance.LLMatcher(tokenizer, json_grammar(schema), log_level=0)
    if matcher.is_error():  # the schema is ours: a bug, not a user error
        raise ValueError(f"llguidance refused the plan schema: {matcher.get_error()}")
    tokens: list[int] = []
    feed = list(prompt_ids)
    reported = 0
    while len(tokens) < budget and not matcher.is_stopped():
        allowed = np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8) != 0
        token = _spelled_out(matcher, allowed, tokenizer)
        if token is None:  # a choice: ask the model
            logits = next_logits(feed)
            allowed = allowed[: logits.shape[-1]]
            token = int(np.argmax(np.where(allowed, logits, -np.inf)))
            if not allowed[token] or token in tokenizer.eos_tokens:
                break  # nothing allowed (a vocabulary gap), or the JSON is complete and the model stops
            feed = []
        forced = _consume(matcher, token)
        tokens += [token, *forced]
        feed += [token, *forced]
        if len(tokens) - reported >= progress_every:
            reported = len(tokens)
            progress(Progress("plan", len(tokens), budget, "writing the plan"))
    if not matcher.is_accepting():
        raise PlanError(
            f"planner {ref} cannot finish the JSON plan: no token of its vocabulary continues it "
            f"after {len(tokens)} tokens" if len(tokens) < budget else
            f"planner {ref} wrote {len(tokens)} tokens without finishing the JSON plan"
        )  # fmt: skip
    progress(Progress("plan", budget, budget, "plan written"))
    return tokenizer.decode_str(tokens)


def _spelled_out(matcher: Any, allowed: np.ndarray, tokenizer: Any, most: int = _SPELLED_OUT_MAX) -> int | None:
    """The token to write without asking the model when the grammar forces the next bytes and every token it
    allows is a piece of them (``"`` ``":`` ``":"`` after a key): the longest, as the tokenizer writes it.
    llguidance leaves such a stretch to the model when a longer token might follow it; a model call costs
    ~60 ms on a 2-core CPU, the token ~25 ms more in the next call. None when the model has a choice."""
    ids = np.flatnonzero(allowed)
    if not 0 < len(ids) <= most:
        return None
    forced = matcher.compute_ff_bytes()
    pieces = [(tokenizer.decode_bytes([token]), token) for token in ids.tolist()]
    if not forced or any(not forced.startswith(piece) or tokenizer.is_special_token(token) for piece, token in pieces):
        return None  # nothing forced, or a token that goes past it: the model chooses
    return max(pieces, key=lambda piece: len(piece[0]))[1]


def _consume(matcher: Any, token: int) -> list[int]:
    """Consume the chosen token, then the tokens the grammar forces after it (fed to the model in one step)."""
    if not matcher.consume_token(token):
        raise ValueError(f"llguidance refused token {token} that its own mask allowed: {matcher.get_error()}")
    forced = [] if matcher.is_stopped() else matcher.compute_ff_tokens()
    if forced and not matcher.consume_tokens(forced):
        raise ValueError(f"llguidance refused its own forced tokens {forced}: {matcher.get_error()}")
    return forced
