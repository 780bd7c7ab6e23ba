"""LLM planner: a story prompt -> a validated ``Plan`` of timed sound events.

One job: ask a chat LLM for a JSON plan whose decoding is constrained by xgrammar to a JSON schema (so
the answer always parses, even from a random model), then turn it into a ``story.Plan`` whose foreground
events fill the requested length exactly. A plan that still fails validation is asked for once more,
with the error in the conversation, before a ``PlanError``.

    messages -> chat template -> greedy decode under the schema grammar -> JSON -> rescaled Plan
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
import xgrammar as xgr

from . import checkpoints, story
from .errors import ModelLoadError, PlanError
from .story import Plan, Progress, ProgressFn, StoryRequest, no_progress

PLANNER_KIND = checkpoints.ModelKind(
    role="planner",
    required=("config.json",),
    layout="a Hugging Face chat LLM folder (config.json, weights, tokenizer with a chat template) or a .gguf file",
)


@dataclass(frozen=True)
class PlanLimits:
    """Bounds of the planner's answer; the grammar enforces them, so the answer's length is bounded too."""

    reasoning_chars: int = 300  # longest reasoning the model may write before the events
    tone_chars: int = 24  # longest tone ("calm", "slowly rising dread")
    caption_min_chars: int = 3  # shortest caption (first character a letter, last one not a space)
    caption_max_chars: int = 120  # longest caption: one sentence of what is heard
    min_event_s: float = 0.5  # shortest event after rescaling (total / events when that is smaller)
    tries: int = 2  # answers asked for before giving up: the first, and one retry with the error
    progress_every: int = 8  # report progress every this many generated tokens


LIMITS = PlanLimits()
_PRINTABLE = r"[ !#-\[\]-~]"  # printable ASCII without '"' and '\': no escapes, one byte per character
_VISIBLE = r"[!#-\[\]-~]"  # the same without the space
_REGEX_RUN_MAX = 100  # xgrammar 0.2.8 rejects a regex repeat above {,128}: longer runs are chained
_MS_GRID_MIN_S = 0.01  # starts snap to whole milliseconds when every event is at least this long

SYSTEM_PROMPT = """\
You are a sound designer who plans audio stories. You turn a story into a timeline of sound events; \
a text-to-audio model renders each event as a clip and the clips are joined into one soundtrack.

Rules:
- Captions describe what is HEARD, not what happens in the story. Name the sound sources and how they \
sound: "waves break on pebbles", "a wooden door creaks open, then footsteps on gravel". Never write \
feelings or plot, such as "the hero feels relieved"; write the sounds of that moment instead.
- A caption is one short English phrase (3 to {caption_max} characters), without names or dialogue.
- One event per moment of the story, in story order. duration_s is a whole number of seconds; the \
durations add up to the total length of the story.
- tone is one or two words for the mood ("calm", "tense", "ominous", "joyful").
- reasoning is one sentence naming the sounds you chose, written before the events.
- Answer with one JSON object and nothing else."""

EXAMPLE_REQUEST = StoryRequest("a traveler crosses a snowy pass at night and finds a hut with a stove", 30.0)
EXAMPLE_ANSWER = {  # the example plan answering EXAMPLE_REQUEST, shown as an earlier turn of the chat
    "reasoning": "Sounds: wind and crunching snow outside, the hut door and steps on wood, then a fire.",
    "tone": "cold, then cozy",
    "events": [
        {"caption": "wind howls over snow, boots crunch slowly", "duration_s": 10, "tone": "lonely"},
        {"caption": "a wooden door creaks open, then footsteps on a wooden floor", "duration_s": 8, "tone": "curious"},
        {"caption": "a match strikes, a fire crackles in an iron stove", "duration_s": 12, "tone": "cozy"},
    ],
}


def plan_prompt_messages(request: StoryRequest, limits: PlanLimits = LIMITS) -> list[dict[str, str]]:
    """The chat that asks for a plan of ``request``: the rules, one example exchange, then the request."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(caption_max=limits.caption_max_chars)},
        {"role": "user", "content": _request_text(EXAMPLE_REQUEST)},
        {"role": "assistant", "content": json.dumps(EXAMPLE_ANSWER)},
        {"role": "user", "content": _request_text(request)},
    ]


