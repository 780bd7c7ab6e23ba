"""The ``audiostory`` commands: parse options, load the models once, call ``pipeline``, show the result.

An ``AudiostoryError`` becomes one red line on stderr and exit 1; usage errors exit 2 (Typer's habit);
``AUDIOSTORY_DEBUG=1`` shows the traceback instead (``display.errors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__, audio_io
from ..checkpoints import DEFAULT_DECODER, default_planner
from ..story import MAX_EVENTS, load_plan, plan_to_json
from .display import ProgressView, errors, print_result, show_actors, show_plan, show_record, show_summary, stderr
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
    ModelOpt,
    PlannerEngineOpt,
    PlannerModelOpt,
    PlannerOpt,
    PlotOpt,
    SavedBatchSizeOpt,
    SavedBridgeOpt,
    SavedCoherenceOpt,
    SavedContinuationOpt,
    SavedCrossfadeOpt,
    SavedDecoderOpt,
    SavedGuidanceOpt,
    SavedLoudnessOpt,
    SavedModelOpt,
    SavedSeedOpt,
    SavedStepsOpt,
    SavedWindowOpt,
    SeedOpt,
    StepsOpt,
    TimelineOpt,
    WindowOpt,
    check_duration,
    check_plot_output,
    check_prompt,
    model_ref,
)

app = typer.Typer(
    name="audiostory",
    help="Narrative audio from a story prompt: an LLM plans timed sound events, a diffusion decoder renders "
    "them, and the clips are crossfaded into one file (the AudioStory method, arXiv 2508.20088).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # usage errors as click prints them: plain lines, easy to grep
    context_settings={"help_option_names": ["-h", "--help"]},
)


# --- loading ---------------------------------------------------------------------------------------------


def _notify(message: str) -> None:
    """What the library has to say (the device auto picked, a dtype fallback): one line on stderr."""
    stderr.print(f"audiostory: {message}", soft_wrap=True)


def _load_models(setup, **needs):
    """``registry.load_models`` for a run set up by ``run_setup``, with a spinner on stderr for each model."""
    from ..registry import load_models

    return load_models(setup.options, device=setup.device, dtype=setup.dtype, status=stderr.status, **needs)


def _check_plot(plot: bool, output: Optional[Path]) -> None:
    """``--plot`` without matplotlib, or whose picture beside ``output`` cannot be written (a folder of that
    name), is one line, before any model loads."""
    if plot:
        from ..plot import check_plot_path, import_matplotlib, plot_path_for

        import_matplotlib()
        if output is not None and "\x00" not in str(output):  # a NUL in -o: the output's own check says
            check_plot_path(plot_path_for(output))


def _plot_beside(plan, output: Path, *, over_audio: bool) -> None:
    """``--plot``: ``<name>.png`` beside ``output``, over the audio just written there, or the plan alone."""
    from ..plot import plot_path_for, read_story_audio, write_plot

    audio = read_story_audio(output, plan) if over_audio else None
    picture = write_plot(plan, plot_path_for(output), audio=audio)
    stderr.print(f"wrote {picture}" + ("" if over_audio else " (the plan alone)"))


# --- commands --------------------------------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The story, e.g. 'a storm reaches a quiet harbor, a ship's bell "
                                          "rings, the rain stops and gulls return'.", callback=check_prompt)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Audio file to write: .wav, .flac, "
                      ".ogg, .mp3 (or .m4a/.aac with ffmpeg), in a folder that exists. A plan is saved beside it as "
                      "<name>.plan.json.")] = None,
    duration: Annotated[float, typer.Option("--duration", "-d", help="Length of the story in seconds (max 600).",
                        callback=check_duration)] = 30.0,
    max_events: Annotated[Optional[int], typer.Option("--max-events", min=1, max=MAX_EVENTS,
                          help="Most events the planner may use [default: 8, or as many as the duration needs "
                          "with events of at most one decoder window].")] = None,
    tone: Annotated[Optional[str], typer.Option("--tone", help="Overall tone, e.g. 'calm' (the planner picks "
                    "one if not given).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only plan: print the plan, write no audio.")] = False,
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
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    plot: PlotOpt = False,
    timeline: TimelineOpt = None,
    gaps: GapsOpt = "silence",
    continue_from: Annotated[Optional[Path], typer.Option("--continue-from", metavar="INPUT", help="Begin the story "
                             "as the continuation of this recording (any audio file; mono or stereo): its end is "
                             "encoded by the decoder's VAE and the first clip continues it. The planner is told.")] = None,
    include_input: Annotated[bool, typer.Option("--include-input/--no-include-input", help="With --continue-from: "
                             "the output starts with the recording, crossfading into the story; or the story "
                             "alone.")] = True,
    ctx: typer.Context = None,
) -> None:
    """Plan a story with the LLM and render it to one audio file. With --timeline, the planner writes the sound
    of each timed cue, at the cue's times (PROMPT says what the video or story is). With --continue-from, the
    story continues a recording."""
    from ..pipeline import generate_story, longest_event_s, plan_story
    from ..run_setup import setup_run

    if output is None and not dry_run:
        raise typer.BadParameter("an output file is needed (or use --dry-run)", param_hint="'--output' / '-o'")
    if plot and output is None:
        raise typer.BadParameter("with --dry-run, --plot needs -o: the picture goes beside it as <name>.png",
                                 param_hint="'--plot'")  # fmt: skip
    if timeline is not None and model is not None:  # seen before any model loads
        raise typer.BadParameter("the AudioStory checkpoint plans only prompts: a timeline's slots need a JSON "
                                 "planner (--planner, with --decoder)", param_hint="'--model'")  # fmt: skip
    if timeline is not None and continue_from is not None:
        raise typer.BadParameter("a timeline places its cues itself: --continue-from needs a story that starts at "
                                 "0 s", param_hint="'--continue-from'")  # fmt: skip
    if timeline is not None and max_events is not None:
        raise typer.BadParameter("with --timeline each cue is one event (and a background may run under them): "
                                 "there is no number of events to choose", param_hint="'--max-events'")  # fmt: skip
    given = dict(seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
                 continuation=continuation, window=window, loudness_lufs=loudness, batch_size=batch_size,
                 planner=planner, decoder=decoder, bridge=model_ref(bridge_path), model=model)  # fmt: skip
    with errors():
        _check_plot(plot, output)
        duration_given = timeline is not None and _given(ctx, "duration")
        if timeline is not None:
            timeline = _read_timeline_for(timeline, duration if duration_given else None)  # before any model loads
        recording = None
        if continue_from is not None:  # read and checked before any model loads
            from ..editing.continuation import continue_from as read_continue_from, told_prompt

            recording = read_continue_from(continue_from, include_input)
            prompt = told_prompt(prompt, recording)
        setup = setup_run(given, output=output, device=device, dtype=dtype, dry_run=dry_run, notify=_notify)
        models = _load_models(setup, need_decoder=not dry_run, planner_model=planner_model,
                              planner_engine=planner_engine)  # fmt: skip
        window_s = setup.caps.window_s if setup.caps is not None else models.decoder.caps.window_s  # --model: now
        if timeline is not None:  # the cues fix the events' times: the planner writes their sounds
            max_event_s = longest_event_s(window_s, setup.options.crossfade_s)
            request, models = _timeline_request(timeline, prompt, duration if duration_given else None, gaps, tone,
                                                setup.options.seed, max_event_s, models)  # fmt: skip
        else:
            request = setup.story_request(prompt, duration, tone=tone, max_events=max_events, window_s=window_s)
        if dry_run:
            with ProgressView() as view:
                plan = plan_story(models.planner, request, progress=view)
            show_plan(plan)
            if plot:
                _plot_beside(plan, output, over_audio=False)
            if as_json:
                typer.echo(plan_to_json(plan), nl=False)
            return
        with ProgressView() as view:
            result = generate_story(models.planner, models.decoder, request, setup.options, models.conditioner,
                                    setup.output, progress=view, continue_from=recording)  # fmt: skip
        show_plan(result.plan)
        if plot:
            _plot_beside(result.plan, result.audio_path, over_audio=True)
        print_result(result, as_json)


@app.command()
def render(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN.json", help="A plan written by `generate` or by hand "
                         "(see examples/plan.json), or a timeline file (.srt, .vtt, .csv or a .json shot list) whose "
                         "cues are sound captions, rendered at their times as they are.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Audio file to write (.wav, .flac, .ogg, .mp3, "
                      ".m4a, .aac), in a folder that exists; the plan it was rendered with is saved beside it as "
                      "<name>.plan.json.")],
    seed: SavedSeedOpt = None,
    steps: SavedStepsOpt = None,
    guidance: SavedGuidanceOpt = None,
    crossfade: SavedCrossfadeOpt = None,
    window: SavedWindowOpt = None,
    batch_size: SavedBatchSizeOpt = "auto",
    loudness: SavedLoudnessOpt = None,
    coherence: SavedCoherenceOpt = None,
    continuation: SavedContinuationOpt = None,
    bridge_path: SavedBridgeOpt = None,
    planner: Annotated[Optional[str], typer.Option("--planner", help="With a bridge: the planner LLM it reads "
                       "[default: the one the bridge was trained with].")] = None,
    decoder: SavedDecoderOpt = None,
    model: SavedModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    plot: PlotOpt = False,
) -> None:
    """Render a plan file, no planner. Every setting that changes the audio (seed, steps, guidance, crossfade,
    window, batch size, loudness, coherence, continuation, bridge, decoder, model) defaults to the value saved
    in the plan, so rendering a saved plan reproduces its audio sample for sample."""
    from ..pipeline import render_to_file
    from ..run_setup import setup_run

    given = dict(seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
                 continuation=continuation, window=window, loudness_lufs=loudness, batch_size=batch_size,
                 decoder=decoder, bridge=model_ref(bridge_path), model=model)  # fmt: skip
    with errors():
        _check_plot(plot, output)
        plan = _plan_or_timeline(plan_file)
        setup = setup_run(given, saved=plan.render, output=output, device=device, dtype=dtype, notify=_notify)
        models = _load_models(setup, need_planner=False, bridge_planner=planner)
        with ProgressView() as view:
            result = render_to_file(models.decoder, plan, setup.options, models.conditioner, setup.output,
                                    progress=view)  # fmt: skip
        if plot:
            _plot_beside(result.plan, result.audio_path, over_audio=True)
        print_result(result, as_json)


@app.command()
def batch(
    prompts_file: Annotated[Path, typer.Argument(metavar="PROMPTS_FILE", help="One prompt per line, or JSON Lines "
                            "with prompt, duration, seed, output, tone (see examples/).")],
    outdir: Annotated[Optional[Path], typer.Option("--outdir", "-o", help="Folder for the audio files and their "
                      "plans (created if missing).")] = None,
    outdir_old: Annotated[Optional[Path], typer.Option("-d", hidden=True, help="The old spelling of --outdir "
                          "(deprecated: -d is --duration in generate).")] = None,
    duration: Annotated[float, typer.Option("--duration", help="Length of each story unless its line says "
                        "otherwise (max 600).", callback=check_duration)] = 30.0,
    audio_format: Annotated[str, typer.Option("--format", help="Extension of the derived file names: wav, flac, "
                            "ogg, mp3, m4a or aac.")] = "wav",
    max_events: Annotated[Optional[int], typer.Option("--max-events", min=1, max=MAX_EVENTS,
                          help="Most events the planner may use per story [default: 8, or as many as the "
                          "duration needs].")] = None,
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
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    force: Annotated[bool, typer.Option("--force", help="Render every line again, finished stories included "
                     "(a finished story: its audio and plan are in the folder, made for the same request).")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray", metavar="auto|local|ADDRESS", help="Run on a Ray "
                           "cluster through Ray Data, one actor per GPU (needs the ray extra): auto: the running "
                           "cluster (RAY_ADDRESS or `ray start`); local: a new one on this machine; or its "
                           "address. Every node must see --outdir at the same path.")] = None,
    overlap: Annotated[Optional[bool], typer.Option("--overlap/--no-overlap", help="Plan the next story while "
                       "the decoder renders this one (local runs; never with --bridge or --model, whose "
                       "conditioning runs the planner's LLM). The samples are the same either way [default: on a "
                       "GPU; off on a CPU, where both stages want the same cores].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate one story per prompt; models load once. Resumable: a story already in the folder (audio and
    plan, same request) is skipped, so running the command again finishes what a killed run left. Each line's
    outcome is appended to OUTDIR/manifest.jsonl. A bad prompt is reported and skipped; exit 1 if any failed."""
    from ..batch.local import BatchRun, BatchSettings, ModelSpec, load_batch_models, make_tasks, run_local
    from ..batch.local import with_default_refs
    from ..batch.prompts import read_prompts_file
    from ..run_setup import setup_run

    outdir = _batch_outdir(outdir, outdir_old)
    given = dict(seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
                 continuation=continuation, window=window, loudness_lufs=loudness, batch_size=batch_size,
                 planner=planner, decoder=decoder, bridge=model_ref(bridge_path), model=model)  # fmt: skip
    with errors():
        extension = "." + audio_format.lower().lstrip(".")
        audio_io.check_extension(extension)
        items = read_prompts_file(prompts_file)
        if ray_address is not None:
            from ..batch.ray import import_ray

            import_ray()  # a missing extra is one line, before anything else happens
        setup = setup_run(given, outdir=outdir, device=None, dtype=dtype)  # each process resolves its device
        options = with_default_refs(setup.options, device=device, planner_engine=planner_engine)
        settings = BatchSettings(
            outdir=setup.outdir, options=options, default_duration_s=duration,
            max_events=max_events, extension=extension, force=force, planner_model=planner_model,
        )  # fmt: skip
        tasks = make_tasks(items, settings)
        spec = ModelSpec(settings.options, device=device, dtype=dtype, planner_model=planner_model,
                         planner_engine=planner_engine)  # fmt: skip
        with BatchRun(tasks, settings, on_record=show_record) as run:
            if run.cleaned:
                stderr.print(f"removed {len(run.cleaned)} temporary files a killed run left in {settings.outdir}",
                             soft_wrap=True)  # fmt: skip
            if run.todo and ray_address is not None:
                from ..batch.ray import run_on_ray

                records = run_on_ray(run, spec, ray_address, on_start=show_actors)
            elif run.todo:
                with stderr.status(f"loading models for {len(run.todo)} stories"):
                    models = load_batch_models(spec, notify=_notify)
                with ProgressView() as view:
                    records = run_local(run, models, overlap=overlap, progress=view)
            else:
                records = run.results()
        show_summary(records, settings.outdir, as_json)
        failed = sum(r.status == "failed" for r in records)
        if failed:
            stderr.print(f"[bold red]error:[/] {failed} of {len(records)} prompts failed")
            raise typer.Exit(1)


