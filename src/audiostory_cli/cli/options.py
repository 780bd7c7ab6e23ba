"""The command-line options shared by the commands, and how the library's setting errors become usage errors.

Ranges live in ``settings.RenderOptions`` alone and the merge of command line, plan and defaults in
``settings.merge_options`` (called by ``run_setup.setup_run``): an ``OptionError`` they raise becomes a usage
error (exit 2) naming the option. ``None`` means "not given": then the plan's saved value (``render``), then
the decoder's own. Options whose default differs in ``render`` come in pairs: ``XOpt`` (generate, batch) and
``SavedXOpt`` (render: the plan's saved value first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..checkpoints import DEFAULT_DECODER, LLAMA_PLANNER, TRANSFORMERS_PLANNER
from ..devices import DEVICE_CHOICES, DTYPE_CHOICES
from ..errors import InputError, OptionError
from ..planners import ENGINES as PLANNER_ENGINES
from ..settings import DEFAULT_COHERENCE, DEFAULT_CROSSFADE_S, MAX_BATCH_SIZE, WINDOWS
from ..story import check_prompt as story_check_prompt
from ..story import check_total_s

# the setting an OptionError names (a RenderOptions field as its messages name it, or a path) -> its option
FLAGS = {"seed": "--seed", "steps": "--steps", "guidance": "--guidance", "crossfade": "--crossfade",
         "coherence": "--coherence", "loudness": "--loudness", "window": "--window", "batch_size": "--batch-size",
         "decoder": "--decoder", "planner": "--planner", "bridge": "--bridge", "model": "--model",
         "output": "--output' / '-o", "outdir": "--outdir' / '-o", "format": "--format"}  # fmt: skip


def usage_error(err: OptionError) -> typer.BadParameter:
    """A setting the library refused, as the usage error (exit 2) of the option that gave it."""
    from .display import one_line

    flag = FLAGS.get(err.field or "")
    return typer.BadParameter(one_line(str(err)), param_hint=f"'{flag}'" if flag else None)


def check_duration(value: Optional[float]) -> Optional[float]:
    """``--duration``, checked by the story's own rule (``story.check_total_s``), as a usage error."""
    if value is not None:
        try:
            check_total_s(value)
        except InputError as err:
            raise typer.BadParameter(str(err)) from None
    return value


def check_prompt(value: str) -> str:
    """The prompt, checked by the story's own rule (``story.check_prompt``), as a usage error."""
    try:
        story_check_prompt(value)
    except InputError as err:
        raise typer.BadParameter(str(err)) from None
    return value


def one_of(choices: tuple[str, ...]):
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def check_batch_size(value: str) -> Optional[int]:
    """``auto`` -> None (what suits the device), a whole number -> that number (its range: RenderOptions)."""
    text = str(value).strip()
    if text == "auto":
        return None
    if not text.isdecimal() or len(text) > 6:
        raise typer.BadParameter(f"{value[:40]!r} is not auto or a whole number from 1 to {MAX_BATCH_SIZE}")
    return int(text)


def model_ref(path: Optional[Path]) -> Optional[str]:
    """A path option (--bridge) as the reference ``merge_options`` takes."""
    return None if path is None else str(path)


def _with_saved(kind: Any, flags: tuple[str, ...], text: str, default: str, **extra) -> tuple[Any, Any]:
    """One option twice: for generate and batch (``[default: DEFAULT]``) and for render, where a value saved
    in the plan comes first."""
    new = Annotated[kind, typer.Option(*flags, help=f"{text} [default: {default}].", **extra)]
    saved = Annotated[kind, typer.Option(*flags, help=f"{text} [default: the plan's saved value, else {default}].",
                                         **extra)]  # fmt: skip
    return new, saved


