"""The planner's slots mode: timed descriptions of what a video SHOWS -> a plan of what is HEARD at those times.

Each cue of a timeline (a captions file, or a video's shots with their descriptions) is a slot with fixed
times. The model writes one sound caption (and a tone) per slot, in order, and may name a background sound;
the times are not the model's to choose: they are copied from the slots in code after the answer, so every
event of the saved plan starts and ends at its cue's time. The JSON-plan core does the rest, as for a story
(``base.ask_for_plan``: the engine's constrained decoding under this mode's schema, validation, one retry), so
the mode works with every engine (transformers, llama.cpp, an OpenAI-compatible server).

    SlotRequest -> messages + schema -> Engine.complete() -> captions per slot -> events at the slots' times
                                                                               -> the bed on layer 1 (gaps)

Gaps between cues: ``silence`` (nothing is heard there; the background, if any, plays under each run of
touching cues) or ``bed`` (the background plays under the whole video, gaps included; the schema then asks
for one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import story
from ..errors import InputError, PlanError
from ..inputs.timelines import Cue
from ..story import Plan, ProgressFn, no_progress
from .base import (
    AMBIENCE_KEY,
    AMBIENCE_RULE,
    ANSWER_SEPARATORS,
    LIMITS,
    SETTING_KEY,
    PlanLimits,
    _bed_pieces,
    caption_patterns,
    _regex_run,
    _strip_fences,
    ask_for_plan,
    exact_end,
    _PRINTABLE,
)

GAPS = ("silence", "bed")  # the --gaps choices: what is heard between cues
_TOUCH_S = 1e-6  # cues closer than this share a boundary (one run of the bed)

SLOTS_SYSTEM_PROMPT = """\
You are a sound designer who adds sound to a video. You get the video's shots in order, each with its time \
and a description of what is SEEN in it; a text-to-audio model renders one sound clip per shot, at the \
shot's time.

