"""The ``audiostory`` commands: parse options, load the models once, call ``pipeline``, show the result.

An ``AudiostoryError`` becomes one red line on stderr and exit 1; usage errors exit 2 (Typer's habit);
``AUDIOSTORY_DEBUG=1`` shows the traceback instead (``display.errors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__, audio_io
from ..checkpoints import DEFAULT_DECODER, DEFAULT_PLANNER
from ..errors import AudiostoryError, ModelNotFoundError
from ..settings import RenderOptions
from ..story import MAX_EVENTS, StoryRequest, default_max_events, load_plan, plan_to_json
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
    GuidanceOpt,
    JsonOpt,
    LoudnessOpt,
    ModelOpt,
    PlannerEngineOpt,
    PlannerModelOpt,
    PlannerOpt,
    SeedOpt,
    StepsOpt,
    WindowOpt,
    check_duration,
    check_output,
    check_prompt,
    render_options,
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


def _hardware(device: str, dtype: str):
    from ..devices import resolve_device, resolve_dtype

    def notify(message: str) -> None:
        stderr.print(f"audiostory: {message}", soft_wrap=True)

    torch_device = resolve_device(device, notify=notify)
    return torch_device, resolve_dtype(dtype, torch_device, notify=notify)


def _check_capabilities(options: RenderOptions, *, dry_run: bool = False):
    """Refuse what the decoder cannot honour before any weight loads; returns its caps (None for --model,
    whose decoder is known only once loaded)."""
    from ..decoders import tangoflux
    from ..registry import describe_decoder

    if options.model is not None:
        return None
    try:
        caps = describe_decoder(options.decoder or DEFAULT_DECODER)
    except ModelNotFoundError:
        if not dry_run or options.decoder is not None:
            raise
        caps = tangoflux.default_caps()  # a plan for the default decoder, whose files need not be here yet
    bridge_width = None
    if options.bridge is not None:
        from ..conditioning.trained_bridge import BridgeAdapter

        bridge_width = BridgeAdapter.read_config(options.bridge).text_dim
    caps.check(options, bridge_width=bridge_width)
    return caps


def _load_models(options: RenderOptions, device, dtype, **needs):
    """``registry.load_models`` with a spinner on stderr for each model."""
    from ..registry import load_models

    return load_models(options, device=device, dtype=dtype, status=stderr.status, **needs)


def _bridge_ref(path: Optional[Path]) -> Optional[str]:
    """A bridge is saved in plans by its absolute folder, so ``render`` finds it from anywhere."""
    return None if path is None else str(path.expanduser().resolve())


# --- commands --------------------------------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The story, e.g. 'a storm reaches a quiet harbor, a ship's bell "
                                          "rings, the rain stops and gulls return'.", callback=check_prompt)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Audio file to write: .wav, .flac, "
                      ".ogg, .mp3 (or .m4a/.aac with ffmpeg). A plan is saved beside it as <name>.plan.json.",
                      callback=check_output)] = None,
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
) -> None:
    """Plan a story with the LLM and render it to one audio file."""
    from ..pipeline import generate_story, longest_event_s, plan_story

    if output is None and not dry_run:
        raise typer.BadParameter("an output file is needed (or use --dry-run)", param_hint="'--output' / '-o'")
    options = render_options(
        seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
        continuation=continuation, window=window, loudness_lufs=loudness, planner=planner, decoder=decoder,
        bridge=_bridge_ref(bridge_path), model=model,
    )  # fmt: skip
    with errors():
        caps = _check_capabilities(options, dry_run=dry_run)
        torch_device, torch_dtype = _hardware(device, dtype)
        models = _load_models(options, torch_device, torch_dtype, need_decoder=not dry_run,
                              planner_model=planner_model, planner_engine=planner_engine)  # fmt: skip
        window_s = models.decoder.caps.window_s if models.decoder else caps.window_s
        max_event_s = longest_event_s(window_s, options.crossfade_s)
        request = StoryRequest(
            prompt=prompt,
            total_s=duration,
            seed=options.seed,
            tone=tone,
            max_events=max_events or default_max_events(duration, max_event_s),
            max_event_s=max_event_s,
        )
        if dry_run:
            with ProgressView() as view:
                plan = plan_story(models.planner, request, progress=view)
            show_plan(plan)
            if as_json:
                typer.echo(plan_to_json(plan), nl=False)
            return
        with ProgressView() as view:
            result = generate_story(
                models.planner, models.decoder, request, options, models.conditioner, output,
                batch_size=batch_size, progress=view,
            )  # fmt: skip
        show_plan(result.plan)
        print_result(result, as_json)


@app.command()
def render(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN.json", help="A plan written by `generate` or by hand "
                         "(see examples/plan.json).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Audio file to write (.wav, .flac, .ogg, .mp3, "
                      ".m4a, .aac).", callback=check_output)],
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
    planner: Annotated[Optional[str], typer.Option("--planner", help="With --bridge: the planner LLM it reads "
                       "[default: the one the bridge was trained with].")] = None,
    decoder: DecoderOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Render a plan file, no planner. Every setting that changes the audio (seed, steps, guidance, crossfade,
    coherence, continuation, window, loudness, decoder, bridge, model) defaults to the value saved in the
    plan, so rendering a saved plan reproduces its audio sample for sample."""
    from ..pipeline import render_to_file

    with errors():
        plan = load_plan(plan_file)
        options = render_options(
            plan.render, seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
            continuation=continuation, window=window, loudness_lufs=loudness, decoder=decoder,
            bridge=_bridge_ref(bridge_path), model=model,
        )  # fmt: skip
        _check_capabilities(options)
        torch_device, torch_dtype = _hardware(device, dtype)
        models = _load_models(options, torch_device, torch_dtype, need_planner=False, bridge_planner=planner)
        with ProgressView() as view:
            result = render_to_file(
                models.decoder, plan, options, models.conditioner, output, batch_size=batch_size, progress=view
            )
        print_result(result, as_json)


