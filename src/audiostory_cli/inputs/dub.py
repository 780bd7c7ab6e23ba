"""Sound for a video, as steps the ``dub`` command runs (models come in loaded, like ``pipeline``):

    probe -> cues (a captions file, or shots found by the scene score + a describer per shot)
          -> SlotRequest -> planner (slots mode) -> Plan -> render_plan -> Track -> mux into the video (or audio)

A plan edited by hand skips the planner: ``check_plan_fits`` then ``write_dub``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import audio_io
from ..errors import InputError
from ..pipeline import StoryResult, check_story_output, plan_path_for, render_plan, write_story
from ..settings import RenderOptions
from ..story import Plan, Progress, ProgressFn, no_progress, plan_to_json
from .timelines import Cue, Timeline, clock
from .video import VideoInfo, check_copyable, frame_times, frames, mux

if TYPE_CHECKING:
    from ..conditioning.base import Conditioner
    from ..decoders.base import Decoder
    from .describers import Describer

FRAMES_PER_SHOT = 3  # frames a describer sees of each shot, spread over it
_LENGTH_TOLERANCE_S = 1e-3  # a plan made for this video is this long to the millisecond


def describe_shots(
    info: VideoInfo, shots: list[Cue], describer: Describer, *, frames_per_shot: int = FRAMES_PER_SHOT,
    progress: ProgressFn = no_progress,
) -> Timeline:  # fmt: skip
    """Each shot with the describer's sentence about ``frames_per_shot`` of its frames."""
    described = []
    for shot in shots:
        progress(Progress("describe", shot.index, len(shots), f"shot {shot.index + 1} at {clock(shot.start_s)}"))
        images = frames(info, frame_times(shot, frames_per_shot))
        described.append(replace(shot, text=describer.describe(images, progress=progress)))
    progress(Progress("describe", len(shots), len(shots), "shots described"))
    return Timeline(cues=tuple(described), source=f"shots of {info.path.name}")


def check_plan_fits(plan: Plan, info: VideoInfo, source: str) -> None:
    """A plan rendered onto this video lasts as long as it (a plan made by ``dub`` for it does)."""
    if abs(plan.total_s - info.duration_s) > _LENGTH_TOLERANCE_S:
        raise InputError(f"{source} lasts {plan.total_s:g} s, the video {info.path.name} {info.duration_s:g} s",
                         hint="set its total_s to the video's length, or give the plan dub saved for this video")


def check_output(output: Path, *, audio_only: bool) -> Path:
    """The output path, checked before any work: an audio file with ``audio_only``, else a video container; and
    the plan beside it (its name fits, it is free or an overwritable file)."""
    from .video import check_video_output

    return check_story_output(output, audio_io.check_output_path if audio_only else check_video_output)[0]


def write_dub(
    decoder: Decoder,
    plan: Plan,
    options: RenderOptions,
    conditioner: Conditioner,
    info: VideoInfo,
    output: Path,
    *,
    audio_only: bool = False,
    mix_original_db: float | None = None,
    progress: ProgressFn = no_progress,
) -> StoryResult:
    """Render ``plan`` (as long as the video) and write ``output``: the video with the story as its audio track
    (``audio_only``: the audio alone), and ``<name>.plan.json`` with every setting used beside it."""
    # 1. Where it goes, checked before the render.
    output = check_output(output, audio_only=audio_only)
    if not audio_only:
        check_copyable(info, output)
    check_plan_fits(plan, info, "the plan")
    # 2. Render and mix the story.
    made = render_plan(decoder, plan, options, conditioner, progress=progress)
    track, rendered = made.track, plan.with_render(made.options)
    plan_path, plan_text = plan_path_for(output), plan_to_json(rendered)
    # 3. Write: the audio alone, or the video (its plan lands just before it).
    progress(Progress("write", 0, 1, str(output)))
    if audio_only:
        return write_story(output, plan_path, track, rendered, made.state, progress=progress)
    else:
        mux(info, track.wave, track.sample_rate, output, mix_original_db=mix_original_db,
            before_rename=lambda: audio_io.write_text_atomic(plan_path, plan_text))  # fmt: skip
    progress(Progress("write", 1, 1, str(output)))
    return StoryResult(rendered, output, plan_path, track.duration_s, track.sample_rate)
