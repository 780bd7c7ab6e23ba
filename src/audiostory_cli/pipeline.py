"""The orchestration: ``generate_story``, ``render_plan`` and ``generate_batch``, with a progress callback.

Data flow: ``StoryRequest -> Planner.plan -> Plan -> Decoder.render -> [Clip] -> mix.compose -> Track -> file``.
Models are passed in already loaded (``load_planner`` / ``load_decoder``), so a batch loads them once.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from . import audio_io, bridge, loudness, mix
from .decoder import ClipRequest, Decoder
from .errors import AudiostoryError, InputError
from .story import (
    DEFAULT_COHERENCE,
    Plan,
    Progress,
    ProgressFn,
    RenderSettings,
    StoryRequest,
    Track,
    clip_seed,
    default_max_events,
    no_progress,
    plan_to_json,
)



EVENT_MARGIN_S = 0.05  # planned events stay this far below the decoder window, for rounding to milliseconds


@dataclass(frozen=True)
class RenderOptions:
    """How clips are rendered and mixed; saved with the plan (seed, steps, guidance, crossfade)."""

    seed: int = 0  # base seed; clip i draws its noise from clip_seed(seed, i)
    steps: int = 50  # flow-matching steps per clip
    guidance: float = 4.5  # classifier-free guidance scale (<= 1 turns it off)
    crossfade_s: float = 1.0  # overlap between consecutive foreground clips, seconds
    window: str = "auto"  # "auto": denoise only the frames a clip needs; "full": the model's whole window
    batch_size: int = 4  # clips denoised together
    peak_dbfs: float = -1.0  # peak ceiling of the output
    loudness_lufs: float | None = None  # normalise integrated loudness to this target, if set
    coherence: float = DEFAULT_COHERENCE  # weight of the residual query at fusion; 0: caption only
    continuation: bool = True  # generate each clip's head as the continuation of the previous clip's tail

    def __post_init__(self) -> None:
        bridge.check_coherence(self.coherence)
        if not 0 <= self.crossfade_s <= 10:
            raise InputError(f"crossfade = {self.crossfade_s:g}: must be between 0 and 10 seconds")
        if not -60 <= self.peak_dbfs <= 0:
            raise InputError(f"peak = {self.peak_dbfs:g} dBFS: must be between -60 and 0")
        if self.loudness_lufs is not None and not -70 <= self.loudness_lufs <= 0:
            raise InputError(f"loudness = {self.loudness_lufs:g} LUFS: must be between -70 and 0")


@dataclass(frozen=True)
class StoryResult:
    """What one story produced."""

    plan: Plan  # the plan, with the render settings filled in
    audio_path: Path  # the audio file written
    plan_path: Path  # the plan JSON written beside it
    duration_s: float  # length of the audio, seconds
    sample_rate: int  # samples per second of the audio


def plan_path_for(audio_path: Path) -> Path:
    """``story.wav`` -> ``story.plan.json``, beside the audio."""
    return audio_path.with_name(audio_path.stem + ".plan.json")


def longest_event_s(clip_window_s: float, crossfade_s: float) -> float:
    """The longest event a planner may write so that event + crossfade tail fits one decoder window."""
    return clip_window_s - crossfade_s - EVENT_MARGIN_S


def plan_story(planner, request: StoryRequest, *, progress: ProgressFn = no_progress) -> Plan:
    """Ask the planner for a plan (``--dry-run`` stops here)."""
    progress(Progress("plan", 0, 0, "planning the story"))
    plan = planner.plan(request, progress=progress)
    progress(Progress("plan", 1, 1, f"{len(plan.events)} events"))
    return plan


def render_plan(
    decoder: Decoder,
    plan: Plan,
    options: RenderOptions,
    *,
    semantic_encoder: bridge.TextEncoder | None = None,
    event_texts: dict | None = None,
    progress: ProgressFn = no_progress,
) -> Track:
    """Render every event of ``plan`` and mix them into one track of exactly ``plan.total_s``.

    ``semantic_encoder``: a trained bridge (``--bridge``) in place of the decoder's text encoder.
    ``event_texts``: ready-made text tokens per event index (a model with its own trained queries and
    fusion, such as the AudioStory checkpoint); they replace the bridge entirely."""
    # 1. How long each clip must be (its span plus the crossfade tail into the next event), and where.
    lengths = mix.clip_samples(plan, options.crossfade_s, decoder.sample_rate)
    spans = mix.event_spans(plan, decoder.sample_rate)
    follows = {after.index: before.index for before, after in mix.joins(plan)}
    # 2. Bridging and residual queries, fused into each clip's text tokens.
    texts = event_texts or _bridge_texts(plan, decoder, semantic_encoder, options.coherence)
    # 3. One request per event, each with its own seed, in plan.events order (clip_seed needs the index).
    position = {e.index: i for i, e in enumerate(plan.events)}
    requests = [
        ClipRequest(
            event=e,
            n_samples=lengths[e.index],
            seed=clip_seed(options.seed, e.index),
            text=texts[e.index],
            start_sample=spans[e.index][0],
            continues=position.get(follows.get(e.index)),
        )
        for e in plan.events
    ]
    # 4. Denoise and decode.
    clips = decoder.render(
        requests,
        steps=options.steps,
        guidance=options.guidance,
        window=options.window,
        batch_size=options.batch_size,
        continuation=options.continuation,
        progress=progress,
    )
    # 5. Crossfade, place on the timeline, control the level.
    progress(Progress("mix", 0, 1, "mixing"))
    track = mix.compose(plan, clips, options.crossfade_s, peak_dbfs=options.peak_dbfs)
    if options.loudness_lufs is not None:
        wave = loudness.normalize_loudness(
            track.wave, track.sample_rate, options.loudness_lufs, peak_dbfs=options.peak_dbfs
        )
        track = replace(track, wave=wave)
    progress(Progress("mix", 1, 1, "mixed"))
    return track


def _bridge_texts(plan: Plan, decoder: Decoder, semantic_encoder, coherence: float) -> dict[int, object]:
    """Text tokens per event index: the fused queries, or (coherence 0, no trained bridge) None, which lets
    the decoder encode the caption itself, exactly as without a bridge."""
    if coherence == 0 and semantic_encoder is None:
        return {e.index: None for e in plan.events}
    conditionings = bridge.condition(plan, semantic_encoder or decoder, decoder)
    fusion = bridge.Fusion(decoder.text_encoder.config.d_model)
    return {c.event.index: bridge.fuse(c, fusion, coherence) for c in conditionings}


def render_to_file(
    decoder: Decoder,
    plan: Plan,
    options: RenderOptions,
    output: Path,
    *,
    planner_ref: str | None = None,
    trained_bridge=None,
    model=None,
    progress: ProgressFn = no_progress,
) -> StoryResult:
    """``render_plan`` then write the audio and ``<name>.plan.json`` (with the settings used), atomically.

    ``trained_bridge``: a loaded ``--bridge`` adapter (with ``.ref`` and ``.encode_text``), or None.
    ``model``: a loaded AudioStory checkpoint (``--model``), whose own queries and fusion condition the clips."""
    output = audio_io.check_output_path(output)
    texts = model.event_texts(plan) if model is not None else None
    track = render_plan(
        decoder, plan, options, semantic_encoder=trained_bridge, event_texts=texts, progress=progress
    )
    settings = RenderSettings(
        seed=options.seed,
        steps=options.steps,
        guidance=options.guidance,
        crossfade_s=options.crossfade_s,
        decoder=decoder.ref,
        planner=planner_ref,
        coherence=options.coherence,
        continuation=options.continuation,
        bridge=trained_bridge.ref if trained_bridge is not None else None,
        model=model.ref if model is not None else None,
    )
    rendered = plan.with_render(settings)
    progress(Progress("write", 0, 1, str(output)))
    audio_io.write_audio(output, track.wave, track.sample_rate)
    plan_path = plan_path_for(output)
    try:
        audio_io.write_text_atomic(plan_path, plan_to_json(rendered))
    except BaseException:
        output.unlink(missing_ok=True)  # no audio without the plan that reproduces it
        raise
    progress(Progress("write", 1, 1, str(output)))
    return StoryResult(rendered, output, plan_path, track.duration_s, track.sample_rate)


def generate_story(
    planner,
    decoder: Decoder,
    request: StoryRequest,
    options: RenderOptions,
    output: Path,
    *,
    trained_bridge=None,
    model=None,
    progress: ProgressFn = no_progress,
) -> StoryResult:
    """Prompt to file: plan, render, mix, write."""
    output = audio_io.check_output_path(output)
    plan = plan_story(planner, request, progress=progress)
    options = replace(options, seed=request.seed)
    return render_to_file(
        decoder, plan, options, output, planner_ref=planner.ref, trained_bridge=trained_bridge, model=model,
        progress=progress,
    )  # fmt: skip


# --- batch ---------------------------------------------------------------------------------------------


MAX_SLUG_CHARS = 48  # file names derived from prompts keep whole words up to this length


@dataclass(frozen=True)
class BatchItem:
    """One line of a prompts file."""

    line: int  # 1-based line number in the prompts file, for messages
    prompt: str  # the story prompt
    duration_s: float | None = None  # per-prompt duration; None: the command's --duration
    seed: int | None = None  # per-prompt seed; None: the command's --seed
    output: str | None = None  # file name inside the output folder; None: derived from the prompt
    tone: str | None = None  # per-prompt tone
    problem: str | None = None  # why the line could not be read; such an item is reported as failed


_ITEM_FIELDS = {"prompt", "duration", "seed", "output", "tone"}


def read_prompts_file(path: Path) -> list[BatchItem]:
    """One prompt per line, or JSON Lines with ``prompt``, ``duration``, ``seed``, ``output``, ``tone``.

    Blank lines and lines starting with ``#`` are skipped. A line that cannot be read becomes an item with
    ``problem`` set, so the batch reports it and goes on.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read prompts file {path}: {err}") from None
    items = [
        _parse_prompt_line(text.strip(), number)
        for number, text in enumerate(lines, start=1)
        if text.strip() and not text.lstrip().startswith("#")
    ]
    if not items:
        raise InputError(f"prompts file {path} has no prompts", hint="write one prompt per line")
    return items


