"""The AudioStory checkpoint's token protocol and its planner: the one job of turning a prompt into a ``Plan``
and the LLM's states at the plan's query tokens (the checkpoint itself is loaded by ``audiostory_model``).

    prompt -> chat prompt -> Qwen2.5 + merged LoRA, greedy with the KV cache:
        <|think|> reasoning <|/think|>
        per clip: <|gen|> caption <timestamp>D</timestamp> <t5> N forced semantic queries </t5>
                  <aud> M forced residual queries </aud> <|/gen|>
    -> Plan (captions; D rescaled to the requested total)
    -> QueryStates: the states at the semantic and residual query tokens (teacher-forced from the plan)
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import transformers

from . import story
from .errors import ModelLoadError, PlanError
from .planner import LIMITS as PLAN_LIMITS
from .planner import fit_durations, timeline
from .story import Plan, Progress, ProgressFn, StoryRequest, no_progress

if TYPE_CHECKING:  # annotations only: the protocol never imports the loader at run time
    from .audiostory_model import AudioStoryConfig

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
_TS_PREFIX = re.compile(r"(?:0|[1-9]\d{0,2})(?:\.\d{0,3})?")  # seconds: up to 999.999
_TS_DONE = re.compile(r"(?:0|[1-9]\d{0,2})(?:\.\d{1,3})?")


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
class _Vocab:
    """Per-token facts the decoding masks need, over the embedding's rows."""

    text: torch.Tensor  # [V] bool: a plain text token (no special, no protocol token)
    blank: torch.Tensor  # [V] bool: text that is whitespace only
    chars: torch.Tensor  # [V] long: characters the token decodes to
    numeric: dict[int, str]  # tokens made of digits and '.' only, with their text

    @classmethod
    def of(cls, tokenizer, rows: int, device: torch.device) -> _Vocab:
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


@dataclass
class _Draft:
    """A clip being written."""

    caption: list[int] = field(default_factory=list)  # caption token ids (before and after the timestamp)
    timestamp: str = ""  # the timestamp text so far
    stamped: bool = False  # the timestamp has been closed
    semantic_at: int = -1  # index (in the generated tokens) of the first semantic query token


