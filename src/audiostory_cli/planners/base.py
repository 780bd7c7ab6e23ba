"""The JSON-plan core every planner engine shares: a story prompt -> a validated ``Plan`` of timed sound events.

An engine only turns a chat (messages) and a JSON schema into the model's answer text; everything else is
here, once: the messages, the schema (whose bounds a constraining engine enforces token by token), the
greedy default, fitting the durations to the requested length, the story's ambience as a bed on layer 1,
validation, and one retry with the error in the conversation before a ``PlanError``.

    messages + schema -> Engine.complete() -> JSON text -> plan_from_answer() -> Plan
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from .. import checkpoints, story
from ..errors import PlanError
from ..story import Plan, Progress, ProgressFn, StoryRequest, no_progress

PLANNER_KIND = checkpoints.ModelKind(
    role="planner",
    required=("config.json",),
    layout="a Hugging Face chat LLM folder (config.json, weights, tokenizer with a chat template), a .gguf file "
    "or an OpenAI-compatible server URL (http://…/v1)",
)


@runtime_checkable
class Planner(Protocol):
    """Anything that writes plans: the JSON planners here and the AudioStory checkpoint's own planner."""

    ref: str  # the reference it was loaded from (recorded in saved plans)

    def plan(self, request: StoryRequest, *, progress: ProgressFn = no_progress) -> Plan: ...


class Engine(Protocol):
    """The one thing an LLM backend does for the core: answer a chat, greedily, under a JSON schema."""

    ref: str  # what errors name: a path, a hub id or a server URL
    constrained: bool  # True when the answer is decoded under the schema (it always parses)

    def complete(
        self, messages: list[dict[str, str]], schema: dict[str, Any], *, max_tokens: int, progress: ProgressFn
    ) -> str:
        """The model's answer to ``messages``: at most ``max_tokens`` tokens, progress as ("plan", done, total)."""
        ...


@dataclass(frozen=True)
class PlanLimits:
    """Bounds of the planner's answer; a constraining engine enforces them, so the answer's length is bounded."""

    reasoning_chars: int = 200  # longest reasoning the model may write before the events
    tone_chars: int = 24  # longest tone ("calm", "slowly rising dread")
    caption_min_chars: int = 3  # shortest caption (first character a letter, last one not a space)
    caption_max_chars: int = 120  # longest caption: one sentence of what is heard
    setting_chars: int = 60  # longest setting (the place and weather, written before the ambience)
    ambience: bool = True  # ask for a background heard under the whole story (a bed on layer 1); False: none
    min_event_s: float = 0.5  # shortest event after rescaling (total / events when that is smaller)
    tries: int = 2  # answers asked for before giving up: the first, and one retry with the error
    progress_every: int = 8  # report progress every this many generated tokens


LIMITS = PlanLimits()
_PRINTABLE = r"[ !#-\[\]-~]"  # printable ASCII without '"' and '\': no escapes, one byte per character
_VISIBLE = r"[!#-\[\]-~]"  # the same without the space
_REGEX_RUN_MAX = 100  # some grammar compilers reject a regex repeat above {,128}: longer runs are chained
ANSWER_SEPARATORS = (",", ":")  # how answers are written (the examples, the grammar): no spaces, ~20 % fewer tokens
SECONDS_PER_EVENT = 15  # the event count the request suggests: one per this many seconds of story
_MS_GRID_MIN_S = 0.01  # starts snap to whole milliseconds when every event is at least this long

SYSTEM_PROMPT = """\
You are a sound designer who plans audio stories. You turn a story into a timeline of sound events; \
a text-to-audio model renders each event as a clip and the clips are joined into one soundtrack.

Rules:
- Captions describe what is HEARD, not what happens in the story. Name the sound sources and how they \
sound: "waves break on pebbles", "a wooden door creaks open, then footsteps on gravel". Never write \
feelings or plot, such as "the hero feels relieved"; write the sounds of that moment instead. Every \
caption has a sound verb (clatters, hisses, neighs, creaks, rings, hums): "a train pulls in" is not a sound, \
"train brakes hiss to a stop" is.
- A caption is one short English phrase (3 to {caption_max} characters), without names or dialogue.
- events: one event per moment of the story, in story order, each a different sound: never the same \
caption twice. duration_s is a whole number of seconds; the durations add up to the total length of the story.
- tone is one or two words for the mood ("tense", "joyful", "ominous", "intense", "calm"); each event's \
tone fits that moment: an alarm or a storm is tense, a hammer on an anvil is intense, applause is joyful; \
"calm" only for a quiet moment.
- reasoning is one short sentence naming the sounds you chose, written before the events.
- Answer with one JSON object and nothing else."""
AMBIENCE_RULE = """\
- setting, written after the events, is where the story happens and its weather, in a few words.
- background_sound is a caption too: the steady sound heard there under the whole story, from its weather, \
machines, water or crowd, written as a sound source and what it does: "wind howls and snow hisses", "a diesel \
engine rumbles", "a furnace roars", "guests chatter and laugh", "water gurgles around a hull". It is not one of \
the events. "" when nothing steady is heard there."""
SETTING_KEY = "setting"  # written just before the ambience: naming the place first makes a 1.5B model's bed a
#   sound of that place, where asked for the sound alone it tends to name the place (benchmarks/plan_quality.md)
AMBIENCE_KEY = "background_sound"  # the answer's field for the ambience: its name says what to write