Rules:
- For each shot write one caption of what is HEARD in it: the sound sources on screen and how they sound, \
"fast footsteps on tiles, plates crash", never what is seen or felt ("Tom chases Jerry" is not a sound). \
Every caption has a sound verb (clatters, hisses, creaks, rings, hums, thuds).
- A caption is one short English phrase (3 to {caption_max} characters), without names or dialogue.
- events: one entry per shot, keyed by the shot's number, in order; each caption is the sound of that shot \
only. Never copy the shot's description: turn what is seen into what is heard.
- tone is one or two words for the mood ("tense", "playful", "calm"); each event's tone fits its shot.
- reasoning is one short sentence naming the sounds you chose, written before the events.
- Answer with one JSON object and nothing else."""

EXAMPLE = (  # an earlier turn of the chat: (video, shots, the answer); descriptions of sights, answers of sounds
    "a cartoon cat chases a mouse through a house",
    ((0.0, 3.0, "A cat sneaks along a kitchen counter toward a mouse hole."),
     (3.0, 5.5, "The mouse runs across the floor; the cat leaps and misses."),
     (5.5, 9.0, "Plates fall from a shelf and break; the cat lies dazed.")),
    {
        "reasoning": "Soft paw steps, then a scurry and a thud, then crashing plates.",
        "tone": "playful",
        "events": {
            "1": {"caption": "soft padded footsteps creep on a wooden counter", "tone": "sneaky"},
            "2": {"caption": "tiny feet scurry on tiles, then a heavy thud", "tone": "frantic"},
            "3": {"caption": "plates crash and shatter on the floor", "tone": "chaotic"},
        },
        "setting": "a kitchen in a house",
        "background_sound": "a refrigerator hums softly",
    },
)  # fmt: skip


@dataclass(frozen=True)
class SlotRequest:
    """What the user asked for: sound for these slots, in a story of ``total_s`` seconds."""

    slots: tuple[Cue, ...]  # the cues, in time order, none overlapping, each ending by total_s
    total_s: float  # length of the soundtrack, seconds (the video's length, or the timeline's end)
    prompt: str = ""  # what the video is, in words (optional: the descriptions say the rest)
    gaps: str = "silence"  # "silence" or "bed": what is heard between cues
    tone: str | None = None  # the overall tone; the planner picks one if None
    seed: int = 0  # base seed of the render (recorded, not used by the planner)
    max_event_s: float | None = None  # the longest clip the decoder renders in one window (the bed is cut so)

    def __post_init__(self) -> None:
        story.check_total_s(self.total_s)
        story.check_seed(self.seed)
        if self.gaps not in GAPS:
            raise InputError(f"gaps = {self.gaps!r}: must be one of {', '.join(GAPS)}")
        if not 1 <= len(self.slots) <= story.MAX_EVENTS:
            raise InputError(f"{len(self.slots)} cues: a plan holds 1 to {story.MAX_EVENTS}")
        if self.prompt and len(self.prompt) > story.MAX_PROMPT_CHARS:
            raise InputError(f"the prompt has {len(self.prompt)} characters: must be at most {story.MAX_PROMPT_CHARS}")
        last = max(cue.end_s for cue in self.slots)
        if last > self.total_s + 1e-3:
            raise InputError(f"the last cue ends at {last:g} s, after the end of the story ({self.total_s:g} s)")
        if self.gaps == "bed" and len(self.slots) + len(self.bed_spans()) > story.MAX_EVENTS:
            raise InputError(
                f"--gaps bed needs {len(self.bed_spans())} clips of background besides the {len(self.slots)} cues: "
                f"more than {story.MAX_EVENTS} events", hint="use --gaps silence, or fewer cues",
            )  # fmt: skip

    def bed_spans(self) -> list[tuple[float, float]]:
        """(start_s, duration_s) of the background's clips: under the whole story (gaps = bed) or under each
        run of touching cues (gaps = silence), cut into clips of at most ``max_event_s``."""
        if self.gaps == "bed":
            runs = [(0.0, self.total_s)]
        else:
            runs = []
            for cue in self.slots:
                if runs and abs(cue.start_s - runs[-1][1]) <= _TOUCH_S:
                    runs[-1] = (runs[-1][0], cue.end_s)
                else:
                    runs.append((cue.start_s, cue.end_s))
        spans = []
        for start_s, end_s in runs:
            end_s = min(end_s, self.total_s)
            pieces = 1 if self.max_event_s is None else math.ceil((end_s - start_s) / self.max_event_s - 1e-9)
            spans += _bed_pieces(start_s, end_s, max(1, pieces), self.total_s)
        return spans

    def has_bed(self) -> bool:
        """Whether the answer names a background: room for its clips under ``story.MAX_EVENTS``."""
        return len(self.slots) + len(self.bed_spans()) <= story.MAX_EVENTS

    def story_prompt(self) -> str:
        """The plan's prompt (the residual query reads it): the user's, else the descriptions in order."""
        text = self.prompt.strip() or "; ".join(cue.text for cue in self.slots)
        return text[: story.MAX_PROMPT_CHARS]


# --- the question ------------------------------------------------------------------------------------


def slot_messages(request: SlotRequest, limits: PlanLimits = LIMITS) -> list[dict[str, str]]:
    """The chat that asks for one caption per slot: the rules, one example exchange, then the slots."""
    rules = SLOTS_SYSTEM_PROMPT.format(caption_max=limits.caption_max_chars).splitlines()
    if request.has_bed():
        rules.insert(next(i for i, line in enumerate(rules) if line.startswith("- tone is")), AMBIENCE_RULE)
    prompt, shots, answer = EXAMPLE
    example_request = SlotRequest(
        slots=tuple(Cue(i, a, b, text, 0) for i, (a, b, text) in enumerate(shots)), total_s=shots[-1][1], prompt=prompt
    )  # fmt: skip
    shown = answer if request.has_bed() else {k: v for k, v in answer.items() if k not in (SETTING_KEY, AMBIENCE_KEY)}
    return [
        {"role": "system", "content": "\n".join(rules)},
        {"role": "user", "content": _request_text(example_request)},
        {"role": "assistant", "content": json.dumps(shown, separators=ANSWER_SEPARATORS)},
        {"role": "user", "content": _request_text(request)},
    ]


def _request_text(request: SlotRequest) -> str:
    lines = [f"Video: {request.prompt.strip()}"] if request.prompt.strip() else []
    lines.append(f"Shots ({len(request.slots)}, what is seen):")
    lines += [f"{i + 1}. {cue.start_s:g}-{cue.end_s:g} s: {cue.text}" for i, cue in enumerate(request.slots)]
    if request.tone:
        lines.append(f"Tone: {request.tone}.")
    lines.append(f"Write the sound of each of the {len(request.slots)} shots, not what it shows.")
    return "\n".join(lines)


def slot_schema(request: SlotRequest, limits: PlanLimits = LIMITS) -> dict[str, Any]:
    """The answer's JSON schema: one {caption, tone} per slot under the slot's number ("1", "2", ...: the keys are
    written by the grammar, so the model knows which shot it is at), no times (the slots fix them)."""
    caption, word = caption_patterns(limits)
    fields = {"caption": {"type": "string", "pattern": f"^{caption}$"}, "tone": {"type": "string", "pattern": word}}
    event = {"type": "object", "properties": fields, "required": list(fields), "additionalProperties": False}
    numbers = [str(i + 1) for i in range(len(request.slots))]
    properties: dict[str, Any] = {
        "reasoning": {"type": "string", "pattern": f"^{_regex_run(_PRINTABLE, 0, limits.reasoning_chars)}$"},
        "tone": {"type": "string", "pattern": word},
        "events": {"type": "object", "properties": {n: event for n in numbers}, "required": numbers,
                   "additionalProperties": False},
    }  # fmt: skip
    if request.has_bed():
        setting = f"^[A-Za-z]{_regex_run(_PRINTABLE, 0, limits.setting_chars - 1)}$"
        properties[SETTING_KEY] = {"type": "string", "pattern": setting}
        bed = f"^{caption}$" if request.gaps == "bed" else f"^(|{caption})$"  # --gaps bed: a background is needed
        properties[AMBIENCE_KEY] = {"type": "string", "pattern": bed}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def max_slot_tokens(request: SlotRequest, limits: PlanLimits = LIMITS) -> int:
    """Tokens enough for the longest answer the schema admits: every token adds at least one byte."""
    caption = "x" * limits.caption_max_chars
    longest: dict[str, Any] = {
        "reasoning": "x" * limits.reasoning_chars,
        "tone": "x" * limits.tone_chars,
        "events": {str(i + 1): {"caption": caption, "tone": "x" * limits.tone_chars}
                   for i in range(len(request.slots))},  # fmt: skip
    }
    if request.has_bed():
        longest[SETTING_KEY] = "x" * limits.setting_chars
        longest[AMBIENCE_KEY] = caption
    return len(json.dumps(longest, separators=ANSWER_SEPARATORS)) + 1


# --- the answer -> Plan ------------------------------------------------------------------------------


def plan_slots(planner: Any, request: SlotRequest, *, progress: ProgressFn = no_progress) -> Plan:
    """Ask ``planner`` (a JSON planner on any engine) for the sound of every slot; the plan keeps their times."""
    engine, limits = getattr(planner, "engine", None), getattr(planner, "limits", LIMITS)
    if engine is None or not hasattr(engine, "complete"):
        raise InputError(
            f"planner {planner.ref} cannot fill a timeline's slots: only a JSON planner (a chat LLM folder, a .gguf "
            "file or a server URL) can", hint="give one with --planner; the AudioStory checkpoint plans only prompts",
        )  # fmt: skip
    return ask_for_plan(
        engine, slot_messages(request, limits), slot_schema(request, limits), max_slot_tokens(request, limits),
        lambda answer: slot_plan_from_answer(answer, request), tries=limits.tries, progress=progress,
        hint="try again with other descriptions or a larger planner model",
    )  # fmt: skip


def slot_plan_from_answer(answer: str, request: SlotRequest) -> Plan:
    """Validate the model's JSON and place its captions at the slots' times, the background on layer 1."""
    try:
        data = json.loads(_strip_fences(answer))
    except json.JSONDecodeError as err:
        raise PlanError(f"the answer is not valid JSON: {err.msg} at character {err.pos}") from None
    events = data.get("events") if isinstance(data, dict) else None
    n = len(request.slots)
    if isinstance(events, dict):  # keyed by shot number, as the schema asks
        events = [events.get(str(i + 1)) for i in range(n)] if len(events) == n else None
    if not isinstance(events, list) or len(events) != n:
        raise PlanError(f"the answer must be a JSON object whose events have exactly {n} entries, one per shot "
                        f"(keys \"1\" to \"{n}\")")
    captions, tones = [], []
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not isinstance(event.get("caption"), str) or not event["caption"].strip():
            raise PlanError(f"events[{i + 1}] must be an object with a caption string")
        captions.append(event["caption"])
        tones.append(str(event.get("tone", "")))
    bed = data.get(AMBIENCE_KEY, "") if request.has_bed() else ""
    if not isinstance(bed, str):
        raise PlanError(f"{AMBIENCE_KEY} = {json.dumps(bed)[:40]}: must be a string")
    if request.gaps == "bed" and not bed.strip():
        raise PlanError(f"{AMBIENCE_KEY} is empty: --gaps bed needs a background sound under the whole video")
    tone, reasoning = str(data.get("tone", "")), str(data.get("reasoning", ""))
    return slot_plan(request, captions, tones, bed, tone=tone, reasoning=reasoning)


def slot_plan(
    request: SlotRequest,
    captions: Sequence[str],
    tones: Sequence[str] | None = None,
    bed: str = "",
    *,
    tone: str = "",
    reasoning: str = "",
) -> Plan:
    """The plan of ``request`` with ``captions[i]`` at slot i's times exactly, and ``bed`` (if any) on layer 1
    (``request.bed_spans``). ``render`` uses it on a timeline of sound captions, with no planner."""
    tones = tones or [""] * len(captions)
    events = []
    for cue, caption, event_tone in zip(request.slots, captions, tones, strict=True):
        end_s = min(cue.end_s, request.total_s)
        start_s, duration_s = exact_end(cue.start_s, end_s)
        events.append({"caption": " ".join(caption.split()), "start_s": start_s, "duration_s": duration_s,
                       "tone": event_tone.strip(), "layer": 0})  # fmt: skip
    caption = " ".join(bed.split())
    if caption:
        events += [
            {"caption": caption, "start_s": start_s, "duration_s": duration_s, "tone": "", "layer": 1}
            for start_s, duration_s in request.bed_spans()
        ]
    return story.plan_from_dict(
        {
            "prompt": request.story_prompt(),
            "total_s": request.total_s,
            "tone": request.tone or tone.strip(),
            "reasoning": reasoning.strip(),
            "events": [{"index": i, **event} for i, event in enumerate(events)],
        }
    )


class SlotPlanner:
    """A JSON planner in slots mode, with the ``Planner`` shape (``ref``, ``plan(request)``) that
    ``pipeline.generate_story`` calls: ``generate --timeline`` plans through it."""

    def __init__(self, planner: Any) -> None:
        self.planner = planner  # the JSON planner whose engine answers

    @property
    def ref(self) -> str:
        return self.planner.ref

    def plan(self, request: SlotRequest, *, progress: ProgressFn = no_progress) -> Plan:
        return plan_slots(self.planner, request, progress=progress)