class _Grammar:
    """Which tokens may come next. The model chooses freely where upstream lets it, the protocol's structure
    is enforced (upstream only nudges it), and the query runs are forced whole."""

    def __init__(self, ids: ProtocolIds, vocab: _Vocab, limits: GenerationLimits, max_clips: int) -> None:
        self.ids, self.vocab, self.limits, self.max_clips = ids, vocab, limits, max_clips
        self.phase = "think"  # think -> open -> caption <-> timestamp -> open ... -> done
        self.count = 0  # tokens generated so far
        self.reasoning: list[int] = []
        self.clips: list[_Draft] = []  # finished clips
        self.draft: _Draft | None = None
        self.queue: list[int] = []  # forced tokens still to come
        self.gap = 0  # whitespace tokens written since the last clip (or the reasoning) closed
        self.clip_cost = limits.caption_tokens + limits.timestamp_chars + len(ids.clip_run()) + 4
        self.ended_by = ""  # why it ended: "eos" (the model's choice), "budget" or "max_clips"
        self._stop = ""  # the reason of a forced end-of-text
        self._eos = torch.zeros_like(vocab.text)
        self._eos[list(ids.eos)] = True

    def _only(self, *tokens: int) -> torch.Tensor:
        mask = torch.zeros_like(self.vocab.text)
        mask[list(tokens)] = True
        return mask

    def forced(self) -> int | None:
        """The next token when there is no choice."""
        if self.queue:
            return self.queue[0]
        if self.phase == "think" and len(self.reasoning) >= self.limits.reasoning_tokens:
            return self.ids.think_end
        if self.phase == "open" and len(self.clips) >= self.max_clips:
            self._stop = "max_clips"
            return self.ids.eos[0]
        if self.phase == "open" and self.limits.max_new_tokens - self.count < self.clip_cost:
            self._stop = "budget"  # a clip that cannot close is not opened
            return self.ids.eos[0]
        if self.phase == "caption" and not self._caption_room():
            return self.ids.sem if self.draft.stamped else self.ids.ts
        if self.phase == "timestamp" and not self._timestamp_options():
            return self.ids.ts_end
        return None

    def allowed(self) -> torch.Tensor:
        """[V] bool: the tokens the model may choose among now."""
        ids, vocab = self.ids, self.vocab
        if self.phase == "think":
            return vocab.text | self._eos | self._only(ids.think_end)
        if self.phase == "open":
            gap = vocab.blank if self.gap < self.limits.gap_tokens else torch.zeros_like(vocab.blank)
            return self._eos | self._only(ids.gen) | gap
        if self.phase == "caption":
            mask = vocab.text & (vocab.chars <= self._chars_left())
            if not self.draft.caption:
                mask &= ~vocab.blank
            if not self.draft.stamped:
                mask[ids.ts] = True
            elif self.draft.caption:
                mask[ids.sem] = True
            return mask
        options = self._timestamp_options()
        mask = self._only(*options) if options else torch.zeros_like(vocab.text)
        if _TS_DONE.fullmatch(self.draft.timestamp) and float(self.draft.timestamp) > 0:
            mask[ids.ts_end] = True
        return mask

    def push(self, token: int) -> None:
        """Take the chosen (or forced) token."""
        ids = self.ids
        if self.queue:
            self.queue.pop(0)
        self.count += 1
        if token in ids.eos:
            self.phase, self.ended_by = "done", self._stop or "eos"
        elif self.phase == "think":
            if token == ids.think_end:
                self.phase = "open"
            else:
                self.reasoning.append(token)
        elif self.phase == "open":
            if token == ids.gen:
                self.phase, self.draft, self.gap = "caption", _Draft(), 0
            else:
                self.gap += 1
        elif self.phase == "caption":
            self._push_caption(token)
        elif self.phase == "timestamp":
            if token == ids.ts_end:
                self.phase, self.draft.stamped = "caption", True
            else:
                self.draft.timestamp += self.vocab.numeric.get(token, "?")
        if self.phase != "done" and self.count >= self.limits.max_new_tokens:
            self.phase, self.ended_by = "done", "budget"

    def _push_caption(self, token: int) -> None:
        ids, draft = self.ids, self.draft
        if draft.semantic_at >= 0:  # inside the forced run of queries
            if token == ids.gen_end:
                self.clips.append(draft)
                self.phase, self.draft = "open", None
        elif token == ids.ts and not draft.stamped:
            self.phase = "timestamp"
        elif token == ids.sem:
            draft.semantic_at = self.count  # the next token (index count) is the first semantic query
            self.queue = ids.clip_run()
        else:
            draft.caption.append(token)

    def _chars_left(self) -> int:
        used = int(self.vocab.chars[self.draft.caption].sum()) if self.draft.caption else 0
        return story.MAX_CAPTION_CHARS - used

    def _caption_room(self) -> bool:
        if self.draft.semantic_at >= 0:
            return True  # inside the forced run: the queue drives
        return len(self.draft.caption) < self.limits.caption_tokens and self._chars_left() > 0

    def _timestamp_options(self) -> list[int]:
        text = self.draft.timestamp
        return [
            token
            for token, piece in self.vocab.numeric.items()
            if len(text + piece) <= self.limits.timestamp_chars and _timestamp_can_finish(text + piece)
        ]


def _timestamp_can_finish(text: str) -> bool:
    """``text`` is a prefix of a positive number of seconds the grammar admits."""
    if not _TS_PREFIX.fullmatch(text):
        return False
    return not re.fullmatch(r"0\.0{3}", text)  # "0.000" can no longer become positive


# --- the planner --------------------------------------------------------------------------------------


