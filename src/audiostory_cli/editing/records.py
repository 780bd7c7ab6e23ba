"""What an edit is, as the plan file records it: ``EventEdit``, ``Vary``, ``Inpaint``, ``Extend``; the
``History`` (the events first rendered, then every edit in order) and ``ContinueFrom`` (the recording a story
continues). No torch here.

A record holds everything that changes the samples (the seed a reroll drew, the duration an edit snapped to),
so ``render story.plan.json`` replays the history and gets the edited file back sample for sample. How the
events change is written once, in ``apply_to_events``: an edit uses it, and reading a plan uses it to check
that ``events`` is what the history says.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Union

from ..errors import InputError, PlanError
from ..settings import MAX_SEED
from ..story import (
    MAX_CAPTION_CHARS,
    MAX_EVENTS,
    MAX_PROMPT_CHARS,
    MAX_TOTAL_S,
    Event,
    _field,
    _json_kind,
    _no_unknown,
    _number,
    _text,
    event_to_dict,
    events_from_list,
    shown,
)

MAX_EDITS = 1000  # edits one plan may record (each is a line of JSON)


@dataclass(frozen=True)
class EventEdit:
    """Render event ``event`` again: with a new caption, duration and/or seed (``--event N``)."""

    event: int  # index of the event in the plan (as its tables show it; the CLI's ``--event N``)
    caption: str | None = None  # its new caption; None: unchanged
    duration_s: float | None = None  # its new duration (what follows moves with it); None: unchanged
    seed: int | None = None  # the seed of its new clip; None: its current one
    reroll: bool = False  # draw a fresh seed (``operations.resolve`` does, and records the seed drawn)
    op = "event"


@dataclass(frozen=True)
class Vary:
    """A variation of event ``event``: its current latents noised to ``strength`` and denoised again."""

    event: int  # index of the event (0-based)
    strength: float  # noise level in (0, 1]: 0.1 a nuance, 1.0 a new clip
    seed: int | None = None  # seed of the noise; None: a fresh one, drawn and recorded
    op = "vary"


@dataclass(frozen=True)
class Inpaint:
    """Regenerate the story between ``start_s`` and ``end_s``, everything outside pinned."""

    start_s: float  # where the range starts on the story timeline, seconds
    end_s: float  # where it ends
    caption: str | None = None  # what the range should sound like; None: each event's own caption
    seed: int | None = None  # seed of its noise; None: a fresh one, drawn and recorded
    op = "inpaint"


@dataclass(frozen=True)
class Extend:
    """Events appended after the story's end (``audiostory extend``); the planner wrote them once."""

    prompt: str  # what the user asked the continuation to be ("then the gulls return")
    events: tuple[Event, ...]  # the new events, indexed after the old ones, placed after the old total
    total_s: float  # the story's new length
    op = "extend"


Change = Union[EventEdit, Vary, Inpaint, Extend]


@dataclass(frozen=True)
class History:
    """The events as first rendered, then every edit since, in order (replayed by ``render``)."""

    events: tuple[Event, ...]  # the events of the first render
    total_s: float  # the story's length at the first render
    edits: tuple[Change, ...]  # in the order they were made; seeds and durations resolved

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_s": self.total_s,
            "events": [event_to_dict(e) for e in self.events],
            "edits": [change_to_dict(c) for c in self.edits],
        }


@dataclass(frozen=True)
class ContinueFrom:
    """The recording a story continues (``generate --continue-from``)."""

    path: str  # the input file, absolute
    sha256: str  # its contents' hash: a replay refuses another file under the same name
    include_input: bool = True  # the output starts with the input
    stem: str = ""  # the file's name as the planner was told it ("harbor.wav")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "include_input": self.include_input}


# --- events after an edit -------------------------------------------------------------------------------


