"""The data that flows through a run: request -> plan -> clips -> track. No torch here.

A ``Plan`` is plain JSON on disk (``plan.json``) so a user can write or edit one and render it with
``audiostory render``. ``plan_from_dict`` validates it and names the bad field and the allowed range,
e.g. ``events[2].duration_s = -1: must be > 0``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import AudiostoryError, InputError, PlanError
from .settings import MAX_SEED, RenderOptions, options_from_dict

SCHEMA_VERSION = 2  # bump when the plan JSON changes shape; 2 added per-event seeds, the edit history and
# continue_from; version 1 plans still load (READABLE_VERSIONS), newer ones are rejected with a message
READABLE_VERSIONS = (1, 2)
MAX_TOTAL_S = 600.0  # 10 minutes: the longest story a plan may describe
MAX_EVENTS = 64  # most events one plan may hold
MAX_CAPTION_CHARS = 200  # a caption is one sentence of what is heard
MAX_PROMPT_CHARS = 2000  # a story prompt is a paragraph, not a document
MAX_LAYER = 3  # layer 0 is the foreground sequence; 1..3 are beds placed under it
MIN_EVENT_S = 0.001  # shortest event: a clip of at least a few samples (an event of 0 samples crashed the decoder)
_EPS_S = 1e-6  # tolerance for float seconds read back from JSON
_SHORTEST_S = MIN_EVENT_S - 1e-9  # MIN_EVENT_S in float noise: a 1 ms cue from 0.008 to 0.009 s lasts 0.00099999...
MAX_PLAN_BYTES = 16 * 1024 * 1024  # a plan file is a few kB; a bigger file is not a plan
MAX_JSON_DEPTH = 16  # nesting a plan's free-form ``request`` may have (a batch writes 2 levels)
MAX_REQUEST_ITEMS = 256  # values a plan's ``request`` may hold, all levels together
MAX_REQUEST_INT = 2**64  # integers in a plan's ``request`` (seeds, counts) stay below this in size


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
    seed: int | None = None  # seed of this event's clip; None: derived from the run seed (``clip_seed``)

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
    history: Any = None  # editing.records.History: the events first rendered and the edits since; None: unedited
    continue_from: Any = None  # editing.records.ContinueFrom: the recording the story continues; None: none

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
    latents: np.ndarray | None = field(default=None, repr=False)  # float32 [frames, C]: the final latents the
    # VAE decoded to make ``wave``, on the clip's own grid (head context and tail frames included)
    origin_sample: int | None = None  # timeline sample where latent frame 0 starts (<= the clip's start)


@dataclass(frozen=True)
class Track:
    """The finished story."""

    wave: np.ndarray = field(repr=False)  # float32 [channels, samples], plan.total_s long
    sample_rate: int = 44100  # samples per second

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


def event_seed(event: Event, seed: int) -> int:
    """Seed of an event's clip: its own saved seed (an edit's reroll), else ``clip_seed(seed, event.index)``."""
    return clip_seed(seed, event.index) if event.seed is None else event.seed


def clip_seed(seed: int, index: int) -> int:
    """Seed of one clip: a hash of the run seed and the event index, so no two events share noise."""
    digest = hashlib.blake2b(f"audiostory:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_SEED


# --- checks shared by the request, the plan loader and the CLI --------------------------------------


def check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty", hint="describe the story in a sentence or two")
    check_text(prompt, "the prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt has {len(prompt)} characters: must be at most {MAX_PROMPT_CHARS}")


def check_total_s(total_s: float) -> None:
    if not is_finite_number(total_s) or not 0 < total_s <= MAX_TOTAL_S:
        raise InputError(f"duration = {shown(total_s)}: must be > 0 and <= {MAX_TOTAL_S:g} seconds")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed = {shown(seed)}: must be an integer between 0 and {MAX_SEED}")


def check_text(text: str, name: str) -> None:
    """A string that will be printed, tokenized and written as UTF-8: no lone surrogates (JSON's ``"\\ud800"``,
    or undecodable bytes of a command line) and no NUL characters."""
    if "\0" in text:
        raise InputError(f"{name} contains a NUL character (\\u0000): remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(f"{name} contains {shown(text[err.start])}, which is not a character: text must be UTF-8") from None


# --- times --------------------------------------------------------------------------------------------


def round_times(plan: Plan) -> Plan:
    """``plan`` with its times in whole milliseconds (start, end and total each rounded to the millisecond
    they mean, each duration the difference of its rounded end and start, so sums stay exact), or ``plan``
    itself when a time is not within float noise of a millisecond (a hand-made 0.0005 s) or rounding would
    change the plan's shape (an event under 1 ms, an overlap). Apply it where a plan is made, before it is
    rendered (see the module's docstring); plan files are read as written."""

    def ms(seconds: float) -> int | None:
        whole = round(seconds * 1000)
        return whole if abs(seconds * 1000 - whole) <= 1e-6 else None

    total = ms(plan.total_s)
    bounds = [(ms(e.start_s), ms(e.end_s)) for e in plan.events]
    if total is None or any(start is None or end is None or end <= start for start, end in bounds):
        return plan
    events = tuple(
        replace(e, start_s=start / 1000, duration_s=(min(end, total) - start) / 1000)
        for e, (start, end) in zip(plan.events, bounds)
    )
    rounded = replace(plan, total_s=total / 1000, events=events)
    try:
        _check_events(rounded.events, rounded.total_s)
    except PlanError:
        return plan
    return rounded


# --- JSON ---------------------------------------------------------------------------------------------


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema_version": plan.schema_version,
        "prompt": plan.prompt,
        "total_s": plan.total_s,
        "tone": plan.tone,
        "reasoning": plan.reasoning,
        "events": [event_to_dict(e) for e in plan.events],
    }
    if plan.render is not None:
        data["render"] = plan.render.to_dict()
    if plan.request is not None:
        data["request"] = plan.request
    if plan.continue_from is not None:
        data["continue_from"] = plan.continue_from.to_dict()
    if plan.history is not None:
        data["history"] = plan.history.to_dict()
    return data


