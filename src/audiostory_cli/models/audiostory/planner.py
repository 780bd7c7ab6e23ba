"""The AudioStory checkpoint's own planner: greedy decoding under the protocol grammar -> ``Plan``, and the
LLM's states at the plan's semantic and residual query tokens (for ``fusion.py``)."""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict

import torch
import transformers

from ... import story
from ...errors import PlanError
from ...planners.base import LIMITS as PLAN_LIMITS
from ...planners.base import fit_durations, timeline
from ...story import Plan, Progress, ProgressFn, StoryRequest, no_progress
from .grammar import Grammar
from .protocol import (
    ANSWER_START,
    GEN,
    GEN_END,
    PROMPT_LEAD,
    SYSTEM_PROMPT,
    USER_PROMPT,
    GeneratedClip,
    Generation,
    GenerationLimits,
    ProtocolIds,
    QueryStates,
    Vocab,
)


# --- the planner --------------------------------------------------------------------------------------


class AudioStoryPlanner:
    """The checkpoint's LLM as a planner: ``plan`` writes a ``Plan`` and keeps the query states it saw."""

    def __init__(
        self, ref: str, llm, tokenizer, ids: ProtocolIds, vocab: Vocab, *, repetition_penalty: float = 1.0,
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
        grammar = Grammar(self.ids, self.vocab, self.limits, request.max_events)
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

    def _finish(self, grammar: Grammar, tokens: list[int], hidden: torch.Tensor | None) -> Generation:
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