def _request_text(request: StoryRequest) -> str:
    tone = f"{request.tone} (use it as the plan's tone)" if request.tone else "choose one that fits the story"
    return (
        f"Story: {request.prompt.strip()}\n"
        f"Total length: {request.total_s:g} seconds.\n"
        f"Events: {_suggested_events(request)} (at most {request.max_events}), "
        f"their durations adding up to {request.total_s:g} seconds.\n"
        f"Overall tone: {tone}."
    )


def _suggested_events(request: StoryRequest) -> int:
    """About one event per 12 seconds, at least 3 and as many as the longest event allows, at most max_events."""
    wanted = max(3, request.min_events, math.ceil(request.total_s / 12))
    return min(request.max_events, wanted)


def plan_schema(request: StoryRequest, limits: PlanLimits = LIMITS) -> dict[str, Any]:
    """The JSON schema the answer is decoded under (xgrammar enforces every bound written here)."""
    word = f"^[A-Za-z][A-Za-z ,-]{{0,{limits.tone_chars - 1}}}$"  # a tone: starts with a letter
    middle = _regex_run(_PRINTABLE, limits.caption_min_chars - 2, limits.caption_max_chars - 2)
    event = {
        "type": "object",
        "properties": {
            "caption": {"type": "string", "pattern": f"^[A-Za-z]{middle}{_VISIBLE}$"},
            "duration_s": {"type": "integer", "minimum": 1, "maximum": max(1, math.ceil(request.total_s))},
            "tone": {"type": "string", "pattern": word},
        },
        "required": ["caption", "duration_s", "tone"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "pattern": f"^{_regex_run(_PRINTABLE, 0, limits.reasoning_chars)}$"},
            "tone": {"type": "string", "pattern": word},
            "events": {
                "type": "array",
                "items": event,
                "minItems": request.min_events,
                "maxItems": request.max_events,
            },
        },
        "required": ["reasoning", "tone", "events"],
        "additionalProperties": False,
    }


def _regex_run(char_class: str, least: int, most: int) -> str:
    """``char_class{least,most}`` written as chained repeats of at most ``_REGEX_RUN_MAX`` each."""
    parts = []
    while most > 0:
        step = min(most, _REGEX_RUN_MAX)
        parts.append(f"{char_class}{{{min(least, step)},{step}}}")
        least, most = max(0, least - step), most - step
    return "".join(parts)


def max_answer_tokens(request: StoryRequest, limits: PlanLimits = LIMITS) -> int:
    """Tokens enough for the longest answer the grammar admits: every token adds at least one byte."""
    event = {
        "caption": "x" * limits.caption_max_chars,
        "duration_s": max(1, math.ceil(request.total_s)),
        "tone": "x" * limits.tone_chars,
    }
    longest = {
        "reasoning": "x" * limits.reasoning_chars,
        "tone": "x" * limits.tone_chars,
        "events": [event] * request.max_events,
    }
    return len(json.dumps(longest)) + 1  # + the stop token