def apply_to_events(events: tuple[Event, ...], total_s: float, change: Change) -> tuple[tuple[Event, ...], float]:
    """The events and total length after ``change`` (its seed and duration already resolved)."""
    if isinstance(change, Extend):
        return events + change.events, change.total_s
    if isinstance(change, Inpaint):
        return events, total_s
    target = events[change.event]
    if isinstance(change, Vary):
        return _replaced(events, replace(target, seed=change.seed)), total_s
    edited = replace(
        target,
        caption=target.caption if change.caption is None else change.caption,
        duration_s=target.duration_s if change.duration_s is None else change.duration_s,
        seed=target.seed if change.seed is None else change.seed,
    )
    delta = edited.duration_s - target.duration_s
    if delta == 0:
        return _replaced(events, edited), total_s
    moved = tuple(
        edited if e.index == target.index
        else replace(e, start_s=e.start_s + delta) if moves(e, target)
        else replace(e, duration_s=e.duration_s + delta) if stretches(e, target)
        else e
        for e in events
    )  # fmt: skip
    return moved, total_s + delta


def moves(event: Event, edited: Event) -> bool:
    """Whether ``event`` moves when ``edited``'s duration changes: it starts where or after ``edited`` ends."""
    return event.index != edited.index and event.start_s >= edited.end_s - 1e-9


def stretches(event: Event, edited: Event) -> bool:
    """Whether ``event`` (a bed under ``edited``) is stretched when ``edited``'s duration changes: it runs across
    ``edited``'s end, so its own end moves with what follows."""
    return event.index != edited.index and event.start_s < edited.end_s - 1e-9 < event.end_s - 2e-9


def _replaced(events: tuple[Event, ...], new: Event) -> tuple[Event, ...]:
    return tuple(new if e.index == new.index else e for e in events)


# --- JSON -----------------------------------------------------------------------------------------------


def change_to_dict(change: Change) -> dict[str, Any]:
    if isinstance(change, EventEdit):
        data: dict[str, Any] = {"op": "event", "event": change.event}
        for name in ("caption", "duration_s", "seed"):
            if getattr(change, name) is not None:
                data[name] = getattr(change, name)
        return data
    if isinstance(change, Vary):
        return {"op": "vary", "event": change.event, "strength": change.strength, "seed": change.seed}
    if isinstance(change, Inpaint):
        data = {"op": "inpaint", "start_s": change.start_s, "end_s": change.end_s, "seed": change.seed}
        if change.caption is not None:
            data["caption"] = change.caption
        return data
    return {
        "op": "extend", "prompt": change.prompt, "total_s": change.total_s,
        "events": [{k: v for k, v in event_to_dict(e).items() if k != "index"} for e in change.events],
    }  # fmt: skip  # the new events' indexes follow the story's: not written


def history_from_dict(raw: Any, current: tuple[Event, ...], current_total: float) -> History:
    """A plan's ``history``, checked: valid edits, each on an event that exists, and ``current`` (the plan's
    ``events``) exactly what the edits make of the first events."""
    if not isinstance(raw, dict):
        raise PlanError(f"history must be an object, got {_json_kind(raw)}")
    _no_unknown(raw, "history.", {"total_s", "events", "edits"})
    total_s = _number(raw, "total_s", "history.", f"> 0 and <= {MAX_TOTAL_S:g}")
    if not 0 < total_s <= MAX_TOTAL_S:
        raise PlanError(f"history.total_s = {total_s:g}: must be > 0 and <= {MAX_TOTAL_S:g}")
    events = events_from_list(raw.get("events"), total_s, "history.")
    edits_raw = _field(raw, "edits", list, "history.")
    if len(edits_raw) > MAX_EDITS:
        raise PlanError(f"history.edits has {len(edits_raw)} entries: at most {MAX_EDITS}")
    edits, now, now_total = [], events, total_s
    for i, item in enumerate(edits_raw):
        change = change_from_dict(item, f"history.edits[{i}].", now, now_total)
        now, now_total = apply_to_events(now, now_total, change)
        edits.append(change)
    if now != current or now_total != current_total:
        raise PlanError(
            "events differ from what history.edits make of history.events (the plan was changed by hand "
            "after an edit)",
            hint="undo the hand edit, or delete the history field to render the events afresh",
        )
    return History(events=events, total_s=total_s, edits=tuple(edits))