EXAMPLES = (  # earlier turns of the chat: (request, the plan answering it); one with an ambience, one without.
    # The stories name actions, not sounds: the answers show the model how to turn one into the other.
    (
        StoryRequest("a street market at noon: a vendor sells fruit, a customer pays, a cyclist rides away", 30.0),
        {
            "reasoning": "A vendor's call, coins on a tray and a bicycle bell, over the market crowd.",
            "tone": "lively",
            "events": [
                {"caption": "a vendor calls out over the stalls", "duration_s": 10, "tone": "lively"},
                {"caption": "coins clink into a metal tray", "duration_s": 8, "tone": "busy"},
                {"caption": "a bicycle bell rings, then tires roll away on cobbles", "duration_s": 12,
                 "tone": "cheerful"},
            ],
            "setting": "a busy street market at noon",
            "background_sound": "a market crowd murmurs",
        },
    ),
    (
        StoryRequest("someone writes a letter, folds it and seals the envelope", 20.0),
        {
            "reasoning": "Close desk sounds: a pen on paper, folding, an envelope pressed shut.",
            "tone": "quiet",
            "events": [
                {"caption": "a pen scratches steadily on paper", "duration_s": 8, "tone": "focused"},
                {"caption": "paper is folded twice with soft creases", "duration_s": 6, "tone": "quiet"},
                {"caption": "an envelope flap is pressed shut", "duration_s": 6, "tone": "tender"},
            ],
            "setting": "a desk in a quiet study",
            "background_sound": "",
        },
    ),
)  # fmt: skip


# --- the question ------------------------------------------------------------------------------------


def plan_prompt_messages(request: StoryRequest, limits: PlanLimits = LIMITS) -> list[dict[str, str]]:
    """The chat that asks for a plan of ``request``: the rules, two example exchanges, then the request (the
    part before the request is the same for every story: llama.cpp keeps its KV cache)."""
    ambience = has_ambience(request, limits)
    rules = SYSTEM_PROMPT.format(caption_max=limits.caption_max_chars).splitlines()
    if ambience:  # the background rule goes after the events rule, as the field comes after the events
        rules.insert(next(i for i, line in enumerate(rules) if line.startswith("- tone is")), AMBIENCE_RULE)
    messages = [{"role": "system", "content": "\n".join(rules)}]
    for example_request, answer in EXAMPLES:
        shown = answer if ambience else {k: v for k, v in answer.items() if k not in (SETTING_KEY, AMBIENCE_KEY)}
        messages += [
            {"role": "user", "content": _request_text(example_request)},
            {"role": "assistant", "content": json.dumps(shown, separators=ANSWER_SEPARATORS)},
        ]
    return [*messages, {"role": "user", "content": _request_text(request)}]


def _request_text(request: StoryRequest) -> str:
    """The request as short as the model follows it: its tokens are evaluated for every story (~25 ms each on
    a 2-core CPU), unlike the cached rules; the schema bounds the events and the durations are fitted after."""
    events = _suggested_events(request)
    lines = [f"Story: {request.prompt.strip()}", f"Length: {request.total_s:g} seconds, {events} events."]
    if request.tone:
        lines.append(f"Tone: {request.tone}.")
    return "\n".join(lines)


def _suggested_events(request: StoryRequest) -> int:
    """About one event per 15 seconds, at least 3 and as many as the longest event allows, at most max_events
    (one per 12 s made a 1.5B model pad short stories with repeated events: benchmarks/plan_quality.md)."""
    wanted = max(3, request.min_events, math.ceil(request.total_s / SECONDS_PER_EVENT))
    return min(request.max_events, wanted)


def has_ambience(request: StoryRequest, limits: PlanLimits = LIMITS) -> bool:
    """Whether the answer names an ambience: asked for, and room for its clips under ``story.MAX_EVENTS`` (the
    bed is cut into clips of at most ``max_event_s``: no more clips than the events need)."""
    return limits.ambience and request.max_events + request.min_events <= story.MAX_EVENTS


