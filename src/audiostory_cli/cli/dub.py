"""``audiostory dub``: sound for a video. What each shot shows (a captions file, or shots found by their cuts
and described by a vision-language model) is planned into sound events at the shots' times (the planner's
slots mode), rendered as long as the video and muxed in as its audio track (``inputs/``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import AudiostoryError, InputError
from ..story import MAX_EVENTS, MAX_TOTAL_S, load_plan, plan_to_json
from .app import _load_models, _notify, app
from .display import ProgressView, errors, print_result, show_plan, show_shots, stderr
from .options import (
    BatchSizeOpt,
    BridgeOpt,
    CoherenceOpt,
    ContinuationOpt,
    CrossfadeOpt,
    DecoderOpt,
    DeviceOpt,
    DtypeOpt,
    GapsOpt,
    GuidanceOpt,
    JsonOpt,
    LoudnessOpt,
    PlannerEngineOpt,
    PlannerModelOpt,
    PlannerOpt,
    SeedOpt,
    StepsOpt,
    WindowOpt,
    model_ref,
)


@app.command()
def dub(
    video: Annotated[Path, typer.Argument(metavar="VIDEO", help="The video to add sound to (anything ffmpeg reads).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write: the video with the story "
                      "as its audio track (.mp4, .m4v, .mov, .mkv; the video stream is copied, not re-encoded), or "
                      "with --audio-only an audio file. The plan is saved beside it as <name>.plan.json.")] = None,
    captions: Annotated[Optional[Path], typer.Option("--captions", help="What is seen and when: .srt, .vtt, or a "
                        "shot list (.json, .csv with start, end, description). Without it the shots are found "
                        "by their cuts and described by --describer.")] = None,
    describer: Annotated[Optional[str], typer.Option("--describer", help="Without --captions: the vision-language "
                         "model that describes a few frames of each shot: an OpenAI-compatible server's "
                         "http(s)://…/v1 URL, or a transformers model folder or hub id (e.g. "
                         "Qwen/Qwen2.5-VL-3B-Instruct).")] = None,
    describer_model: Annotated[Optional[str], typer.Option("--describer-model", metavar="NAME", help="With a server "
                               "--describer: the model on it [default: the first it lists].")] = None,
    min_shot: Annotated[float, typer.Option("--min-shot", min=0.0, max=600.0, help="Shortest shot in seconds: a cut "
                        "closer than this to the previous one is ignored.")] = 1.0,
    plan_file: Annotated[Optional[Path], typer.Option("--plan", help="Render this plan (e.g. the saved "
                         "<name>.plan.json, edited) onto the video instead of planning; no planner runs.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="What the video is, in a few words (helps the "
                      "planner and the residual conditioning), e.g. 'a cartoon cat chases a mouse'.")] = None,
    gaps: GapsOpt = "silence",
    tone: Annotated[Optional[str], typer.Option("--tone", help="Overall tone (the planner picks one if not "
                    "given).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the shot table and the plan; render and write "
                       "nothing.")] = False,
    audio_only: Annotated[bool, typer.Option("--audio-only", help="Write only the audio (-o story.wav), no "
                          "video.")] = False,
    mix_original: Annotated[Optional[float], typer.Option("--mix-original", metavar="DB", min=-60.0, max=12.0,
                            help="Keep the video's own audio under the story, at this gain in dB (e.g. -12); "
                            "the sum is not limited [default: the story replaces it].")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    crossfade: CrossfadeOpt = None,
    window: WindowOpt = None,
    batch_size: BatchSizeOpt = "auto",
    loudness: LoudnessOpt = None,
    coherence: CoherenceOpt = None,
    continuation: ContinuationOpt = None,
    bridge_path: BridgeOpt = None,
    planner: PlannerOpt = None,
    planner_model: PlannerModelOpt = None,
    planner_engine: PlannerEngineOpt = None,
    decoder: DecoderOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Sound for a video: the planner turns what each shot shows (a captions file, or shots found by their cuts
    and described by a vision-language model) into sound events at the shots' times; the story is rendered as
    long as the video and muxed in as its audio track."""
    from ..inputs.dub import check_output, check_plan_fits, describe_shots, write_dub
    from ..inputs.timelines import read_timeline
    from ..inputs.video import check_copyable, detect_shots, probe, require_ffmpeg
    from ..pipeline import longest_event_s, plan_story
    from ..planners.slots import SlotPlanner, SlotRequest
    from ..run_setup import setup_run

    # 1. What the command needs, before anything runs.
    if output is None and not dry_run:
        raise typer.BadParameter("an output file is needed (or use --dry-run)", param_hint="'--output' / '-o'")
    sources = [name for name, value in (("--captions", captions), ("--plan", plan_file), ("--describer", describer))
               if value is not None]  # fmt: skip
    if not sources:
        raise typer.BadParameter(
            "dub needs to know what each shot shows: give a captions file (--captions clip.srt: .srt, .vtt, .json or "
            ".csv with start, end, description), or a describer for the shots it finds (--describer "
            "http://localhost:11434/v1, or a vision-language model folder or hub id), or a plan (--plan)"
        )
    if len(sources) > 1:
        raise typer.BadParameter(f"{' and '.join(sources)} both say what the shots are: give one")
    given = dict(seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
                 continuation=continuation, window=window, loudness_lufs=loudness, batch_size=batch_size,
                 planner=planner, decoder=decoder, bridge=model_ref(bridge_path))  # fmt: skip
    with errors():
        require_ffmpeg()
        if output is not None:  # like generate's -o: a bad extension or a missing folder is a usage error
            try:
                output = check_output(output, audio_only=audio_only)
            except InputError as err:
                raise typer.BadParameter(str(err), param_hint="'--output' / '-o'") from None
        info = probe(video)
        if info.duration_s > MAX_TOTAL_S:
            raise AudiostoryError(f"{info.path.name} lasts {info.duration_s:g} s: dub makes at most {MAX_TOTAL_S:g} s "
                                  "of sound", hint="cut the video into parts of at most 10 minutes")  # fmt: skip
        if output is not None and not audio_only and not dry_run:
            check_copyable(info, output)
        if mix_original is not None and (audio_only or info.audio_streams == 0):
            why = "--audio-only writes no video" if audio_only else f"{info.path.name} has no audio stream"
            raise AudiostoryError(f"--mix-original: {why}", hint="drop --mix-original")
        plan = timeline = None
        if plan_file is not None:
            plan = load_plan(plan_file)
            check_plan_fits(plan, info, str(plan_file))
        elif captions is not None:
            timeline = read_timeline(captions)
            timeline.check_within(info.duration_s, f"the video {info.path.name}")
        stderr.print(f"video: {info.path.name}, {info.duration_s:g} s, {info.width}x{info.height} {info.codec}, "
                     f"{info.fps:.3g} fps, {info.audio_streams} audio stream(s)", soft_wrap=True)  # fmt: skip
        setup = setup_run(given, saved=None if plan is None else plan.render, device=device, dtype=dtype,
                          dry_run=dry_run, notify=_notify)  # fmt: skip
        options, torch_device, torch_dtype = setup.options, setup.device, setup.dtype
        # 2. The shots: found by their cuts and described, unless a captions file or a plan says.
        if plan is None and timeline is None:
            from ..inputs.describers import load_describer

            with stderr.status(f"finding the shots of {info.path.name}"):
                shots = detect_shots(info, min_shot_s=min_shot)
            if len(shots) > MAX_EVENTS:
                raise AudiostoryError(f"{info.path.name} has {len(shots)} shots of at least {min_shot:g} s: a plan holds "
                                      f"at most {MAX_EVENTS}", hint="raise --min-shot")  # fmt: skip
            with stderr.status(f"loading describer {describer}"):
                describing = load_describer(describer, device=torch_device, dtype=torch_dtype,
                                            model_name=describer_model)  # fmt: skip
            with ProgressView() as view:
                timeline = describe_shots(info, shots, describing, progress=view)
        if timeline is not None:
            show_shots(timeline)
        # 3. The plan: the planner in slots mode writes what is heard in each shot, at its times.
        models = _load_models(setup, need_planner=plan is None, need_decoder=not dry_run,
                              planner_model=planner_model, planner_engine=planner_engine)  # fmt: skip
        if plan is None:
            window_s = setup.caps.window_s
            request = SlotRequest(slots=timeline.cues, total_s=info.duration_s, prompt=prompt or "", gaps=gaps,
                                  tone=tone, seed=options.seed,
                                  max_event_s=longest_event_s(window_s, options.crossfade_s))  # fmt: skip
            with ProgressView() as view:
                plan = plan_story(SlotPlanner(models.planner), request, progress=view)
            options = replace(options, planner=models.planner.ref)
        if dry_run:
            show_plan(plan)
            if as_json:
                typer.echo(plan_to_json(plan), nl=False)
            return
        # 4. Render, mux, write the plan beside it.
        with ProgressView() as view:
            result = write_dub(
                models.decoder, plan, options, models.conditioner, info, output, audio_only=audio_only,
                mix_original_db=mix_original, progress=view,
            )  # fmt: skip
        show_plan(result.plan)
        print_result(result, as_json)
