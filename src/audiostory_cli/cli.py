"""The ``audiostory`` command: parse options, call ``pipeline``, draw progress, map errors to exit codes.

stdout carries results (paths, or JSON with ``--json``); stderr carries progress, tables and errors.
An ``AudiostoryError`` becomes one red line on stderr and exit 1; usage errors exit 2 (Typer's habit);
``AUDIOSTORY_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, NamedTuple, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from . import __version__, audio_io
from .checkpoints import DEFAULT_DECODER, DEFAULT_PLANNER
from .devices import DEVICE_CHOICES, DTYPE_CHOICES
from .errors import AudiostoryError, InputError, ModelLoadError
from .story import (
    DEFAULT_COHERENCE,
    MAX_EVENTS,
    MAX_TOTAL_S,
    WINDOWS,
    Plan,
    Progress,
    StoryRequest,
    default_max_events,
    load_plan,
    plan_to_json,
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
stderr = Console(stderr=True, highlight=False)
DEBUG_ENV = "AUDIOSTORY_DEBUG"

# --- option types shared by the commands ---------------------------------------------------------------


def _check_output(value: Optional[Path]) -> Optional[Path]:
    if value is None:
        return None
    try:
        return audio_io.check_output_path(value)
    except InputError as err:
        raise typer.BadParameter(str(err)) from None


def _check_duration(value: Optional[float]) -> Optional[float]:
    if value is not None and not 0 < value <= MAX_TOTAL_S:
        raise typer.BadParameter(f"{value:g} is out of range: must be > 0 and <= {MAX_TOTAL_S:g} seconds")
    return value


def _check_prompt(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("the prompt is empty: describe the story in a sentence or two")
    return value


def _one_of(choices: tuple[str, ...]):
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


DecoderOpt = Annotated[
    Optional[str],
    typer.Option("--decoder", help="Decoder: a folder in the TangoFlux layout or a hub id "
                 f"[default: {DEFAULT_DECODER}, or the one saved in the plan for render]."),
]  # fmt: skip
PlannerOpt = Annotated[
    Optional[str],
    typer.Option("--planner", help=f"Planner LLM: a folder, a .gguf file or a hub id of a chat model [default: "
                 f"{DEFAULT_PLANNER}]."),
]  # fmt: skip
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", help="The released AudioStory checkpoint (a folder or TencentARC/AudioStory-3B): it "
                 "plans, conditions and renders with its own trained queries, in place of --planner, --decoder, "
                 "--bridge and --coherence."),
]  # fmt: skip
DeviceOpt = Annotated[
    str, typer.Option("--device", callback=_one_of(DEVICE_CHOICES), help="auto: CUDA when present, else "
                      "MPS, else CPU (said on stderr).")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", callback=_one_of(DTYPE_CHOICES), help="auto: bf16 on CUDA, fp32 elsewhere; fp16 on "
                      "CPU falls back to fp32."),
]  # fmt: skip
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, help="Base seed; clip i uses a seed derived from it "
                                                 "and i [default: 0; render: the plan's saved seed].")]
StepsOpt = Annotated[
    Optional[int], typer.Option("--steps", min=1, max=1000, help="Denoising steps per clip [default: 50]."),
]  # fmt: skip
GuidanceOpt = Annotated[
    Optional[float], typer.Option("--guidance", min=0, max=50, help="Classifier-free guidance scale; <= 1 turns it "
                                  "off [default: 4.5]."),
]  # fmt: skip
CrossfadeOpt = Annotated[
    Optional[float], typer.Option("--crossfade", min=0, max=10, help="Seconds two consecutive clips overlap, "
                                  "equal-power [default: 1.0]."),
]  # fmt: skip
WindowOpt = Annotated[
    str, typer.Option("--window", callback=_one_of(WINDOWS), help="auto: denoise only the latent frames a "
                      "clip needs; full: always the "
                      "model's 30 s window (upstream's behaviour, slower)."),
]  # fmt: skip
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, max=64, help="Clips denoised together (lower it if memory runs out)."),
]  # fmt: skip
LoudnessOpt = Annotated[
    Optional[float], typer.Option("--loudness", min=-70, max=0, help="Normalise to this integrated loudness in "
                                  "LUFS, e.g. -16 (default: off, peak-limited only)."),
]  # fmt: skip
CoherenceOpt = Annotated[
    Optional[float], typer.Option("--coherence", min=0, max=1, help="Weight of the residual query (story prompt, "
                                  "tone, earlier events) fused into each clip's conditioning; 0: the caption alone "
                                  f"[default: {DEFAULT_COHERENCE}; render: the plan's saved value]."),
]  # fmt: skip
ContinuationOpt = Annotated[
    Optional[bool], typer.Option("--continuation/--no-continuation", help="Generate each clip's head as the "
                                 "continuation of the previous clip's tail, so both sides of a crossfade are the "
                                 "same sound (clips then render one after another) [default: on; render: the "
                                 "plan's saved value]."),
]  # fmt: skip
BridgeOpt = Annotated[
    Optional[Path], typer.Option("--bridge", help="A trained bridge folder (from `audiostory train-bridge`): the "
                                 "planner LLM's query states replace the text encoder's caption features."),
]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


# --- errors and progress -------------------------------------------------------------------------------


@contextmanager
def _errors() -> Iterator[None]:
    """The one place errors become messages: one red line on stderr, exit 1."""
    try:
        yield
    except AudiostoryError as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        stderr.print(f"[bold red]error:[/] {err}", soft_wrap=True)
        stderr.print(f"[dim](set {DEBUG_ENV}=1 for the full traceback)[/]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]: no half-written file was left")
        raise typer.Exit(130) from None


class ProgressView:
    """Draws ``story.Progress`` reports as rich bars on stderr: planning, clips, denoising steps."""

    _LABELS = {"load": "loading", "plan": "planning", "render": "clips", "step": "denoising", "mix": "mixing",
               "write": "writing"}  # fmt: skip

    def __init__(self) -> None:
        self.bars = RichProgress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=stderr, transient=True,
        )  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, report: Progress) -> None:
        label = self._LABELS.get(report.stage, report.stage)
        description = f"{label}: {report.message}" if report.message else label
        total = report.total or None
        if report.stage not in self.tasks:
            self.tasks[report.stage] = self.bars.add_task(description, total=total)
        self.bars.update(self.tasks[report.stage], completed=report.done, total=total, description=description)


# --- loading ---------------------------------------------------------------------------------------------


def _hardware(device: str, dtype: str):
    from .devices import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    return torch_device, resolve_dtype(dtype, torch_device)


def _load_planner(ref: str, device, dtype):
    from .planner import Planner

    with stderr.status(f"loading planner {ref}"):
        return Planner.load(ref, device=device, dtype=dtype)


def _load_decoder(ref: str, device, dtype):
    from .decoder import Decoder

    with stderr.status(f"loading decoder {ref}"):
        return Decoder.load(ref, device=device, dtype=dtype)


_SAVED_SETTINGS = ("seed", "steps", "guidance", "crossfade_s", "coherence", "continuation")  # kept in plan.json


def _render_options(base: Plan | None = None, **values):
    """Command-line values win; then the plan's saved settings (``render`` in plan.json); then the defaults.
    ``values`` are RenderOptions fields, None where the option was not given."""
    from .pipeline import RenderOptions

    saved = base.render if base is not None else None
    chosen = {}
    for name, value in values.items():
        if value is None and saved is not None and name in _SAVED_SETTINGS:
            value = getattr(saved, name)
        if value is not None:
            chosen[name] = value
    return RenderOptions(**chosen)


class _Models(NamedTuple):
    planner: object | None  # planner (Planner, or the AudioStory checkpoint's)
    decoder: object | None  # Decoder
    bridge: object | None  # trained bridge adapter (--bridge)
    model: object | None  # AudioStory checkpoint (--model)


def _load_models(device, dtype, *, planner=None, decoder=None, bridge=None, model=None, coherence=None,
                 need_planner=True, need_decoder=True) -> _Models:  # fmt: skip
    """Load what the command needs once: ``--model`` alone, or planner, decoder and bridge."""
    if model is not None:
        given = [name for name, value in (("--planner", planner), ("--decoder", decoder), ("--bridge", bridge),
                                          ("--coherence", coherence)) if value is not None]  # fmt: skip
        if given:
            raise typer.BadParameter(f"--model brings its own planner, decoder and fusion; drop {', '.join(given)}")
        from .audiostory_model import AudioStoryModel

        with stderr.status(f"loading AudioStory model {model}"):
            loaded = AudioStoryModel.load(model, device=device, dtype=dtype)
        return _Models(loaded.planner, loaded.decoder, None, loaded)
    story_planner = _load_planner(planner or DEFAULT_PLANNER, device, dtype) if need_planner else None
    story_decoder = _load_decoder(decoder or DEFAULT_DECODER, device, dtype) if need_decoder else None
    trained_bridge = None
    if bridge is not None:
        from .bridge_training import BridgeAdapter, TrainedBridge

        if story_planner is None:  # render: the planner the bridge was trained with, unless --planner says
            story_planner = _load_planner(planner or BridgeAdapter.load(bridge)[1].planner, device, dtype)
        trained_bridge = TrainedBridge.load(bridge, story_planner)
        text_dim = story_decoder.text_encoder.config.d_model if story_decoder is not None else None
        if text_dim is not None and trained_bridge.config.text_dim != text_dim:
            raise ModelLoadError(
                f"bridge {bridge} was trained for text features of width {trained_bridge.config.text_dim} "
                f"({trained_bridge.config.decoder}), but decoder {story_decoder.ref} uses {text_dim}",
                hint="use the decoder it was trained for, or train a bridge for this one",
            )
    return _Models(story_planner, story_decoder, trained_bridge, None)


# --- output ----------------------------------------------------------------------------------------------


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"plan: {len(plan.events)} events, {plan.total_s:g} s", title_justify="left")
    for column, justify in (("#", "right"), ("start", "right"), ("duration", "right"), ("caption", "left"),
                            ("tone", "left"), ("layer", "right")):  # fmt: skip
        table.add_column(column, justify=justify)
    for e in plan.events:
        table.add_row(str(e.index), f"{e.start_s:.2f}", f"{e.duration_s:.2f}", e.caption, e.tone, str(e.layer))
    return table


def _show_plan(plan: Plan) -> None:
    stderr.print(plan_table(plan))
    if plan.tone:
        stderr.print(f"tone: {plan.tone}")
    if plan.reasoning:
        stderr.print(f"reasoning: {plan.reasoning}", soft_wrap=True)
    stderr.print(f"total: {plan.total_s:g} s")


def _print_result(result, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"audio": str(result.audio_path), "plan": str(result.plan_path),
                               "duration_s": result.duration_s, "sample_rate": result.sample_rate}))  # fmt: skip
    else:
        typer.echo(str(result.audio_path))
    stderr.print(f"wrote {result.audio_path} ({result.duration_s:.2f} s) and {result.plan_path}")


# --- commands --------------------------------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The story, e.g. 'a storm reaches a quiet harbor, a ship's bell "
                                          "rings, the rain stops and gulls return'.", callback=_check_prompt)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Audio file to write: .wav, .flac, "
                      ".ogg, .mp3 (or .m4a/.aac with ffmpeg). A plan is saved beside it as <name>.plan.json.",
                      callback=_check_output)] = None,
    duration: Annotated[float, typer.Option("--duration", "-d", help="Length of the story in seconds (max 600).",
                        callback=_check_duration)] = 30.0,
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
    window: WindowOpt = "auto",
    batch_size: BatchSizeOpt = 4,
    loudness: LoudnessOpt = None,
    coherence: CoherenceOpt = None,
    continuation: ContinuationOpt = None,
    bridge_path: BridgeOpt = None,
    planner: PlannerOpt = None,
    decoder: DecoderOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Plan a story with the LLM and render it to one audio file."""
    from .decoder import TangoFluxConfig
    from .pipeline import generate_story, longest_event_s, plan_story

    if output is None and not dry_run:
        raise typer.BadParameter("an output file is needed (or use --dry-run)", param_hint="'--output' / '-o'")
    with _errors():
        options = _render_options(
            seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
            continuation=continuation, window=window, batch_size=batch_size, loudness_lufs=loudness,
        )  # fmt: skip
        torch_device, torch_dtype = _hardware(device, dtype)
        models = _load_models(
            torch_device, torch_dtype, planner=planner, decoder=decoder, bridge=bridge_path, model=model,
            coherence=coherence, need_decoder=not dry_run,
        )  # fmt: skip
        window_s = models.decoder.max_clip_s if models.decoder else TangoFluxConfig().max_clip_s
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
            _show_plan(plan)
            if as_json:
                typer.echo(plan_to_json(plan), nl=False)
            return
        with ProgressView() as view:
            result = generate_story(
                models.planner, models.decoder, request, options, output, trained_bridge=models.bridge,
                model=models.model, progress=view,
            )  # fmt: skip
        _show_plan(result.plan)
        _print_result(result, as_json)


