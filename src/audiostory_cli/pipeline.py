"""The orchestration: ``plan_story``, ``render_plan``, ``render_to_file`` and ``generate_story``.

Data flow: ``StoryRequest -> Planner.plan -> Plan -> Conditioner.condition -> Decoder.render -> [Clip]
-> mix.compose -> Track -> file``. Models come in already loaded (``registry``), so a batch loads them once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from . import audio_io, loudness, mix
from .devices import release_freed_memory
from .errors import InputError
from .decoders.base import ClipRequest
from .settings import RenderOptions
from .editing.latents import StoryState
from .story import Plan, Progress, ProgressFn, StoryRequest, Track, event_seed, no_progress, plan_to_json, round_times
from .paths import expand_user

if TYPE_CHECKING:
    from .conditioning.base import Conditioner
    from .editing.records import ContinueFrom
    from .decoders.base import Decoder

EVENT_MARGIN_S = 0.05  # planned events stay this far below the decoder window, for rounding to milliseconds
FALLBACK_BATCH_SIZE = 4  # "auto" for a decoder on an accelerator that cannot estimate its memory
CPU_BATCH_SIZE = 1  # "auto" on a CPU for a decoder with no ``batch_probe`` (others: measured, ``cpu_batching``)
PROBE_CLIP_S = 10.0  # the clip length ``cpu_batching`` measures batching at: a typical event
MAX_AUTO_BATCH_SIZE = 16  # ``batch_size`` None ("auto") never goes above this (past it a batch gains nothing)


@dataclass(frozen=True)
class Rendered:
    """What ``render_plan`` made, and how."""

    track: Track  # the mixed story, exactly plan.total_s long (after the recording it continues, if included)
    options: RenderOptions  # the options used: steps, guidance and batch size filled in, the decoder recorded
    state: StoryState  # every clip's final latents and the mix's gain: what an edit needs


@dataclass(frozen=True)
class StoryResult:
    """What one story produced."""

    plan: Plan  # the plan, with every render setting used filled in (``plan.render``)
    audio_path: Path  # the audio file written
    plan_path: Path  # the plan JSON written beside it
    duration_s: float  # length of the audio, seconds
    sample_rate: int  # samples per second of the audio


def plan_path_for(audio_path: Path) -> Path:
    """``story.wav`` -> ``story.plan.json``, beside the audio."""
    return audio_path.with_name(audio_path.stem + ".plan.json")


def check_story_output(
    output: str | os.PathLike[str], check: Callable[[str | os.PathLike[str]], Path] = audio_io.check_output_path
) -> tuple[Path, Path]:
    """The audio file and the plan beside it, checked before any work (``check``: ``audio_io.check_output_path``,
    or dub's check of a video; and the plan path free or an overwritable file): both resolved. Raises
    ``InputError``/``AudioIOError``."""
    from .editing.latents import latents_path_for

    given = expand_user(output) if "\x00" not in os.fspath(output) else None  # NUL: check_output_path says
    over = audio_io.name_overflow(latents_path_for(plan_path_for(given))) if given is not None and given.suffix else 0
    if over:  # the latents' name is the longest: say it in terms of the name the user gave
        size = len(os.fsencode(given.name))
        raise InputError(
            f"output name {given.name[:40]!r}... is {size} bytes: too long for this file system once the plan "
            f"and latents beside it ({given.stem[:20]}....latents.safetensors) and their hidden partial files add "
            "their suffixes",
            hint=f"use a name of at most {size - over} bytes",
        )
    audio = check(output)
    plan = plan_path_for(audio)
    audio_io.check_target(latents_path_for(plan), "latents path")
    return audio, audio_io.check_target(plan, "plan path")


def longest_event_s(clip_window_s: float, crossfade_s: float) -> float:
    """The longest event a planner may write so that event + crossfade tail fits one decoder window."""
    return clip_window_s - crossfade_s - EVENT_MARGIN_S


def auto_batch_size(decoder: Decoder) -> int:
    """Clips denoised together: on a CPU what a measurement on this machine says pays (``cpu_batching``, for
    the decoder's DiT at a ``PROBE_CLIP_S`` clip; ``CPU_BATCH_SIZE`` for a decoder without ``batch_probe``),
    within its memory estimate; on an accelerator as many as fit its free memory, the decoder's own estimate
    (``max_batch_size``) capped at ``MAX_AUTO_BATCH_SIZE``, else ``FALLBACK_BATCH_SIZE``."""
    device = getattr(decoder, "device", None)
    estimate = getattr(decoder, "max_batch_size", None)
    if device is not None and str(device).split(":")[0] == "cpu":
        probe = getattr(decoder, "batch_probe", None)
        if probe is None:
            return CPU_BATCH_SIZE
        from .cpu_batching import cpu_batch_size, linear_shapes

        rows, dit = probe(round(PROBE_CLIP_S * decoder.caps.sample_rate))
        batch = cpu_batch_size(rows, linear_shapes(dit), decoder.dtype)
        return batch if estimate is None else max(1, min(batch, estimate()))
    if estimate is None:
        return FALLBACK_BATCH_SIZE
    return max(1, min(MAX_AUTO_BATCH_SIZE, estimate()))


def plan_story(planner, request: StoryRequest, *, progress: ProgressFn = no_progress) -> Plan:
    """Ask the planner for a plan (``--dry-run`` stops here), its times in whole milliseconds (``round_times``:
    what renders is what ``plan.json`` says, to the float)."""
    progress(Progress("plan", 0, 0, "planning the story"))
    plan = round_times(planner.plan(request, progress=progress))
    progress(Progress("plan", 1, 1, f"{len(plan.events)} events"))
    return plan


def resolve_options(options: RenderOptions, decoder: Decoder) -> RenderOptions:
    """The options a render really uses: the decoder's own steps and guidance where none were given, the batch
    size that suits its device (``auto_batch_size``) where none was, and the decoder recorded (unless an
    AudioStory model brought it); refused if the decoder cannot honour them (``run_setup`` checked the same
    from its config files already; this is for callers of the library that skip it)."""
    caps = decoder.caps
    caps.check(options)
    batch_size = auto_batch_size(decoder) if options.batch_size is None else None
    resolved = options.resolved(caps.default_steps, caps.default_guidance, batch_size)
    return resolved if options.model is not None else replace(resolved, decoder=decoder.ref)


def render_plan(
    decoder: Decoder,
    plan: Plan,
    options: RenderOptions,
    conditioner: Conditioner,
    *,
    progress: ProgressFn = no_progress,
) -> Rendered:
    """Render every event of ``plan`` and mix them into one track of exactly ``plan.total_s`` (plus the
    recording it continues, when included); an edited plan replays its history. Also return the options used
    (what the plan saves) and what an edit needs (``Rendered.state``). ``options.batch_size`` (clips denoised
    together; None: what suits the device) changes the audio by float rounding only, and is saved like every
    other setting."""
    options = resolve_options(options, decoder)
    if plan.history is not None:
        from .editing.replay import replay

        wave, state = replay(decoder, plan, options, conditioner, progress=progress)
    else:
        wave, state = render_fresh(decoder, plan, options, conditioner, progress=progress)
    return Rendered(Track(wave=wave, sample_rate=decoder.caps.sample_rate), options, state)


def render_fresh(
    decoder: Decoder,
    plan: Plan,
    options: RenderOptions,
    conditioner: Conditioner,
    *,
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, StoryState]:
    """``render_plan`` of a plan without history (``options`` resolved): the mixed wave and the state."""
    from .editing.continuation import InputHead, load_input_head

    # 1. How long each clip must be (its span plus the crossfade tail), and where; the recording it continues.
    sample_rate = decoder.caps.sample_rate
    lengths = mix.clip_samples(plan, options.crossfade_s, sample_rate)
    spans = mix.event_spans(plan, sample_rate)
    follows = {after.index: before.index for before, after in mix.joins(plan)}
    head: InputHead | None = None
    if plan.continue_from is not None:
        head = load_input_head(decoder, plan, options, spans, lengths)
    # 2. Bridging and residual queries, fused into each clip's text tokens.
    texts = conditioner.condition(plan, decoder)
    # 3. One request per event, each with its own seed, in plan.events order.
    position = {e.index: i for i, e in enumerate(plan.events)}
    requests = [
        ClipRequest(
            event=e,
            n_samples=lengths[e.index],
            seed=event_seed(e, options.seed),
            text=texts[e.index],
            start_sample=spans[e.index][0],
            continues=position.get(follows.get(e.index)),
            guide=None if head is None or e.index != head.event else head.guide,
        )
        for e in plan.events
    ]
    # 4. Denoise and decode.
    clips = decoder.render(requests, options, batch_size=options.batch_size, progress=progress)
    release_freed_memory()  # what the decodes kept (devices.keep_freed_memory) goes back to the system
    # 5. Crossfade, place on the timeline, control the level.
    progress(Progress("mix", 0, 1, "mixing"))
    head_fades = {} if head is None or head.tail is None else {head.event: head.tail.shape[-1]}
    raw = mix.compose_raw(plan, clips, options.crossfade_s, peak_dbfs=options.peak_dbfs, head_fades=head_fades)
    lead = 0
    if head is not None and head.tail is not None:  # the output starts with the recording
        raw, lead = head.mixed_under(raw), head.lead
    wave, gain = level(raw, sample_rate, options)
    progress(Progress("mix", 1, 1, "mixed"))
    state = StoryState(
        latents={c.event.index: c.latents for c in clips},
        origins={c.event.index: c.origin_sample for c in clips},
        gain=gain,
        lead_samples=lead,
        **({} if head is None else head.state_fields()),
    )
    return wave, state


def level(raw: np.ndarray, sample_rate: int, options: RenderOptions) -> tuple[np.ndarray, float]:
    """The peak ceiling, then the loudness target when set: the wave, and the gain it amounts to (what an edit
    applies to the samples it mixes again)."""
    gain = mix.peak_gain(raw, options.peak_dbfs)
    wave = mix.limit_peak(raw, options.peak_dbfs)
    if options.loudness_lufs is not None:
        to_target = loudness.loudness_gain(wave, sample_rate, options.loudness_lufs)
        if to_target is not None:
            gain *= to_target * mix.peak_gain((wave * to_target).astype(np.float32), options.peak_dbfs)
        wave = loudness.normalize_loudness(wave, sample_rate, options.loudness_lufs, peak_dbfs=options.peak_dbfs)
    return wave, gain


def render_to_file(
    decoder: Decoder,
    plan: Plan,
    options: RenderOptions,
    conditioner: Conditioner,
    output: Path,
    *,
    progress: ProgressFn = no_progress,
) -> StoryResult:
    """``render_plan`` then write the audio and ``<name>.plan.json`` (with every setting used) as a pair: the
    audio lands last, so an audio file never stands without the plan that reproduces it."""
    output, plan_path = check_story_output(output)
    done = render_plan(decoder, plan, options, conditioner, progress=progress)
    rendered = plan.with_render(done.options)
    return write_story(output, plan_path, done.track, rendered, done.state, progress=progress)


def write_story(
    output: Path, plan_path: Path, track: Track, plan: Plan, state: StoryState, *, progress: ProgressFn = no_progress,
    on_step: Callable[[int, str], None] = lambda done, what: None,
) -> StoryResult:  # fmt: skip
    """Write a story's three files: the audio, its plan and its latents (``editing/latents.py``), atomically,
    the audio last (``audio_io.write_story_files``)."""
    from .editing.latents import latents_path_for, state_to_bytes

    plan_text = plan_to_json(plan)
    latents = (latents_path_for(plan_path), lambda audio_sha256: state_to_bytes(state, plan_text, audio_sha256))
    progress(Progress("write", 0, 1, str(output)))
    audio_io.write_story_files(
        output, track.wave, track.sample_rate, plan_path, plan_text, sidecar=latents, on_step=on_step
    )
    progress(Progress("write", 1, 1, str(output)))
    return StoryResult(plan, output, plan_path, track.duration_s, track.sample_rate)


def generate_story(
    planner,
    decoder: Decoder,
    request: StoryRequest,
    options: RenderOptions,
    conditioner: Conditioner,
    output: Path,
    *,
    progress: ProgressFn = no_progress,
    continue_from: ContinueFrom | None = None,
) -> StoryResult:
    """Prompt to file: plan, render, mix, write. The request's seed and the planner are recorded;
    ``continue_from``: the recording the story continues (``editing.continuation``)."""
    check_story_output(output)
    plan = plan_story(planner, request, progress=progress)
    if continue_from is not None:
        plan = replace(plan, continue_from=continue_from)
    options = replace(options, seed=request.seed, planner=planner.ref)
    return render_to_file(decoder, plan, options, conditioner, output, progress=progress)