class AudioStoryPlanner:
    """The checkpoint's LLM as a planner: ``plan`` writes a ``Plan`` and keeps the query states it saw."""

    def __init__(
        self, ref: str, llm, tokenizer, ids: ProtocolIds, vocab: _Vocab, *, repetition_penalty: float = 1.0,
        limits: GenerationLimits = GenerationLimits(),
    ) -> None:  # fmt: skip
        self.ref = ref  # the reference it was loaded from (recorded in saved plans)
        self.llm = llm  # transformers Qwen2ForCausalLM with the LoRA merged
        self.tokenizer = tokenizer  # tokenizers.Tokenizer with the protocol tokens
        self.ids = ids
        self.vocab = vocab
        self.repetition_penalty = repetition_penalty  # from the base LLM's generation_config.json, as upstream
        self.limits = limits
        self._cache: OrderedDict[tuple, QueryStates] = OrderedDict()  # query states per plan, newest last
        self._cache_size = 16
        self._cache_arg = "cache" if "cache" in inspect.signature(llm.model.forward).parameters else "past_key_values"

    def prompt_ids(self, prompt: str, total_s: float) -> list[int]:
        """Upstream's chat prompt: lead phrase + story + total duration, the answer opened with <|think|>."""
        instruction = f"{(PROMPT_LEAD + prompt).strip()} The total duration is {float(total_s)} seconds."
        text = SYSTEM_PROMPT + USER_PROMPT.format(instruction=instruction) + ANSWER_START
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def plan(self, request: StoryRequest, *, progress: ProgressFn = no_progress) -> Plan:
        """Generate, then place the clips on a timeline that ends at ``request.total_s`` exactly."""
        generation = self.generate(request, progress=progress)
        durations = [c.duration_s for c in generation.clips]
        sizes = fit_durations(durations, request.total_s, PLAN_LIMITS.min_event_s, request.max_event_s)
        events = [
            {"index": i, "caption": clip.caption, "start_s": start, "duration_s": duration, "tone": "", "layer": 0}
            for i, (clip, (start, duration)) in enumerate(zip(generation.clips, timeline(sizes, request.total_s)))
        ]
        plan = story.plan_from_dict(
            {
                "prompt": request.prompt,
                "total_s": request.total_s,
                "tone": request.tone or "",
                "reasoning": generation.reasoning,
                "events": events,
            }
        )
        return plan

    @torch.inference_mode()
    def generate(self, request: StoryRequest, *, progress: ProgressFn = no_progress) -> Generation:
        """Greedy decoding with the KV cache under the protocol grammar; a ``PlanError`` when no clip opens."""
        grammar = _Grammar(self.ids, self.vocab, self.limits, request.max_events)
        if self.limits.max_new_tokens < self.limits.reasoning_tokens + 1 + grammar.clip_cost:
            raise ValueError(f"{self.limits}: max_new_tokens leaves no room for a clip after the reasoning")
        prompt = self.prompt_ids(request.prompt, request.total_s)
        device = self.llm.device
        seen = torch.zeros_like(self.vocab.text)
        seen[prompt] = True
        cache = transformers.DynamicCache(config=self.llm.config)
        tokens: list[int] = []
        states: list[torch.Tensor] = []
        feed = prompt
        while True:
            hidden = self._forward(torch.tensor([feed], device=device), cache)
            if feed is not prompt:
                states.append(hidden)
            if grammar.phase == "done":
                break
            chunk = [self._choose(self._scores(hidden[-1], seen), grammar.allowed())]
            grammar.push(chunk[0])
            while grammar.phase != "done" and (token := grammar.forced()) is not None:
                chunk.append(token)
                grammar.push(token)
            tokens += chunk
            seen[chunk] = True
            if len(tokens) // self.limits.progress_every > (len(tokens) - len(chunk)) // self.limits.progress_every:
                progress(Progress("plan", len(tokens), self.limits.max_new_tokens, "writing the plan"))
            feed = chunk[:-1] if chunk[-1] in self.ids.eos else chunk
            if not feed:
                break
        progress(Progress("plan", self.limits.max_new_tokens, self.limits.max_new_tokens, "plan written"))
        return self._finish(grammar, tokens, torch.cat(states) if states else None)

    def _forward(self, input_ids: torch.Tensor, cache) -> torch.Tensor:
        """Last-layer states (after the final norm) of ``input_ids`` [1, k], extending ``cache``: [k, H]."""
        out = self.llm.model(input_ids=input_ids, use_cache=True, **{self._cache_arg: cache})
        return out.last_hidden_state[0]

    def _scores(self, hidden: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Next-token scores, with the base model's repetition penalty over prompt and answer (as upstream)."""
        logits = self.llm.lm_head(hidden[None])[0].float()
        penalty = self.repetition_penalty
        if penalty != 1.0:
            logits = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
        return logits

    def _choose(self, scores: torch.Tensor, allowed: torch.Tensor) -> int:
        """Greedy choice among the allowed tokens."""
        token = int(scores.masked_fill(~allowed, -math.inf).argmax())
        if not bool(allowed[token]) or not math.isfinite(float(scores[token])):
            raise PlanError(f"AudioStory model {self.ref} gave no finite score to any allowed token")
        return token

    def _finish(self, grammar: _Grammar, tokens: list[int], hidden: torch.Tensor | None) -> Generation:
        reasoning = self.tokenizer.decode(grammar.reasoning).strip()
        if not grammar.clips:
            unfinished = " (one clip was left unfinished)" if grammar.draft is not None else ""
            reason = "stopped" if grammar.ended_by == "eos" else "ran out of its token budget"  # max_clips >= 1
            raise PlanError(
                f"AudioStory model {self.ref} {reason} after {len(tokens)} tokens without opening a clip "
                f"(no {GEN} ... {GEN_END}){unfinished}; it wrote: {self.tokenizer.decode(tokens)[:160]!r}",
                hint="try another prompt or duration",
            )
        clips, semantic, residual = [], [], []
        n_sem, n_res = len(self.ids.semantic), len(self.ids.residual)
        for number, draft in enumerate(grammar.clips, start=1):
            try:
                duration = float(draft.timestamp)
            except ValueError:
                raise PlanError(f"clip {number}: timestamp {draft.timestamp!r} is not a number of seconds") from None
            clips.append(GeneratedClip(self.tokenizer.decode(draft.caption).strip(), duration))
            first_residual = draft.semantic_at + n_sem + 2  # after </t5> <aud>
            semantic.append(hidden[draft.semantic_at : draft.semantic_at + n_sem])
            residual.append(hidden[first_residual : first_residual + n_res])
        states = QueryStates(torch.stack(semantic), torch.stack(residual), tuple(tokens))
        return Generation(reasoning, tuple(clips), states)

    # --- query states of a plan ---------------------------------------------------------------------------

    def query_states(self, plan: Plan) -> QueryStates:
        """Teacher-forced query states of the plan's reasoning, captions and durations, as saved: so a plan
        renders the same right after ``plan()`` and later from its file (upstream uses the states seen while
        generating; they differ only where the timestamps were rescaled to the requested total)."""
        key = _plan_key(plan)
        if key not in self._cache:
            self._remember(plan, self._forced_states(plan))
        self._cache.move_to_end(key)
        return self._cache[key]

    def _remember(self, plan: Plan, states: QueryStates) -> None:
        self._cache[_plan_key(plan)] = states
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    @torch.inference_mode()
    def _forced_states(self, plan: Plan) -> QueryStates:
        ids, encode = self.ids, self.tokenizer.encode
        sequence = self.prompt_ids(plan.prompt, plan.total_s)
        sequence += encode(plan.reasoning, add_special_tokens=False).ids + [ids.think_end]
        starts = []
        for event in plan.events:
            sequence += [ids.gen, *encode(event.caption, add_special_tokens=False).ids, ids.ts]
            sequence += [*encode(_seconds_text(event.duration_s), add_special_tokens=False).ids, ids.ts_end, ids.sem]
            starts.append(len(sequence))
            sequence += ids.clip_run()
        hidden = self.llm.model(input_ids=torch.tensor([sequence], device=self.llm.device)).last_hidden_state[0]
        n_sem, n_res = len(ids.semantic), len(ids.residual)
        semantic = torch.stack([hidden[s : s + n_sem] for s in starts])
        residual = torch.stack([hidden[s + n_sem + 2 : s + n_sem + 2 + n_res] for s in starts])
        return QueryStates(semantic, residual)


def _plan_key(plan: Plan) -> tuple:
    """What the query states depend on: the prompt, total, reasoning and each event's caption and times."""
    events = tuple((e.caption, e.start_s, e.duration_s) for e in plan.events)
    return (plan.prompt, plan.total_s, plan.reasoning, events)


def _seconds_text(seconds: float) -> str:
    """A duration as the timestamp of a teacher-forced clip: "6.0", "6.25"."""
    text = f"{seconds:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