@app.command()
def render(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN.json", help="A plan written by `generate` or by hand "
                         "(see examples/plan.json).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Audio file to write (.wav, .flac, .ogg, .mp3, "
                      ".m4a, .aac).", callback=_check_output)],
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    crossfade: CrossfadeOpt = None,
    window: WindowOpt = "auto",
    batch_size: BatchSizeOpt = 4,
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
    """Render a plan file, no planner. Seed, steps, guidance, crossfade, coherence, continuation, decoder,
    bridge and model default to the values saved in the plan, so rendering a saved plan reproduces its audio."""
    from .pipeline import render_to_file

    with _errors():
        plan = load_plan(plan_file)
        options = _render_options(
            plan, seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
            continuation=continuation, window=window, batch_size=batch_size, loudness_lufs=loudness,
        )  # fmt: skip
        saved = plan.render
        if model is None and saved is not None and saved.model and not (decoder or bridge_path):
            model = saved.model  # rendered by the AudioStory checkpoint: render it the same way
        bridge_folder = bridge_path or (Path(saved.bridge) if saved is not None and saved.bridge else None)
        torch_device, torch_dtype = _hardware(device, dtype)
        models = _load_models(
            torch_device, torch_dtype, planner=planner, bridge=bridge_folder, model=model, need_planner=False,
            decoder=decoder or (saved.decoder if saved is not None and saved.decoder and model is None else None),
            coherence=coherence if model is not None else None,
        )  # fmt: skip
        with ProgressView() as view:
            result = render_to_file(
                models.decoder, plan, options, output, planner_ref=saved.planner if saved is not None else None,
                trained_bridge=models.bridge, model=models.model, progress=view,
            )  # fmt: skip
        _print_result(result, as_json)