def _batch_outdir(outdir: Optional[Path], old: Optional[Path]) -> Path:
    """``--outdir``/``-o``, or the deprecated ``-d`` with a warning (``-d`` is ``--duration`` in generate)."""
    if old is not None:
        if outdir is not None:
            raise typer.BadParameter("give the folder once (-d is the old spelling of --outdir)",
                                     param_hint="'--outdir' / '-o'")  # fmt: skip
        stderr.print("audiostory: batch -d is deprecated, use -o/--outdir (-d is --duration in generate)",
                     soft_wrap=True)  # fmt: skip
        return old
    if outdir is None:
        raise typer.BadParameter("a folder for the audio files is needed", param_hint="'--outdir' / '-o'")
    return outdir


@app.command("train-bridge")
def train_bridge_command(
    captions: Annotated[Path, typer.Argument(metavar="CAPTIONS", help="A text file with one caption a line (blank "
                        "and # lines skipped), or a folder of plan files whose event captions are used.")],
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Folder for the bridge: bridge.safetensors, "
                      "bridge_config.json and train_state.pt (created if missing).")],
    planner: PlannerOpt = None,
    decoder: DecoderOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps in all (a resumed run counts the "
                     "steps already done).")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Captions per step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", min=1e-8, max=1.0, help="AdamW learning rate.")] = 1e-3,
    save_every: Annotated[int, typer.Option("--save-every", min=1, help="Checkpoint every this many steps (and "
                          "at the end).")] = 100,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the checkpoint in the output folder.")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the query initialisation and the batch "
                    "order.")] = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    n_queries: Annotated[Optional[int], typer.Option("--n-queries", min=1, max=512, help="Query embeddings, = "
                         "rows of the bridge's output [default: 32; with --resume: the checkpoint's].")] = None,
) -> None:
    """Train a bridge (AudioStory's semantic alignment): the planner LLM's states at learned queries appended
    after each caption, projected onto the decoder's T5 features of that caption. Use it with --bridge."""
    from ..conditioning.trained_bridge import STATE_FILE
    from ..registry import describe_decoder, load_decoder, load_planner
    from ..training.bridge import read_captions, train_bridge

    from ..run_setup import resolve_hardware

    with errors():
        texts = read_captions(captions)
        torch_device, torch_dtype = resolve_hardware(device, dtype, notify=_notify)
        planner_ref = planner or default_planner(torch_device, "transformers")  # the bridge reads its hidden states
        decoder_ref = decoder or DEFAULT_DECODER
        describe_decoder(decoder_ref)  # a missing or gated decoder is told before the planner loads
        with stderr.status(f"loading planner {planner_ref}"):
            story_planner = load_planner(planner_ref, device=torch_device, dtype=torch_dtype, hidden_states=True)
        with stderr.status(f"loading decoder {decoder_ref}"):
            story_decoder = load_decoder(decoder_ref, device=torch_device, dtype=torch_dtype)
        try:
            with ProgressView() as view:
                result = train_bridge(
                    story_planner, story_decoder, texts, outdir, steps=steps, batch_size=batch_size, lr=lr,
                    save_every=save_every, resume=resume, seed=seed, n_queries=n_queries, progress=view,
                )  # fmt: skip
        except KeyboardInterrupt:
            kept = f"the last checkpoint in {outdir} is kept (continue with --resume)"
            stderr.print(f"[bold red]interrupted[/]: {kept if (outdir / STATE_FILE).exists() else 'nothing was saved'}")
            raise typer.Exit(130) from None
        typer.echo(str(result.out_dir))
        stderr.print(f"trained {result.steps_done} steps on {len(texts)} captions: loss {result.losses[0]:.4f} -> "
                     f"{result.losses[-1]:.4f}, {result.seconds_per_step:.2f} s/step; wrote {result.out_dir}",
                     soft_wrap=True)  # fmt: skip


