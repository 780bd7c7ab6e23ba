"""Stories on disk: ``load_story`` (plan + audio + latents), ``apply_edit`` and ``extend_story`` (each writes a
new story: its audio, its plan with the edit recorded, its latents). The input story is never touched.

If the latents file is missing or belongs to another version of the plan or audio (or the audio is in a lossy
format, whose samples cannot be kept exactly), the story is first rendered again from its plan (its history
replayed): slower, the same result; ``notify`` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .. import audio_io
from ..errors import InputError
from ..story import Plan, StoryRequest, Track, load_plan, no_progress
from .latents import StoryState, latents_path_for, read_state
from .operations import apply_change, resolve
from .records import Change, Extend, History, check_extension
from ..paths import expand_user

if TYPE_CHECKING:
    from ..conditioning.base import Conditioner
    from ..decoders.base import Decoder
    from ..pipeline import StoryResult
    from ..story import ProgressFn

LOSSLESS = (".wav", ".flac")  # formats whose samples read back exactly as written (find_audio tries them first)
MAX_CONTEXT_EVENTS = 24  # events of the story so far shown to the planner when extending


@dataclass(frozen=True)
class Story:
    """A rendered story as found on disk."""

    plan: Plan
    plan_path: Path
    audio_path: Path | None  # its audio file; None: not found beside the plan
    plan_text: str = field(repr=False, default="")
    wave: np.ndarray | None = field(repr=False, default=None)  # the audio file's samples [C, T]
    sample_rate: int | None = None
    state: StoryState | None = field(repr=False, default=None)  # its latents; None: see ``why_not``
    why_not: str = ""  # why the latents cannot be used (the story then renders again first)


def load_story(plan_path: str | os.PathLike[str]) -> Story:
    """Read a story: its plan (validated), its audio and latents when they belong to it."""
    plan_path = expand_user(plan_path)
    plan = load_plan(plan_path)
    if plan.render is None:
        raise InputError(
            f"{plan_path} has not been rendered: an edit changes a rendered story",
            hint=f"render it first: audiostory render {plan_path} -o story.wav",
        )
    text = plan_path.read_bytes().decode("utf-8-sig")
    audio = audio_io.find_audio(plan_path)
    if audio is None:
        return Story(plan, plan_path, None, text, why_not=f"no audio file beside {plan_path.name}")
    if audio.suffix.lower() not in LOSSLESS:
        return Story(plan, plan_path, audio, text, why_not=f"{audio.name} is lossy, its samples cannot be kept exactly")
    data = audio.read_bytes()
    state, why = read_state(latents_path_for(plan_path), text, data)
    if state is None:
        return Story(plan, plan_path, audio, text, why_not=why)
    wave, rate = audio_io.read_audio(audio)
    return Story(plan, plan_path, audio, text, wave, rate, state)


def apply_edit(
    decoder: Decoder,
    conditioner: Conditioner,
    story: Story,
    change: Change,
    output: str | os.PathLike[str],
    *,
    progress: ProgressFn = no_progress,
    notify: Callable[[str], None] = lambda line: None,
) -> StoryResult:
    """Apply ``change`` to ``story`` and write the result as a new story at ``output`` (+ plan + latents)."""
    output_path, plan_path = check_edit_output(story, output)
    change = resolve(change, story.plan, decoder)
    return _write_edit(decoder, conditioner, story, change, output_path, plan_path, progress, notify)


def extend_story(
    planner,
    decoder: Decoder,
    conditioner: Conditioner,
    story: Story,
    prompt: str,
    duration_s: float,
    output: str | os.PathLike[str],
    *,
    progress: ProgressFn = no_progress,
    notify: Callable[[str], None] = lambda line: None,
) -> StoryResult:
    """Plan what follows ``story`` (the planner sees its events and tone) and render it after the old end; the
    old part of the audio is unchanged to the sample."""
    from ..pipeline import longest_event_s, plan_story
    from ..story import check_prompt, check_total_s, default_max_events

    check_prompt(prompt)
    check_total_s(duration_s)
    plan = story.plan
    check_extension(plan.total_s, duration_s)
    output_path, plan_path = check_edit_output(story, output)
    max_event_s = longest_event_s(decoder.caps.window_s, plan.render.crossfade_s)
    request = StoryRequest(
        prompt=extension_prompt(plan, prompt, duration_s), total_s=duration_s, seed=plan.render.seed,
        tone=plan.tone or None, max_events=default_max_events(duration_s, max_event_s), max_event_s=max_event_s,
    )  # fmt: skip
    planned = plan_story(planner, request, progress=progress)
    offset, first = plan.total_s, len(plan.events)
    events = tuple(
        _no_bed_join(replace(e, index=first + i, start_s=e.start_s + offset, seed=None), plan)
        for i, e in enumerate(planned.events)
    )
    change = Extend(prompt=prompt, events=events, total_s=offset + planned.total_s)
    change = resolve(change, plan, decoder)
    return _write_edit(decoder, conditioner, story, change, output_path, plan_path, progress, notify)


BED_GAP_S = 0.001  # a new bed starts this much after the old story's end when an old bed ends there


def _no_bed_join(event, plan: Plan):
    """A new bed that would join an old bed ending at the story's end starts ``BED_GAP_S`` later: a bed that
    joins loses its own fade-out, which would change the old part's last samples. So the old bed fades out as it
    did, the new one fades in. Foreground events join (the first new clip continues the old last one)."""
    ends_there = any(
        e.layer == event.layer and abs(e.end_s - plan.total_s) < 1e-6 for e in plan.events
    )
    if event.layer == 0 or not ends_there or abs(event.start_s - plan.total_s) > 1e-6:
        return event
    return replace(event, start_s=event.start_s + BED_GAP_S, duration_s=max(BED_GAP_S, event.duration_s - BED_GAP_S))


def extension_prompt(plan: Plan, prompt: str, duration_s: float) -> str:
    """What the planner is asked when extending: the story so far (prompt, tone, events), then what follows."""
    from ..story import MAX_PROMPT_CHARS

    lines = [e for e in sorted(plan.events, key=lambda e: e.start_s)][-MAX_CONTEXT_EVENTS:]
    so_far = "; ".join(f"{e.start_s:.1f}-{e.end_s:.1f} s: {e.caption}" for e in lines)
    head = f"Continue a story of {plan.total_s:g} s. So far: {plan.prompt.strip()}"
    tone = f" Tone: {plan.tone}." if plan.tone else ""
    ask = f" Plan only the next {duration_s:g} s, starting from 0 s: {prompt.strip()}"
    room = MAX_PROMPT_CHARS - len(head) - len(tone) - len(ask) - len(" Events so far: .")
    text = so_far if len(so_far) <= room else "..." + so_far[-max(0, room - 3) :]
    return f"{head}{tone} Events so far: {text}.{ask}"[:MAX_PROMPT_CHARS]


def check_edit_output(story: Story, output: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The new story's audio and plan paths, checked writable; never the story being edited."""
    from ..pipeline import check_story_output

    audio, plan_path = check_story_output(output)
    same = {story.plan_path.resolve()} | ({story.audio_path.resolve()} if story.audio_path else set())
    if audio.resolve() in same or plan_path.resolve() in same:
        raise InputError(
            f"-o {output} would overwrite the story being edited",
            hint="write the edit to a new file (the old version stays, to compare or go back)",
        )
    return audio, plan_path


def _write_edit(decoder, conditioner, story, change, output, plan_path, progress, notify) -> StoryResult:
    from ..pipeline import render_plan, resolve_options, write_story

    plan = story.plan
    options = resolve_options(plan.render, decoder)
    if story.state is not None and story.sample_rate != decoder.caps.sample_rate:
        story = replace(story, state=None, why_not=f"{story.audio_path.name} is not at the decoder's sample rate")
    if story.state is None:
        notify(f"{story.why_not}: rendering the story from its plan first (slower, the same result)")
        rendered = render_plan(decoder, plan, options, conditioner, progress=progress)
        wave, state = rendered.track.wave, rendered.state
    else:
        wave, state = story.wave, story.state
    edited = apply_change(decoder, conditioner, plan, wave, state, change, options, progress=progress)
    history = plan.history or History(events=plan.events, total_s=plan.total_s, edits=())
    new_plan = replace(
        edited.plan, history=replace(history, edits=history.edits + (edited.change,)), render=options
    )
    track = Track(wave=edited.track, sample_rate=decoder.caps.sample_rate)
    return write_story(output, plan_path, track, new_plan, edited.state, progress=progress)

