"""The data that flows through a run: request -> plan -> clips -> track. No torch here.

A ``Plan`` is plain JSON on disk (``plan.json``) so a user can write or edit one and render it with
``audiostory render``. ``plan_from_dict`` validates it and names the bad field and the allowed range,
e.g. ``events[2].duration_s = -1: must be > 0``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError, PlanError
from .settings import MAX_SEED, RenderOptions, options_from_dict

SCHEMA_VERSION = 1  # bump when the plan JSON changes shape; older versions are rejected with a message
MAX_TOTAL_S = 600.0  # 10 minutes: the longest story a plan may describe
MAX_EVENTS = 64  # most events one plan may hold
MAX_CAPTION_CHARS = 200  # a caption is one sentence of what is heard
MAX_PROMPT_CHARS = 2000  # a story prompt is a paragraph, not a document
MAX_LAYER = 3  # layer 0 is the foreground sequence; 1..3 are beds placed under it
_EPS_S = 1e-6  # tolerance for float seconds read back from JSON


@dataclass(frozen=True)
class StoryRequest:
    """What the user asked for."""

    prompt: str  # the story, in words
    total_s: float  # length of the whole story in seconds
    seed: int = 0  # base seed; each clip's seed is derived from it and the event index
    tone: str | None = None  # optional overall tone ("calm", "ominous"); the planner picks one if None
    max_events: int = 8  # upper bound on the number of events the planner may return
    max_event_s: float | None = None  # longest event the decoder renders as one clip; None: no bound

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        check_total_s(self.total_s)
        check_seed(self.seed)
        if not 1 <= self.max_events <= MAX_EVENTS:
            raise InputError(f"max_events = {self.max_events}: must be between 1 and {MAX_EVENTS}")
        if self.max_event_s is not None and self.min_events > self.max_events:
            raise InputError(
                f"a {self.total_s:g} s story needs at least {self.min_events} events of at most "
                f"{self.max_event_s:.2f} s, but max_events = {self.max_events}",
                hint=f"raise --max-events to {self.min_events} or shorten --duration",
            )

    @property
    def min_events(self) -> int:
        """Fewest events that cover ``total_s`` when none may last longer than ``max_event_s``."""
        return events_needed(self.total_s, self.max_event_s)


def events_needed(total_s: float, max_event_s: float | None) -> int:
    """Fewest events that cover ``total_s`` when none may last longer than ``max_event_s`` (None: 1)."""
    return 1 if max_event_s is None else math.ceil(total_s / max_event_s - 1e-9)


def default_max_events(total_s: float, max_event_s: float | None) -> int:
    """``--max-events`` when not given: 8, or as many as a story of ``total_s`` needs."""
    return min(MAX_EVENTS, max(8, events_needed(total_s, max_event_s)))


@dataclass(frozen=True)
class Event:
    """One sound event of the story, placed on the timeline."""

    index: int  # position in the plan, 0-based; also feeds the clip's seed
    caption: str  # what is heard ("waves break on pebbles"), not what happens in the story
    start_s: float  # where the event starts on the story timeline, seconds
    duration_s: float  # how long it lasts on the timeline, seconds (crossfade tails come on top)
    tone: str = ""  # mood of this event ("tense", "calm"), may be empty
    layer: int = 0  # 0: foreground sequence; 1..3: beds mixed under it

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class Plan:
    """A story as timed events; what ``--dry-run`` shows and ``render`` consumes."""

    prompt: str  # the story prompt the plan was made from
    total_s: float  # length of the story in seconds; the output has exactly this many seconds
    events: tuple[Event, ...]  # in index order
    reasoning: str = ""  # the planner's short explanation of its choices
    tone: str = ""  # overall tone of the story
    render: RenderOptions | None = None  # every setting it was rendered with; filled in once rendered
    request: dict[str, Any] | None = None  # what a batch line asked for, compared when the batch resumes
    schema_version: int = SCHEMA_VERSION  # version of the JSON layout

    def foreground(self) -> list[Event]:
        """Layer-0 events in timeline order: the sequence that crossfades into one another."""
        return sorted((e for e in self.events if e.layer == 0), key=lambda e: e.start_s)

    def with_render(self, options: RenderOptions) -> Plan:
        return replace(self, render=options)


@dataclass(frozen=True)
class Clip:
    """One rendered event."""

    event: Event  # the event it renders
    wave: np.ndarray = field(repr=False)  # float32 [channels, samples], duration_s (+ tail) long
    sample_rate: int = 44100  # samples per second of ``wave``
    seed: int = 0  # the seed its starting noise was drawn from


@dataclass(frozen=True)
class Track:
    """The finished story."""

    wave: np.ndarray = field(repr=False)  # float32 [channels, samples], plan.total_s long
    sample_rate: int = 44100  # samples per second
    clips: tuple[Clip, ...] = ()  # the clips it was mixed from

    @property
    def duration_s(self) -> float:
        return self.wave.shape[-1] / self.sample_rate


@dataclass(frozen=True)
class Progress:
    """One progress report from a long stage; the CLI draws it, tests may record it."""

    stage: str  # "load", "plan", "render", "step", "mix" or "write"
    done: int  # units finished so far
    total: int  # units in the stage (0 when unknown)
    message: str = ""  # what is being worked on ("event 3/8: gulls cry")


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default progress callback: says nothing."""