def plan_schema(request: StoryRequest, limits: PlanLimits = LIMITS) -> dict[str, Any]:
    """The JSON schema of the answer (a constraining engine enforces every bound written here)."""
    caption, word = caption_patterns(limits)
    fields: dict[str, Any] = {
        "caption": {"type": "string", "pattern": f"^{caption}$"},
        "duration_s": {"type": "integer", "minimum": 1, "maximum": max(1, math.ceil(request.total_s))},
        "tone": {"type": "string", "pattern": word},
    }
    event = {"type": "object", "properties": fields, "required": list(fields), "additionalProperties": False}
    properties: dict[str, Any] = {
        "reasoning": {"type": "string", "pattern": f"^{_regex_run(_PRINTABLE, 0, limits.reasoning_chars)}$"},
        "tone": {"type": "string", "pattern": word},
    }
    properties["events"] = {
        "type": "array", "items": event, "minItems": request.min_events, "maxItems": request.max_events,
    }  # fmt: skip
    if has_ambience(request, limits):
        setting = f"^[A-Za-z]{_regex_run(_PRINTABLE, 0, limits.setting_chars - 1)}$"  # the place, not used after
        properties[SETTING_KEY] = {"type": "string", "pattern": setting}
        properties[AMBIENCE_KEY] = {"type": "string", "pattern": f"^(|{caption})$"}  # a caption, or "" for none
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def caption_patterns(limits: PlanLimits = LIMITS) -> tuple[str, str]:
    """(a caption's regex without anchors, a tone's anchored regex): the bounds every plan schema shares."""
    word = f"^[A-Za-z][A-Za-z ,-]{{0,{limits.tone_chars - 1}}}$"  # a tone: starts with a letter
    middle = _regex_run(_PRINTABLE, limits.caption_min_chars - 2, limits.caption_max_chars - 2)
    return f"[A-Za-z]{middle}{_VISIBLE}", word


def _regex_run(char_class: str, least: int, most: int) -> str:
    """``char_class{least,most}`` written as chained repeats of at most ``_REGEX_RUN_MAX`` each."""
    parts = []
    while most > 0:
        step = min(most, _REGEX_RUN_MAX)
        parts.append(f"{char_class}{{{min(least, step)},{step}}}")
        least, most = max(0, least - step), most - step
    return "".join(parts)


def max_answer_tokens(request: StoryRequest, limits: PlanLimits = LIMITS) -> int:
    """Tokens enough for the longest answer the schema admits: every token adds at least one byte."""
    caption = "x" * limits.caption_max_chars
    event = {"caption": caption, "duration_s": max(1, math.ceil(request.total_s)), "tone": "x" * limits.tone_chars}
    longest: dict[str, Any] = {"reasoning": "x" * limits.reasoning_chars, "tone": "x" * limits.tone_chars}
    longest["events"] = [event] * request.max_events
    if has_ambience(request, limits):
        longest[SETTING_KEY] = "x" * limits.setting_chars
        longest[AMBIENCE_KEY] = caption
    return len(json.dumps(longest, separators=ANSWER_SEPARATORS)) + 1  # + the stop token


# --- the planner -------------------------------------------------------------------------------------


class JsonPlanner:
    """A chat LLM behind an ``Engine`` that writes plans as JSON; the same for every engine."""

    def __init__(self, engine: Engine, limits: PlanLimits = LIMITS) -> None:
        self.engine = engine  # turns messages + schema into the answer text
        self.limits = limits

    @property
    def ref(self) -> str:
        return self.engine.ref

    def plan(self, request: StoryRequest, *, progress: ProgressFn = no_progress) -> Plan:
        """Ask for a plan; one retry with the validation error, then ``PlanError``."""
        messages = plan_prompt_messages(request, self.limits)
        schema = plan_schema(request, self.limits)
        budget = max_answer_tokens(request, self.limits)
        return ask_for_plan(
            self.engine, messages, schema, budget, lambda answer: plan_from_answer(answer, request, self.limits),
            tries=self.limits.tries, progress=progress,
            hint="try again with another prompt, duration or --max-events, or use a larger planner model",
        )  # fmt: skip


def ask_for_plan(
    engine: Engine,
    messages: list[dict[str, str]],
    schema: dict[str, Any],
    budget: int,
    read: Callable[[str], Plan],
    *,
    tries: int,
    progress: ProgressFn,
    hint: str,
) -> Plan:
    """``read(answer)`` of the engine's answer to ``messages`` under ``schema``; after a ``PlanError`` the model is
    asked again with the error in the conversation, ``tries`` answers in all, then ``PlanError`` (``hint``)."""
    for _ in range(tries):
        answer = engine.complete(messages, schema, max_tokens=budget, progress=progress)
        try:
            return read(answer)
        except PlanError as err:
            error = err
        progress(Progress("plan", 0, budget, f"plan rejected ({error}), asking again"))
        retry = f"That plan was rejected: {error}. Answer with a corrected JSON plan."
        messages = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": retry}]
    raise PlanError(f"planner {engine.ref} gave no valid plan in {tries} tries; the last problem: {error}", hint=hint)