@app.command()
def convert(
    ref: Annotated[str, typer.Argument(metavar="REF", help="A decoder in a layout that converts: Stability's own "
                   "Stable Audio 3 release (model_config.json, model.safetensors, t5gemma-b-b-ul2/), a folder or a "
                   "hub id.")],
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the diffusers layout into (must "
                      "not exist or be empty).")],
) -> None:
    """Convert a decoder once into the diffusers layout (every key mapped, none left over, shapes checked), so
    later loads skip the conversion. The converted folder renders the same samples as the original."""
    from ..registry import convert_decoder

    with errors():
        with stderr.status(f"converting {ref}"):
            written = convert_decoder(ref, outdir)
        typer.echo(str(written))
        stderr.print(f"wrote {written}; use it with --decoder {written}", soft_wrap=True)


@app.command("plot")
def plot_command(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN.json", help="A plan: story.plan.json as `generate` "
                         "and `render` write it beside story.wav, or one written by hand.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Picture to write: .png or .svg "
                      "[default: <name>.png beside the plan, e.g. story.png for story.plan.json].",
                      callback=check_plot_output)] = None,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Draw the plan alone, even when its audio is "
                        "beside it.")] = False,
) -> None:
    """Draw a story: its events as labelled blocks on their layers (foreground, beds), joins and crossfades
    marked, over the spectrogram of its audio when that is beside the plan (story.wav, .flac, .ogg, .mp3, .m4a
    or .aac for story.plan.json). Every caption is in the key under the timeline. Needs the plot extra."""
    from ..plot import find_audio, import_matplotlib, plot_path_for, read_story_audio, write_plot

    with errors():
        import_matplotlib()
        plan = load_plan(plan_file)
        audio_path = None if no_audio else find_audio(plan_file)
        audio = None if audio_path is None else read_story_audio(audio_path, plan)
        picture = write_plot(plan, output or plot_path_for(plan_file), audio=audio)
    typer.echo(str(picture))
    where = f"over {audio_path.name}" if audio else "the plan alone" + ("" if no_audio else ": no audio beside it")
    stderr.print(f"wrote {picture} ({where})", soft_wrap=True)