DecoderOpt, SavedDecoderOpt = _with_saved(
    Optional[str], ("--decoder",), "Decoder: a folder or hub id in the TangoFlux layout, the Stable Audio 3 "
    "diffusers layout or Stability's own SA3 layout (told apart by their files).",
    f"{DEFAULT_DECODER}: 8 steps, fast on a CPU; gated, accept its terms on huggingface.co once",
)  # fmt: skip
PlannerOpt = Annotated[
    Optional[str],
    typer.Option("--planner", help=f"Planner LLM: a folder, a .gguf file (or owner/repo/file.gguf on the hub) or a "
                 f"hub id of a chat model, or the http(s)://…/v1 URL of an OpenAI-compatible server [default: on a "
                 f"CPU with the llama extra installed {LLAMA_PLANNER} through llama.cpp (a plan in seconds), else "
                 f"{TRANSFORMERS_PLANNER}; both Apache-2.0. With --bridge and train-bridge: the latter]."),
]  # fmt: skip
PlannerModelOpt = Annotated[
    Optional[str],
    typer.Option("--planner-model", metavar="NAME", help="With an http(s)://…/v1 --planner: the model on that "
                 "server [default: the first it lists]. The key comes from AUDIOSTORY_PLANNER_API_KEY or "
                 "OPENAI_API_KEY."),
]  # fmt: skip
PlannerEngineOpt = Annotated[
    Optional[str],
    typer.Option("--planner-engine", callback=one_of(PLANNER_ENGINES), help="What runs --planner: transformers, "
                 "llama_cpp or openai_http [default: by the reference: a .gguf file -> llama_cpp, an http(s):// "
                 "URL -> openai_http, else transformers]. transformers also loads a .gguf file (slow; needs the "
                 "gguf extra)."),
]  # fmt: skip
ModelOpt, SavedModelOpt = _with_saved(
    Optional[str], ("--model",), "The released AudioStory checkpoint (a folder or TencentARC/AudioStory-3B): it "
    "plans, conditions and renders with its own trained queries, in place of --planner, --decoder, --bridge and "
    "--coherence.", "none",
)  # fmt: skip
DeviceOpt = Annotated[
    str, typer.Option("--device", callback=one_of(DEVICE_CHOICES), help="auto: CUDA when present, else "
                      "MPS, else CPU (said on stderr).")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", callback=one_of(DTYPE_CHOICES), help="auto: bf16 on CUDA and on a CPU that "
                      "computes bf16 natively (AVX512-BF16 or AMX; said on stderr), fp32 elsewhere; fp16 on a CPU "
                      "falls back to fp32."),
]  # fmt: skip
SeedOpt, SavedSeedOpt = _with_saved(
    Optional[int], ("--seed",), "Base seed; clip i uses a seed derived from it and i.", "0"
)
StepsOpt, SavedStepsOpt = _with_saved(
    Optional[int], ("--steps",), "Denoising steps per clip, 1 to 1000.", "the decoder's own: TangoFlux 50, "
    "Stable Audio 3 8",
)  # fmt: skip
GuidanceOpt, SavedGuidanceOpt = _with_saved(
    Optional[float], ("--guidance",), "Classifier-free guidance scale, 0 to 50; <= 1 turns it off.", "the "
    "decoder's own: TangoFlux 4.5, Stable Audio 3 1.0",
)  # fmt: skip
CrossfadeOpt, SavedCrossfadeOpt = _with_saved(
    Optional[float], ("--crossfade",), "Seconds two consecutive clips overlap, equal-power, 0 to 10.",
    f"{DEFAULT_CROSSFADE_S:g}",
)  # fmt: skip
WindowOpt, SavedWindowOpt = _with_saved(
    Optional[str], ("--window",), "auto: denoise only the latent frames a clip needs; full: always the model's "
    "whole window (TangoFlux: 30 s, upstream's behaviour, slower; Stable Audio 3 takes only auto).", "auto",
    callback=one_of(WINDOWS),
)  # fmt: skip
BatchSizeOpt, SavedBatchSizeOpt = _with_saved(
    str, ("--batch-size",), "Clips denoised together, or auto: on a CPU 4 where a one-off timing of the DiT's "
    "shapes on this machine says batching pays, else 1 (kept in ~/.cache/audiostory/cpu-batching.json); on a GPU "
    "as many as fit its free memory (at most 16; give a number if memory runs out). It changes the audio by float "
    "rounding, so the number used is saved in the plan.", "auto", callback=check_batch_size,
    show_default=False,
)  # fmt: skip
LoudnessOpt, SavedLoudnessOpt = _with_saved(
    Optional[float], ("--loudness",), "Normalise to this integrated loudness in LUFS, -70 to 0, e.g. -16.",
    "off, peak-limited only",
)  # fmt: skip
CoherenceOpt, SavedCoherenceOpt = _with_saved(
    Optional[float], ("--coherence",), "Weight of the residual query (story prompt, tone, earlier events) fused "
    "into each clip's conditioning, 0 to 1; 0: the caption alone.", f"{DEFAULT_COHERENCE}",
)  # fmt: skip
ContinuationOpt, SavedContinuationOpt = _with_saved(
    Optional[bool], ("--continuation/--no-continuation",), "Generate each clip's head as the continuation of the "
    "previous clip's tail (flow-matching inpainting, clips still batched in lockstep), so both sides of a "
    "crossfade are the same sound.", "on",
)  # fmt: skip
BridgeOpt, SavedBridgeOpt = _with_saved(
    Optional[Path], ("--bridge",), "A trained bridge folder (from `audiostory train-bridge`): the planner LLM's "
    "query states replace the text encoder's caption features.", "none",
)  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def check_plot_output(value: Optional[Path]) -> Optional[Path]:
    """``plot -o``: a .png or .svg in a folder that exists, as a usage error otherwise."""
    if value is None:
        return None
    from ..plot import check_plot_path

    try:
        return check_plot_path(value)
    except InputError as err:
        raise typer.BadParameter(str(err)) from None


PlotOpt = Annotated[
    bool, typer.Option("--plot", help="Also draw the story as <name>.png beside the output: its events on their "
                       "layers over the audio's spectrogram, joins marked (needs the plot extra; generate "
                       "--dry-run: the plan alone, beside -o)."),
]  # fmt: skip
TimelineOpt = Annotated[
    Optional[Path], typer.Option("--timeline", help="A timeline file: .srt, .vtt, or a shot list (.json, .csv with "
                                 "start, end, description). Each cue is a slot with fixed times; the planner writes "
                                 "what is heard there from what the cue says is seen. --duration defaults to the "
                                 "end of the last cue."),
]  # fmt: skip
GapsOpt = Annotated[
    str, typer.Option("--gaps", callback=one_of(("silence", "bed")), help="With a timeline: what is heard between "
                      "cues: silence, or bed (the background sound runs under the whole story, gaps included)."),
]  # fmt: skip