class Planner:
    """A chat LLM that writes plans; ``model`` stays public for the bridge, which reads its hidden states."""

    def __init__(self, ref: str, model: transformers.PreTrainedModel, tokenizer: Any, limits: PlanLimits = LIMITS):
        self.ref = ref  # the reference it was loaded from (recorded in saved plans)
        self.model = model
        self.tokenizer = tokenizer
        self.limits = limits
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
        self._vocab_size = info.vocab_size
        self._compiler = xgr.GrammarCompiler(info)  # caches compiled grammars by schema

    @classmethod
    def load(cls, ref: str, *, device: torch.device, dtype: torch.dtype) -> Planner:
        """Load a chat LLM from a folder, a ``.gguf`` file or a hub id (see ``checkpoints.resolve``)."""
        path = checkpoints.resolve(ref, PLANNER_KIND)
        if path.is_file() and path.suffix != ".gguf":
            raise ModelLoadError(f"planner file {path} is not a .gguf file", hint=f"expected {PLANNER_KIND.layout}")
        folder, gguf = (path.parent, path.name) if path.is_file() else (path, None)
        with checkpoints.quiet_loading():
            tokenizer = _load_part(transformers.AutoTokenizer, path, folder, gguf)
            if len(tokenizer) < 2:  # transformers builds an empty tokenizer when the files are missing
                raise ModelLoadError(
                    f"cannot load the planner tokenizer from {path}: no tokenizer files",
                    hint=f"expected {PLANNER_KIND.layout}",
                )
            if not getattr(tokenizer, "chat_template", None):
                raise ModelLoadError(
                    f"planner {path} has no chat template",
                    hint="the planner must be an instruction-tuned chat model (e.g. Qwen/Qwen2.5-3B-Instruct)",
                )
            model = _load_part(transformers.AutoModelForCausalLM, path, folder, gguf, dtype=dtype)
            model = model.to(device=device, dtype=dtype).eval()
        return cls(ref, model, tokenizer)

    def plan(self, request: StoryRequest, *, progress: ProgressFn = no_progress) -> Plan:
        """Ask for a plan; one retry with the validation error, then ``PlanError``."""
        messages = plan_prompt_messages(request, self.limits)
        budget = max_answer_tokens(request, self.limits)
        for _ in range(self.limits.tries):
            answer = self._generate(messages, request, progress)
            try:
                return plan_from_answer(answer, request, self.limits)
            except PlanError as err:
                error = err
            progress(Progress("plan", 0, budget, f"plan rejected ({error}), asking again"))
            retry = f"That plan was rejected: {error}. Answer with a corrected JSON plan."
            messages = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": retry}]
        raise PlanError(
            f"planner {self.ref} gave no valid plan in {self.limits.tries} tries; the last problem: {error}",
            hint="try again with another prompt, duration or --max-events, or use a larger planner model",
        )

    def _generate(self, messages: list[dict[str, str]], request: StoryRequest, progress: ProgressFn) -> str:
        """The model's answer to ``messages``, decoded under the plan grammar for ``request``."""
        schema = json.dumps(plan_schema(request, self.limits))
        matcher = xgr.GrammarMatcher(self._compiler.compile_json_schema(schema, any_whitespace=False))
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        tokens = self._decode(matcher, prompt_ids, max_answer_tokens(request, self.limits), progress)
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _decode(
        self, matcher: xgr.GrammarMatcher, prompt_ids: torch.Tensor, budget: int, progress: ProgressFn
    ) -> list[int]:
        """Greedy decoding with the KV cache, each step masked to the tokens the grammar allows next;
        stops when the JSON is complete (the grammar bounds its length, so ``budget`` is never reached)."""
        device = self.model.device
        bitmask = xgr.allocate_token_bitmask(1, self._vocab_size)
        cache = transformers.DynamicCache(config=self.model.config)
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        next_ids, tokens = prompt_ids.to(device), []
        with torch.inference_mode():
            while len(tokens) < budget and not matcher.is_completed():
                out = self.model(input_ids=next_ids, use_cache=True, logits_to_keep=1, **{cache_arg: cache})
                logits = out.logits[:, -1, :].float()
                matcher.fill_next_token_bitmask(bitmask)
                xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=self._vocab_size)
                token = int(logits.argmax(dim=-1))
                if not matcher.accept_token(token):  # only when the mask allowed nothing: a vocabulary gap
                    raise PlanError(
                        f"planner {self.ref} cannot write the plan: no token of its vocabulary "
                        f"continues the JSON after {len(tokens)} tokens"
                    )
                tokens.append(token)
                next_ids = torch.tensor([[token]], device=device)
                if len(tokens) % self.limits.progress_every == 0:
                    progress(Progress("plan", len(tokens), budget, "writing the plan"))
        progress(Progress("plan", budget, budget, "plan written"))
        return tokens


# --- the answer -> Plan ------------------------------------------------------------------------------