# --- timelines and videos ----------------------------------------------------------------------------------


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _read_timeline_for(path: Path, duration: Optional[float]):
    """The timeline at ``path``, its cues within ``--duration`` when that option was given."""
    from ..inputs.timelines import read_timeline

    timeline = read_timeline(path)
    if duration is not None:
        timeline.check_within(duration, f"the story (--duration {duration:g})")
    return timeline


def _timeline_request(timeline, prompt: str, duration: Optional[float], gaps: str, tone, seed: int,
                      max_event_s: float, models):  # fmt: skip
    """generate --timeline: the slots request (the story lasts to the last cue unless --duration says), and the
    planner in slots mode."""
    from ..planners.slots import SlotPlanner, SlotRequest

    request = SlotRequest(slots=timeline.cues, total_s=duration or timeline.end_s, prompt=prompt, gaps=gaps,
                          tone=tone, seed=seed, max_event_s=max_event_s)  # fmt: skip
    return request, models._replace(planner=SlotPlanner(models.planner))


def _plan_or_timeline(path: Path):
    """render's input: a plan file, or a timeline whose cue texts are the sound captions, at the cues' times."""
    from ..inputs.timelines import is_timeline_file, read_timeline
    from ..planners.slots import SlotRequest, slot_plan

    if not is_timeline_file(path):
        return load_plan(path)
    timeline = read_timeline(path)
    request = SlotRequest(slots=timeline.cues, total_s=timeline.end_s, prompt="; ".join(c.text for c in timeline.cues))
    return slot_plan(request, [cue.text for cue in timeline.cues])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"audiostory {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                       help="Print the version and exit.")] = False,
) -> None:
    """Narrative audio from a story prompt."""


def main() -> None:
    app(prog_name="audiostory")