@app.command()
def batch(
    prompts_file: Annotated[Path, typer.Argument(metavar="PROMPTS_FILE", help="One prompt per line, or JSON Lines "
                            "with prompt, duration, seed, output, tone (see examples/).")],
    outdir: Annotated[Path, typer.Option("--outdir", "-d", help="Folder for the audio files (created if missing).")],
    duration: Annotated[float, typer.Option("--duration", help="Length of each story unless its line says "
                        "otherwise.", callback=_check_duration)] = 30.0,
    audio_format: Annotated[str, typer.Option("--format", help="Extension of the derived file names: wav, flac, "
                            "ogg, mp3, m4a or aac.")] = "wav",
    max_events: Annotated[Optional[int], typer.Option("--max-events", min=1, max=MAX_EVENTS,
                          help="Most events the planner may use per story [default: 8, or as many as the "
                          "duration needs].")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    crossfade: CrossfadeOpt = None,
    window: WindowOpt = "auto",
    batch_size: BatchSizeOpt = 4,
    loudness: LoudnessOpt = None,
    coherence: CoherenceOpt = None,
    continuation: ContinuationOpt = None,
    bridge_path: BridgeOpt = None,
    planner: PlannerOpt = None,
    decoder: DecoderOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Generate one story per prompt; models load once. A bad prompt is reported and skipped; exit 1 if any
    failed."""
    from .pipeline import generate_batch, read_prompts_file

    with _errors():
        extension = "." + audio_format.lower().lstrip(".")
        audio_io.check_extension(extension)
        items = read_prompts_file(prompts_file)
        if outdir.exists() and not outdir.is_dir():
            raise AudiostoryError(f"--outdir {outdir} is a file", hint="give a folder")
        options = _render_options(
            seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
            continuation=continuation, window=window, batch_size=batch_size, loudness_lufs=loudness,
        )  # fmt: skip
        torch_device, torch_dtype = _hardware(device, dtype)
        models = _load_models(
            torch_device, torch_dtype, planner=planner, decoder=decoder, bridge=bridge_path, model=model,
            coherence=coherence,
        )  # fmt: skip
        outdir.mkdir(parents=True, exist_ok=True)

        def report(outcome) -> None:
            where = outcome.result.audio_path if outcome.result else outcome.error
            colour = "green" if outcome.result else "red"
            stderr.print(f"[{colour}]line {outcome.item.line}[/]: {where}", soft_wrap=True)

        with ProgressView() as view:
            outcomes = generate_batch(
                models.planner, models.decoder, items, outdir, default_duration_s=duration, options=options,
                max_events=max_events, extension=extension, trained_bridge=models.bridge, model=models.model,
                progress=view, on_outcome=report,
            )  # fmt: skip
        _show_summary(outcomes, as_json)
        failed = sum(o.result is None for o in outcomes)
        if failed:
            stderr.print(f"[bold red]error:[/] {failed} of {len(outcomes)} prompts failed")
            raise typer.Exit(1)


def _show_summary(outcomes, as_json: bool) -> None:
    table = Table(title="batch summary", title_justify="left")
    for column in ("line", "prompt", "status", "output or error", "seconds"):
        table.add_column(column)
    for o in outcomes:
        status = "[green]ok[/]" if o.result else "[red]failed[/]"
        where = str(o.result.audio_path) if o.result else o.error
        table.add_row(str(o.item.line), o.item.prompt[:40], status, where, f"{o.seconds:.1f}")
    stderr.print(table)
    for o in outcomes:
        if as_json:
            typer.echo(json.dumps({"line": o.item.line, "prompt": o.item.prompt,
                                   "audio": str(o.result.audio_path) if o.result else None, "error": o.error}))
        elif o.result:
            typer.echo(str(o.result.audio_path))


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
    from .bridge_training import STATE_FILE, read_captions, train_bridge

    with _errors():
        texts = read_captions(captions)
        torch_device, torch_dtype = _hardware(device, dtype)
        story_planner = _load_planner(planner or DEFAULT_PLANNER, torch_device, torch_dtype)
        story_decoder = _load_decoder(decoder or DEFAULT_DECODER, torch_device, torch_dtype)
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