# --- the answer -> Plan ------------------------------------------------------------------------------


def plan_from_answer(answer: str, request: StoryRequest, limits: PlanLimits = LIMITS) -> Plan:
    """Validate the model's JSON, place its events on a timeline that ends at ``request.total_s`` and its
    ambience as a bed on layer 1 under all of them."""
    data = _parse_answer(answer, request.max_events)
    if len(data["events"]) < request.min_events:  # the schema's minItems, for an engine that does not enforce it
        raise PlanError(
            f"the answer has {len(data['events'])} events: a {request.total_s:g} s story needs at least "
            f"{request.min_events} events of at most {request.max_event_s:g} s"
        )
    durations = [e["duration_s"] for e in data["events"]]
    sizes = fit_durations(durations, request.total_s, limits.min_event_s, request.max_event_s)
    placed = timeline(sizes, request.total_s)
    events = [
        {"caption": raw["caption"].strip(), "start_s": start, "duration_s": duration,
         "tone": str(raw.get("tone", "")).strip(), "layer": 0}
        for raw, (start, duration) in zip(data["events"], placed)
    ]  # fmt: skip
    events += _ambience_events(data.get(AMBIENCE_KEY, ""), request)
    return story.plan_from_dict(
        {
            "prompt": request.prompt,
            "total_s": request.total_s,
            "tone": request.tone or str(data.get("tone", "")).strip(),
            "reasoning": str(data.get("reasoning", "")).strip(),
            "events": [{"index": i, **event} for i, event in enumerate(events)],
        }
    )


def _parse_answer(answer: str, max_events: int) -> dict[str, Any]:
    """The answer as a dict with 1..max_events events, each with a string caption and a positive duration."""
    try:
        data = json.loads(_strip_fences(answer))
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


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def _strip_fences(answer: str) -> str:
    """An unconstrained model often wraps its JSON in a markdown fence: the JSON inside it."""
    match = _FENCE.match(answer)
    return match.group(1) if match else answer


def _ambience_events(ambience: Any, request: StoryRequest) -> list[dict[str, Any]]:
    """The ambience on layer 1 from 0 to ``total_s``, cut into equal clips no longer than ``max_event_s``
    (back to back on their layer, so they crossfade into one bed); none for ""."""
    if not isinstance(ambience, str):
        raise PlanError(f"{AMBIENCE_KEY} = {json.dumps(ambience)[:40]}: must be a string")
    caption = " ".join(ambience.split())
    if not caption:
        return []
    pieces = 1 if request.max_event_s is None else math.ceil(request.total_s / request.max_event_s - 1e-9)
    return [
        {"caption": caption, "start_s": start_s, "duration_s": duration_s, "tone": "", "layer": 1}
        for start_s, duration_s in _bed_pieces(0.0, request.total_s, pieces, request.total_s)
    ]


def _bed_pieces(start_s: float, end_s: float, pieces: int, total_s: float) -> list[tuple[float, float]]:
    """``pieces`` back-to-back spans from ``start_s`` to ``end_s`` (the last one ends at ``end_s`` exactly)."""
    cuts = [start_s] + [round(start_s + (end_s - start_s) * (p + 1) / pieces, 3) for p in range(pieces - 1)] + [end_s]
    spans = [(a, b - a) for a, b in itertools.pairwise(cuts)]
    if end_s == total_s:  # as the foreground: the story's last clip ends at total_s to the float
        spans[-1] = exact_end(spans[-1][0], total_s)
    return spans


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
    starts[-1], last = exact_end(starts[-1], total_s)
    durations = [round(b - a, digits) for a, b in itertools.pairwise(starts)] + [last]
    return list(zip(starts, durations))


def exact_end(start_s: float, end_s: float) -> tuple[float, float]:
    """(start, duration) with ``start + duration == end_s`` exactly in floats, the start moved by at most a
    few ulps: ``end_s - start_s`` can miss (1.217 + (7.3 - 1.217) is 7.300000000000001), and for some starts
    no duration hits ``end_s`` at all."""
    start = start_s
    for _ in range(8):
        duration = end_s - start
        for candidate in (duration, math.nextafter(duration, -math.inf), math.nextafter(duration, math.inf)):
            if start + candidate == end_s:
                return start, candidate
        start = math.nextafter(start, -math.inf)
    return start_s, end_s - start_s  # not reached for finite inputs; the plan check allows a 1e-6 s overlap