def change_from_dict(raw: Any, where: str, events: tuple[Event, ...], total_s: float) -> Change:
    """One recorded edit, checked against the events it applies to."""
    if not isinstance(raw, dict):
        raise PlanError(f"{where[:-1]} must be an object, got {_json_kind(raw)}")
    op = raw.get("op")
    known = {
        "event": {"op", "event", "caption", "duration_s", "seed"},
        "vary": {"op", "event", "strength", "seed"},
        "inpaint": {"op", "start_s", "end_s", "caption", "seed"},
        "extend": {"op", "prompt", "total_s", "events"},
    }
    if op not in known:
        raise PlanError(f"{where}op = {shown(op)}: must be one of {', '.join(known)}")
    _no_unknown(raw, where, known[op])
    try:
        if op == "extend":
            new_total = _number(raw, "total_s", where, f"> the story's {total_s:g} s")
            prompt = _text(raw, "prompt", where)
            added = events_from_list(raw.get("events"), new_total, where)
            added = tuple(replace(e, index=len(events) + i) for i, e in enumerate(added))
            change: Change = Extend(prompt=prompt, events=added, total_s=new_total)
            check_extend(change, events, total_s)
            return change
        seed = _field(raw, "seed", int, where, default=None)
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise PlanError(f"{where}seed = {shown(seed)}: must be an integer between 0 and {MAX_SEED}")
        if op == "inpaint":
            start = _number(raw, "start_s", where, ">= 0")
            end = _number(raw, "end_s", where, "> start_s")
            caption = _optional_text(raw, "caption", where)
            change = Inpaint(start_s=start, end_s=end, caption=caption, seed=seed)
            check_inpaint(change, total_s)
            return change
        event = _field(raw, "event", int, where)
        check_event_number(event, events)
        if op == "vary":
            change = Vary(event=event, strength=_number(raw, "strength", where, "in (0, 1]"), seed=seed)
            check_strength(change.strength)
            return change
        duration = None if raw.get("duration_s") is None else _number(raw, "duration_s", where, "> 0")
        change = EventEdit(event=event, caption=_optional_text(raw, "caption", where), duration_s=duration, seed=seed)
        check_event_edit(change, events, total_s)
        return change
    except InputError as err:
        raise PlanError(f"{where}{err}") from None


def _optional_text(raw: dict, name: str, where: str) -> str | None:
    return None if raw.get(name) is None else _text(raw, name, where)


def continue_from_dict(raw: Any) -> ContinueFrom:
    if not isinstance(raw, dict):
        raise PlanError(f"continue_from must be an object, got {_json_kind(raw)}")
    _no_unknown(raw, "continue_from.", {"path", "sha256", "include_input"})
    path = _text(raw, "path", "continue_from.")
    digest = _text(raw, "sha256", "continue_from.")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise PlanError(f"continue_from.sha256 = {shown(digest)}: must be 64 lower-case hex digits")
    include = raw.get("include_input", True)
    if not isinstance(include, bool):
        raise PlanError(f"continue_from.include_input = {shown(include)}: must be true or false")
    return ContinueFrom(path=path, sha256=digest, include_input=include)


# --- checks shared by the CLI, the library and the plan reader ------------------------------------------


def check_change(change: Change, events: tuple[Event, ...], total_s: float) -> None:
    """Everything about ``change`` that the plan alone can refuse (before any model loads)."""
    if isinstance(change, Extend):
        check_extend(change, events, total_s)
    elif isinstance(change, Inpaint):
        check_inpaint(change, total_s)
    elif isinstance(change, Vary):
        check_event_number(change.event, events)
        check_strength(change.strength)
    else:
        check_event_edit(change, events, total_s)