def plan_from_answer(answer: str, request: StoryRequest, limits: PlanLimits = LIMITS) -> Plan:
    """Validate the model's JSON and place its events on a timeline that ends at ``request.total_s``."""
    data = _parse_answer(answer, request.max_events)
    durations = [e["duration_s"] for e in data["events"]]
    sizes = fit_durations(durations, request.total_s, limits.min_event_s, request.max_event_s)
    events = [
        {
            "index": i,
            "caption": raw["caption"].strip(),
            "start_s": start,
            "duration_s": duration,
            "tone": str(raw.get("tone", "")).strip(),
            "layer": 0,
        }
        for i, (raw, (start, duration)) in enumerate(zip(data["events"], timeline(sizes, request.total_s)))
    ]
    return story.plan_from_dict(
        {
            "prompt": request.prompt,
            "total_s": request.total_s,
            "tone": request.tone or str(data.get("tone", "")).strip(),
            "reasoning": str(data.get("reasoning", "")).strip(),
            "events": events,
        }
    )


def _parse_answer(answer: str, max_events: int) -> dict[str, Any]:
    """The answer as a dict with 1..max_events events, each with a string caption and a positive duration."""
    try:
        data = json.loads(answer)
    except json.JSONDecodeError as err:
        raise PlanError(f"the answer is not valid JSON: {err.msg} at character {err.pos}") from None
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= max_events:
        raise PlanError(f"the answer must be a JSON object whose events list has 1 to {max_events} entries")
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not isinstance(event.get("caption"), str):
            raise PlanError(f"events[{i}] must be an object with a caption string")
        duration = event.get("duration_s")
        if not (story.is_finite_number(duration) and duration > 0):
            raise PlanError(f"events[{i}].duration_s = {json.dumps(duration)}: must be a number > 0")
    return data


def fit_durations(
    durations: list[float],
    total_s: float,
    min_event_s: float = LIMITS.min_event_s,
    max_event_s: float | None = None,
) -> list[float]:
    """Rescale to sum to ``total_s`` keeping proportions. Events that would be shorter than the floor
    (``min_event_s``, or ``total_s / n`` when smaller) get the floor, events longer than ``max_event_s`` get
    that cap, and the others share the rest (the caller guarantees ``n * max_event_s >= total_s``)."""
    floor = min(min_event_s, total_s / len(durations))
    cap = math.inf if max_event_s is None else max(max_event_s, total_s / len(durations))
    fixed: dict[int, float] = {}  # events held at the floor or the cap
    while True:
        free_s = total_s - sum(fixed.values())
        free_weight = sum(d for i, d in enumerate(durations) if i not in fixed)
        sizes = [fixed.get(i, free_s * d / free_weight if free_weight else 0.0) for i, d in enumerate(durations)]
        free = len(durations) - len(fixed)
        long = {i: cap for i, s in enumerate(sizes) if i not in fixed and s > cap}
        short = {i: floor for i, s in enumerate(sizes) if i not in fixed and s < floor}
        if long and len(long) < free:  # caps first: what they give up goes to the others, short ones too
            fixed.update(long)
        elif short and len(short) < free:
            fixed.update(short)
        else:  # nothing to fix, or only float rounding at a bound
            return sizes


def timeline(sizes: list[float], total_s: float) -> list[tuple[float, float]]:
    """(start_s, duration_s) per event, back to back; the last one ends at ``total_s`` exactly."""
    digits = 3 if min(sizes) >= _MS_GRID_MIN_S else 12  # whole milliseconds keep plan.json readable
    starts = [0.0] + [round(s, digits) for s in itertools.accumulate(sizes[:-1])]
    durations = [round(b - a, digits) for a, b in itertools.pairwise(starts)] + [total_s - starts[-1]]
    return list(zip(starts, durations))


# --- loading -----------------------------------------------------------------------------------------


def _load_part(auto_class: Any, path: Path, folder: Path, gguf: str | None, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained`` with any failure turned into a ``ModelLoadError`` naming ``path``."""
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    what = "tokenizer" if auto_class is transformers.AutoTokenizer else "model"
    try:
        return auto_class.from_pretrained(folder, **kwargs)
    except Exception as err:  # noqa: BLE001 - loaders raise anything; the user needs the path and the reason
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(f"cannot load the planner {what} from {path}: {reason}") from err