@app.command()
def batch(
    prompts_file: Annotated[Path, typer.Argument(metavar="PROMPTS_FILE", help="One prompt per line, or JSON Lines "
                            "with prompt, duration, seed, output, tone (see examples/).")],
    outdir: Annotated[Path, typer.Option("--outdir", "-d", help="Folder for the audio files (created if missing).")],
    duration: Annotated[float, typer.Option("--duration", help="Length of each story unless its line says "
                        "otherwise.", callback=check_duration)] = 30.0,
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
    outcome is appended to DIR/manifest.jsonl. A bad prompt is reported and skipped; exit 1 if any failed."""
    from ..batch.local import BatchRun, BatchSettings, ModelSpec, load_batch_models, make_tasks, run_local
    from ..batch.local import check_outdir, with_default_refs
    from ..batch.prompts import read_prompts_file

    options = render_options(
        seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
        continuation=continuation, window=window, loudness_lufs=loudness, planner=planner, decoder=decoder,
        bridge=_bridge_ref(bridge_path), model=model,
    )  # fmt: skip
    with errors():
        extension = "." + audio_format.lower().lstrip(".")
        audio_io.check_extension(extension)
        items = read_prompts_file(prompts_file)
        check_outdir(outdir.expanduser())  # a file, or a folder that cannot be written or created: one line, before any work
        if ray_address is not None:
            from ..batch.ray import import_ray

            import_ray()  # a missing extra is one line, before anything else happens
        _check_capabilities(options)
        settings = BatchSettings(
            outdir=outdir.expanduser().resolve(), options=with_default_refs(options), default_duration_s=duration,
            max_events=max_events, extension=extension, batch_size=batch_size, force=force, planner_model=planner_model,
        )  # fmt: skip
        tasks = make_tasks(items, settings)
        spec = ModelSpec(settings.options, device=device, dtype=dtype, planner_model=planner_model,
                         planner_engine=planner_engine)  # fmt: skip
        with BatchRun(tasks, settings, on_record=show_record) as run:
            if run.cleaned:
                stderr.print(f"removed {len(run.cleaned)} temporary files a killed run left in {settings.outdir}")
            if run.todo and ray_address is not None:
                from ..batch.ray import run_on_ray

                records = run_on_ray(run, spec, ray_address, on_start=show_actors)
            elif run.todo:
                _hardware(device, dtype)  # says which device --device auto picked
                with stderr.status(f"loading models for {len(run.todo)} stories"):
                    models = load_batch_models(spec)
                with ProgressView() as view:
                    records = run_local(run, models, overlap=overlap, progress=view)
            else:
                records = run.results()
        show_summary(records, settings.outdir, as_json)
        failed = sum(r.status == "failed" for r in records)
        if failed:
            stderr.print(f"[bold red]error:[/] {failed} of {len(records)} prompts failed")
            raise typer.Exit(1)


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
    from ..registry import load_decoder, load_planner
    from ..training.bridge import read_captions, train_bridge

    with errors():
        texts = read_captions(captions)
        torch_device, torch_dtype = _hardware(device, dtype)
        planner_ref, decoder_ref = planner or DEFAULT_PLANNER, decoder or DEFAULT_DECODER
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