def check_extension(total_s: float, duration_s: float) -> None:
    """``duration_s`` more seconds fit after a story of ``total_s``."""
    if total_s + duration_s > MAX_TOTAL_S:
        raise InputError(f"the story is {total_s:g} s: adding {duration_s:g} s passes {MAX_TOTAL_S:g} s",
                         hint=f"give --duration {MAX_TOTAL_S - total_s:g} or less")  # fmt: skip


def check_event_number(event: Any, events: tuple[Event, ...]) -> None:
    """``event`` is the index of one of ``events`` (as the plan's tables, picture and JSON number them)."""
    if isinstance(event, bool) or not isinstance(event, int) or not 0 <= event < len(events):
        raise InputError(f"event {shown(event)}: the story has events 0 to {len(events) - 1}")


def check_strength(strength: Any) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InputError(f"strength = {shown(strength)}: must be > 0 and <= 1 (the noise level of the variation)")


def check_caption(caption: str) -> None:
    from ..story import check_text

    check_text(caption, "the caption")
    if not 1 <= len(caption.strip()) <= MAX_CAPTION_CHARS:
        raise InputError(f"the caption has {len(caption.strip())} characters: must have 1 to {MAX_CAPTION_CHARS}")


def check_event_edit(change: EventEdit, events: tuple[Event, ...], total_s: float) -> None:
    check_event_number(change.event, events)
    if change.caption is None and change.duration_s is None and change.seed is None and not change.reroll:
        raise InputError("nothing to change", hint="give --caption, --duration, --seed or --reroll")
    if change.caption is not None:
        check_caption(change.caption)
    if change.seed is not None and (isinstance(change.seed, bool) or not 0 <= change.seed <= MAX_SEED):
        raise InputError(f"seed = {shown(change.seed)}: must be an integer between 0 and {MAX_SEED}")
    if change.duration_s is not None:
        target = events[change.event]
        delta = change.duration_s - target.duration_s
        if not change.duration_s > 0:
            raise InputError(f"duration = {shown(change.duration_s)}: must be > 0 seconds")
        if total_s + delta > MAX_TOTAL_S:
            raise InputError(f"duration = {change.duration_s:g} s makes the story {total_s + delta:g} s: at most {MAX_TOTAL_S:g}")
        new_end = target.start_s + min(change.duration_s, target.duration_s)
        for other in events:  # what stays must end before what moves begins (a bed across the end stretches)
            stays = other.index != target.index and not moves(other, target) and not stretches(other, target)
            if stays and other.end_s > new_end + 1e-9:
                raise InputError(
                    f"--duration {change.duration_s:g} shortens event {change.event} to end before event "
                    f"{other.index} (layer {other.layer}) does, which would be cut",
                    hint="change the durations in the plan file by hand and render it",
                )
            if stretches(other, target) and other.duration_s + delta <= 0.1:
                raise InputError(f"--duration would leave event {other.index} (layer {other.layer}) under 0.1 s")


def check_inpaint(change: Inpaint, total_s: float) -> None:
    if not 0 <= change.start_s < change.end_s <= total_s + 1e-9:
        raise InputError(
            f"range {change.start_s:g}:{change.end_s:g}: must be START:END with 0 <= START < END <= {total_s:g} "
            "(the story's length)"
        )
    if change.caption is not None:
        check_caption(change.caption)


def check_extend(change: Extend, events: tuple[Event, ...], total_s: float) -> None:
    if not total_s < change.total_s <= MAX_TOTAL_S:
        raise InputError(f"total_s = {change.total_s:g}: must be > the story's {total_s:g} s and <= {MAX_TOTAL_S:g}")
    if len(events) + len(change.events) > MAX_EVENTS:
        raise InputError(f"the story would have {len(events) + len(change.events)} events: at most {MAX_EVENTS}")
    if len(change.prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt has {len(change.prompt)} characters: at most {MAX_PROMPT_CHARS}")
    for e in change.events:
        if e.start_s < total_s - 1e-9:
            raise InputError(f"extend: event {e.index} starts at {e.start_s:g} s, before the story's end ({total_s:g} s)")