def clip_seed(seed: int, index: int) -> int:
    """Seed of one clip: a hash of the run seed and the event index, so no two events share noise."""
    digest = hashlib.blake2b(f"audiostory:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_SEED


# --- checks shared by the request, the plan loader and the CLI --------------------------------------


def check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty", hint="describe the story in a sentence or two")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt has {len(prompt)} characters: must be at most {MAX_PROMPT_CHARS}")


def check_total_s(total_s: float) -> None:
    if not is_finite_number(total_s) or not 0 < total_s <= MAX_TOTAL_S:
        raise InputError(f"duration = {total_s}: must be > 0 and <= {MAX_TOTAL_S:g} seconds")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed = {seed}: must be an integer between 0 and {MAX_SEED}")


# --- JSON ---------------------------------------------------------------------------------------------


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": plan.schema_version,
        "prompt": plan.prompt,
        "total_s": plan.total_s,
        "tone": plan.tone,
        "reasoning": plan.reasoning,
        "events": [
            {
                "index": e.index,
                "caption": e.caption,
                "start_s": e.start_s,
                "duration_s": e.duration_s,
                "tone": e.tone,
                "layer": e.layer,
            }
            for e in plan.events
        ],
    }
    if plan.render is not None:
        data["render"] = plan.render.to_dict()
    if plan.request is not None:
        data["request"] = plan.request
    return data