def event_to_dict(e: Event) -> dict[str, Any]:
    data = {
        "index": e.index,
        "caption": e.caption,
        "start_s": e.start_s,
        "duration_s": e.duration_s,
        "tone": e.tone,
        "layer": e.layer,
    }
    if e.seed is not None:
        data["seed"] = e.seed
    return data


def plan_to_json(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=2, ensure_ascii=False) + "\n"


def read_user_file(path: Path, what: str, max_bytes: int, instead: str) -> bytes:
    """The first ``max_bytes + 1`` bytes of a file the user named (a pipe reads as well as a file, ``/dev/zero``
    is not read whole); missing, a folder (``instead`` says what to give), unreadable or a NUL byte in the path:
    one ``InputError`` that calls it ``what``."""
    try:
        with path.open("rb") as file:
            return file.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a folder: {instead}") from None
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except ValueError as err:  # a NUL byte in the path
        raise InputError(f"cannot read {what} {shown(str(path))}: {err}") from None


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; every problem is a ``PlanError`` or ``InputError`` naming the file."""
    path = Path(path)
    raw = read_user_file(path, "plan file", MAX_PLAN_BYTES, "give a plan .json file")
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError(f"{path}: more than {MAX_PLAN_BYTES // 2**20} MiB: not a plan (a plan is a few kB of JSON)")
    try:
        text = raw.decode("utf-8-sig")  # a BOM, as some editors write, is fine
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PlanError(
            f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line})", hint="save the plan as UTF-8"
        ) from None
    if not text.strip():
        raise PlanError(f"{path}: the file is empty: a plan is a JSON object (see examples/plan.json)")
    try:
        data = parse_json(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"{path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except ValueError as err:
        raise PlanError(f"{path}: not a plan: {err}") from None
    try:
        return plan_from_dict(data)
    except AudiostoryError as err:
        raise PlanError(f"{path}: {err}") from None


def plan_from_dict(data: Any) -> Plan:
    """Validate a decoded plan; errors name the field and the allowed range. Any value (any JSON, NaN as a
    float or as ``NonFinite``, huge ints, deep nesting) gives a valid ``Plan`` or a ``PlanError``."""
    if not isinstance(data, dict):
        raise PlanError(f"the plan must be a JSON object, got {_json_kind(data)}")
    from .editing.records import continue_from_dict, history_from_dict  # they use this module's checks

    version = data.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise PlanError(
            f"schema_version = {shown(version)}: this audiostory reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}",
            hint="update audiostory (pip install -U audiostory-cli) to read newer plans",
        )
    fields_v1 = {"schema_version", "prompt", "total_s", "tone", "reasoning", "events", "render", "request"}
    _no_unknown(data, "", fields_v1 if version == 1 else fields_v1 | {"history", "continue_from"})
    prompt = _text(data, "prompt", "", default="")
    total_s = _number(data, "total_s", "", f"> 0 and <= {MAX_TOTAL_S:g}")
    if not 0 < total_s <= MAX_TOTAL_S:
        raise PlanError(f"total_s = {total_s:g}: must be > 0 and <= {MAX_TOTAL_S:g}")
    raw_events = _field(data, "events", list, "")
    events = events_from_list(raw_events, total_s, "", seeds=version > 1)
    render = data.get("render")
    request = _field(data, "request", dict, "", default=None)
    if request is not None:
        _check_plain_json(request, "request")
    continue_from = data.get("continue_from")
    history = data.get("history")
    return Plan(
        continue_from=None if continue_from is None else continue_from_dict(continue_from),
        history=None if history is None else history_from_dict(history, events, total_s),
        prompt=prompt,
        total_s=total_s,
        events=events,
        reasoning=_text(data, "reasoning", "", default=""),
        tone=_text(data, "tone", "", default=""),
        render=None if render is None else options_from_dict(render),
        request=request,
    )


def events_from_list(raw_events: Any, total_s: float, where: str, *, seeds: bool = True) -> tuple[Event, ...]:
    """Validated events of a plan (or of its history: ``where`` prefixes the field names); ``seeds``: the
    per-event ``seed`` field is allowed (schema 2)."""
    if not isinstance(raw_events, list):
        raise PlanError(f"{where}events = {shown(raw_events)}: must be a list")
    if not 1 <= len(raw_events) <= MAX_EVENTS:
        raise PlanError(f"{where}events has {len(raw_events)} entries: must have 1 to {MAX_EVENTS}")
    events = tuple(_event_from_dict(raw, i, total_s, where, seeds) for i, raw in enumerate(raw_events))
    _check_no_overlap(events)
    return events


def _event_from_dict(raw: Any, i: int, total_s: float, prefix: str = "", seeds: bool = True) -> Event:
    where = f"{prefix}events[{i}]."
    if not isinstance(raw, dict):
        raise PlanError(f"{prefix}events[{i}] must be an object, got {_json_kind(raw)}")
    _no_unknown(raw, where, {"index", "caption", "start_s", "duration_s", "tone", "layer"} | ({"seed"} if seeds else set()))
    index = _field(raw, "index", int, where, default=i)
    if index != i:
        raise PlanError(f"{where}index = {shown(index)}: must be {i} (events are listed in index order)")
    caption = _text(raw, "caption", where).strip()
    if not 1 <= len(caption) <= MAX_CAPTION_CHARS:
        raise PlanError(f"{where}caption has {len(caption)} characters: must have 1 to {MAX_CAPTION_CHARS}")
    start_s = _number(raw, "start_s", where, f">= 0 and < total_s ({total_s:g})")
    if not 0 <= start_s < total_s:
        raise PlanError(f"{where}start_s = {start_s:g}: must be >= 0 and < total_s ({total_s:g})")
    duration_s = _number(raw, "duration_s", where, f">= {MIN_EVENT_S:g}, ending by total_s ({total_s:g})")
    if not duration_s >= _SHORTEST_S:
        raise PlanError(f"{where}duration_s = {duration_s:g}: must be > 0 (at least {MIN_EVENT_S:g} s)")
    if start_s + duration_s > total_s + _EPS_S:
        raise PlanError(
            f"{where}duration_s = {duration_s:g}: the event ends at {start_s + duration_s:g} s, "
            f"after total_s ({total_s:g}); must end by total_s"
        )
    layer = _field(raw, "layer", int, where, default=0)
    if not 0 <= layer <= MAX_LAYER:
        raise PlanError(f"{where}layer = {shown(layer)}: must be between 0 and {MAX_LAYER}")
    tone = _text(raw, "tone", where, default="")
    seed = _field(raw, "seed", int, where, default=None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise PlanError(f"{where}seed = {shown(seed)}: must be an integer between 0 and {MAX_SEED}")
    return Event(index=i, caption=caption, start_s=start_s, duration_s=duration_s, tone=tone, layer=layer, seed=seed)


def _check_events(events: tuple[Event, ...], total_s: float) -> None:
    """The timeline checks of ``plan_from_dict`` on events already built (``round_times`` re-checks)."""
    for e in events:
        if not (0 <= e.start_s < total_s and e.duration_s >= _SHORTEST_S and e.end_s <= total_s + _EPS_S):
            raise PlanError(f"events[{e.index}] does not fit in total_s ({total_s:g})")
    _check_no_overlap(events)


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
            raise PlanError(f"{where}{name} = {shown(value)}: must be a number")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError(f"{where}{name} = {shown(value)}: must be an integer")
        return value
    if not isinstance(value, kind):
        raise PlanError(f"{where}{name} = {shown(value)}: must be a {_KIND_NAMES[kind]}")
    return value


def _number(data: dict, name: str, where: str, allowed: str) -> float:
    """A required finite number; the message of a value that is none (a string, true, NaN, 10**400) says
    ``allowed`` too."""
    value = data.get(name, _MISSING)
    if value is not _MISSING and value is not None and not is_finite_number(value):
        raise PlanError(f"{where}{name} = {shown(value)}: must be a number {allowed}")
    return _field(data, name, float, where)


def _text(data: dict, name: str, where: str, default: Any = _MISSING) -> str:
    """A string field that will be shown, tokenized and written: valid UTF-8, no NUL."""
    value = _field(data, name, str, where, default=default)
    try:
        check_text(value, f"{where}{name}")
    except InputError as err:
        raise PlanError(str(err)) from None
    return value


_KIND_NAMES = {str: "string", list: "list", dict: "object"}


def _json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float, NonFinite)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _no_unknown(data: dict, where: str, known: set[str]) -> None:
    unknown = sorted((key for key in data if key not in known), key=_key_name)
    if unknown:
        raise PlanError(f"{where}{_key_name(unknown[0])}: unknown field (allowed: {', '.join(sorted(known))})")


def _key_name(key: Any) -> str:
    """A key as a message names it: a string as it is (cut, printable), anything else as ``shown``."""
    if not isinstance(key, str):
        return shown(key)
    text = key.encode("utf-8", "backslashreplace").decode("utf-8")
    if not text.isprintable():  # a newline or a control character would break the one-line message
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."


def _check_plain_json(value: Any, where: str) -> None:
    """``value`` (a plan's free-form ``request``) is JSON that writes and reads back equal: string keys and
    text, finite numbers, integers below MAX_REQUEST_INT, at most MAX_JSON_DEPTH deep and MAX_REQUEST_ITEMS
    values. Walked without recursion, so any nesting gives a message."""
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    count = 0
    while stack:
        item, path, depth = stack.pop()
        count += 1
        if count > MAX_REQUEST_ITEMS:
            raise PlanError(f"{where} holds more than {MAX_REQUEST_ITEMS} values: a request is a few settings")
        if depth > MAX_JSON_DEPTH:
            raise PlanError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise PlanError(f"{path}: the key {shown(key)} is not a string")
                _check_json_text(key, f"{path}: a key")
                stack.append((child, f"{path}.{_key_name(key)}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_json_text(item, path)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) >= MAX_REQUEST_INT:
                raise PlanError(f"{path} = {shown(item)}: must be an integer below 2**64 in size")
        elif not is_finite_number(item):
            raise PlanError(f"{path} = {shown(item)}: must be a finite number")


def _check_json_text(text: str, where: str) -> None:
    try:
        check_text(text, where)
    except InputError as err:
        raise PlanError(str(err)) from None


def is_finite_number(value: Any) -> bool:
    """A real int or float, finite (an int too large for a float is not); not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range (10**400)
        return False


class NonFinite:
    """What ``parse_json`` reads ``NaN``, ``Infinity`` and ``-Infinity`` as: not a number, so every check that
    wants one says so and names the field (``total_s = NaN: must be ...``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


class JSONTooDeepError(ValueError):
    """``parse_json``: the text nests arrays/objects deeper than Python can read."""


def parse_json(text: str) -> Any:
    """``json.loads`` for text a user wrote: ``NaN``/``Infinity`` become ``NonFinite``; a number of more digits
    than Python converts, or nesting too deep to read, raise ``ValueError`` (``JSONDecodeError`` is one) with a
    message fit for a user."""
    try:
        return json.loads(text, parse_constant=NonFinite)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise JSONTooDeepError("arrays or objects nested too deeply") from None
    except ValueError as err:  # "Exceeds the limit (4300 digits) for integer string conversion"
        if "digits" in str(err):
            raise ValueError(f"a number has more than {sys.get_int_max_str_digits()} digits") from None
        raise ValueError(str(err)) from None


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as a message shows it: JSON-like, cut to ``limit`` characters; never raises (huge ints,
    deep nesting, lone surrogates included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            text = str(value)
        except ValueError:  # more digits than Python converts
            return f"an integer of more than {sys.get_int_max_str_digits()} digits"
        return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"
    if isinstance(value, NonFinite):
        return value.name
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate, printable
    return text if len(text) <= limit else text[: limit - 3] + "..."