def _parse_prompt_line(text: str, number: int) -> BatchItem:
    if not text.startswith("{"):
        return BatchItem(line=number, prompt=text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return BatchItem(line=number, prompt=text, problem=f"line {number}: not valid JSON: {err.msg}")
    problem = _json_item_problem(data, number)
    if problem:
        return BatchItem(line=number, prompt=str(data.get("prompt", "")), problem=problem)
    return BatchItem(
        line=number,
        prompt=data["prompt"],
        duration_s=data.get("duration"),
        seed=data.get("seed"),
        output=data.get("output"),
        tone=data.get("tone"),
    )


def _json_item_problem(data: object, number: int) -> str | None:
    if not isinstance(data, dict):
        return f"line {number}: must be a JSON object"
    unknown = sorted(set(data) - _ITEM_FIELDS)
    if unknown:
        return f"line {number}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(_ITEM_FIELDS))})"
    checks = {
        "prompt": lambda v: isinstance(v, str),
        "duration": lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        "seed": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "output": lambda v: v is None or isinstance(v, str),
        "tone": lambda v: v is None or isinstance(v, str),
    }
    if "prompt" not in data:
        return f"line {number}: prompt is missing"
    for name, ok in checks.items():
        if name in data and not ok(data[name]):
            kind = {"prompt": "a string", "duration": "a number", "seed": "an integer"}.get(name, "a string")
            return f"line {number}: {name} = {json.dumps(data[name])}: must be {kind}"
    return None


@dataclass(frozen=True)
class BatchOutcome:
    """How one batch item ended."""

    item: BatchItem  # the item
    result: StoryResult | None  # set on success
    error: str | None  # the one-line message on failure
    seconds: float  # wall time spent on the item


def safe_output_name(item: BatchItem, index: int, extension: str) -> str:
    """A file name inside the output folder: the item's ``output`` checked, or a slug of its prompt."""
    if item.output is not None:
        name = item.output.strip()
        if not name or name != Path(name).name or name in {".", ".."} or name.startswith("."):
            raise InputError(f"line {item.line}: output = {item.output!r}: must be a plain file name, no folders")
        return name if Path(name).suffix else name + extension
    slug = ""
    for word in re.findall(r"[a-z0-9]+", item.prompt.lower()):
        if len(slug) + len(word) + 1 > MAX_SLUG_CHARS:
            break
        slug = f"{slug}-{word}" if slug else word
    return f"{index + 1:03d}-{slug or 'story'}{extension}"


def generate_batch(
    planner,
    decoder: Decoder,
    items: Sequence[BatchItem],
    outdir: Path,
    *,
    default_duration_s: float,
    options: RenderOptions,
    max_events: int | None = None,
    extension: str = ".wav",
    trained_bridge=None,
    model=None,
    progress: ProgressFn = no_progress,
    on_outcome: Callable[[BatchOutcome], None] = lambda _: None,
) -> list[BatchOutcome]:
    """Generate every item; a bad item is reported and skipped, the rest go on.

    ``max_events`` None: enough events for each story, at least 8 (``story.default_max_events``)."""
    max_event_s = longest_event_s(decoder.max_clip_s, options.crossfade_s)
    outcomes = []
    taken: set[str] = set()
    for index, item in enumerate(items):
        started = time.perf_counter()
        try:
            if item.problem:
                raise InputError(item.problem)
            name = safe_output_name(item, index, extension)
            if name in taken:
                raise InputError(f"line {item.line}: output {name} is used by an earlier line")
            taken.add(name)
            total_s = item.duration_s if item.duration_s is not None else default_duration_s
            request = StoryRequest(
                prompt=item.prompt,
                total_s=total_s,
                seed=item.seed if item.seed is not None else options.seed,
                tone=item.tone,
                max_events=max_events or default_max_events(total_s, max_event_s),
                max_event_s=max_event_s,
            )
            result = generate_story(
                planner, decoder, request, options, outdir / name, trained_bridge=trained_bridge, model=model,
                progress=progress,
            )  # fmt: skip
            outcome = BatchOutcome(item, result, None, time.perf_counter() - started)
        except AudiostoryError as err:
            message = str(err) if str(err).startswith("line ") else f"line {item.line}: {err}"
            outcome = BatchOutcome(item, None, message, time.perf_counter() - started)
        outcomes.append(outcome)
        on_outcome(outcome)
    return outcomes