def plan_to_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=2, ensure_ascii=False) + "\n"


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; every problem is a ``PlanError`` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"plan file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read plan file {path}: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"{path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    try:
        return plan_from_dict(data)
    except PlanError as err:
        raise PlanError(f"{path}: {err}") from None


def plan_from_dict(data: Any) -> Plan:
    """Validate a decoded plan; errors name the field and the allowed range."""
    if not isinstance(data, dict):
        raise PlanError(f"the plan must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise PlanError(f"schema_version = {version!r}: this audiostory reads version {SCHEMA_VERSION}")
    _no_unknown(data, "", {"schema_version", "prompt", "total_s", "tone", "reasoning", "events", "render", "request"})
    prompt = _field(data, "prompt", str, "", default="")
    total_s = _field(data, "total_s", float, "")
    if not 0 < total_s <= MAX_TOTAL_S:
        raise PlanError(f"total_s = {total_s:g}: must be > 0 and <= {MAX_TOTAL_S:g}")
    raw_events = _field(data, "events", list, "")
    if not 1 <= len(raw_events) <= MAX_EVENTS:
        raise PlanError(f"events has {len(raw_events)} entries: must have 1 to {MAX_EVENTS}")
    events = tuple(_event_from_dict(raw, i, total_s) for i, raw in enumerate(raw_events))
    _check_no_overlap(events)
    render = data.get("render")
    return Plan(
        prompt=prompt,
        total_s=total_s,
        events=events,
        reasoning=_field(data, "reasoning", str, "", default=""),
        tone=_field(data, "tone", str, "", default=""),
        render=None if render is None else options_from_dict(render),
        request=_field(data, "request", dict, "", default=None),
    )


def _event_from_dict(raw: Any, i: int, total_s: float) -> Event:
    where = f"events[{i}]."
    if not isinstance(raw, dict):
        raise PlanError(f"events[{i}] must be an object, got {type(raw).__name__}")
    _no_unknown(raw, where, {"index", "caption", "start_s", "duration_s", "tone", "layer"})
    index = _field(raw, "index", int, where, default=i)
    if index != i:
        raise PlanError(f"{where}index = {index}: must be {i} (events are listed in index order)")
    caption = _field(raw, "caption", str, where).strip()
    if not 1 <= len(caption) <= MAX_CAPTION_CHARS:
        raise PlanError(f"{where}caption has {len(caption)} characters: must have 1 to {MAX_CAPTION_CHARS}")
    start_s = _field(raw, "start_s", float, where)
    if not 0 <= start_s < total_s:
        raise PlanError(f"{where}start_s = {start_s:g}: must be >= 0 and < total_s ({total_s:g})")
    duration_s = _field(raw, "duration_s", float, where)
    if not duration_s > 0:
        raise PlanError(f"{where}duration_s = {duration_s:g}: must be > 0")
    if start_s + duration_s > total_s + _EPS_S:
        raise PlanError(
            f"{where}duration_s = {duration_s:g}: the event ends at {start_s + duration_s:g} s, "
            f"after total_s ({total_s:g}); must end by total_s"
        )
    layer = _field(raw, "layer", int, where, default=0)
    if not 0 <= layer <= MAX_LAYER:
        raise PlanError(f"{where}layer = {layer}: must be between 0 and {MAX_LAYER}")
    tone = _field(raw, "tone", str, where, default="")
    return Event(index=i, caption=caption, start_s=start_s, duration_s=duration_s, tone=tone, layer=layer)


def _check_no_overlap(events: tuple[Event, ...]) -> None:
    """Events on one layer follow each other; the crossfade tails are added at render time."""
    for layer in sorted({e.layer for e in events}):
        ordered = sorted((e for e in events if e.layer == layer), key=lambda e: e.start_s)
        for before, after in zip(ordered, ordered[1:]):
            if after.start_s < before.end_s - _EPS_S:
                raise PlanError(
                    f"events[{after.index}].start_s = {after.start_s:g}: must be >= {before.end_s:g}, "
                    f"where events[{before.index}] on layer {layer} ends (put overlapping sounds on another layer)"
                )


_MISSING = object()


def _field(data: dict, name: str, kind: type, where: str, default: Any = _MISSING) -> Any:
    value = data.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise PlanError(f"{where}{name} is missing")
        return default
    if kind is float:
        if not is_finite_number(value):
            raise PlanError(f"{where}{name} = {json.dumps(value)}: must be a number")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(f"{where}{name} = {json.dumps(value)}: must be an integer")
        return value
    if not isinstance(value, kind):
        raise PlanError(f"{where}{name} = {json.dumps(value)[:60]}: must be a {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES = {str: "string", list: "list", dict: "object"}


def _no_unknown(data: dict, where: str, known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise PlanError(f"{where}{unknown[0]}: unknown field (allowed: {', '.join(sorted(known))})")


def is_finite_number(value: Any) -> bool:
    """A real int or float, finite; not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
