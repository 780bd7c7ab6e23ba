"""The command-line options shared by the commands, and how their values become one ``RenderOptions``.

Ranges live in ``settings.RenderOptions`` alone: a value it refuses becomes a usage error (exit 2) naming
the option. ``None`` means "not given": then the plan's saved value (``render``), then the decoder's own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import audio_io
from ..checkpoints import DEFAULT_DECODER, DEFAULT_PLANNER, canonical_ref
from ..devices import DEVICE_CHOICES, DTYPE_CHOICES
from ..errors import InputError
from ..planners import ENGINES as PLANNER_ENGINES
from ..settings import DEFAULT_COHERENCE, DEFAULT_CROSSFADE_S, WINDOWS, RenderOptions
from ..story import check_prompt as story_check_prompt
from ..story import check_total_s

# RenderOptions field (as its messages name it) -> the option that sets it
FLAGS = {"seed": "--seed", "steps": "--steps", "guidance": "--guidance", "crossfade": "--crossfade",
         "coherence": "--coherence", "loudness": "--loudness", "window": "--window"}  # fmt: skip
MODEL_EXCLUSIVE = ("planner", "decoder", "bridge", "coherence")  # what --model brings itself


def check_output(value: Optional[Path]) -> Optional[Path]:
    if value is None:
        return None
    try:
        return audio_io.check_output_path(value)
    except InputError as err:
        raise typer.BadParameter(str(err)) from None


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


def render_options(saved: RenderOptions | None = None, **given) -> RenderOptions:
    """Command-line values win, then the plan's saved settings, then the defaults. ``given`` are
    RenderOptions fields, None where the option was not given. A decoder or bridge given on the command
    line replaces a saved AudioStory model, and a model given replaces a saved decoder and bridge."""
    values = {name: value for name, value in given.items() if value is not None}
    for name in ("decoder", "planner", "bridge", "model"):  # saved as absolute paths: render works from anywhere
        if name in values:
            values[name] = canonical_ref(values[name])
    base = saved or RenderOptions()
    if {"decoder", "bridge"} & values.keys():
        base = replace(base, model=None)
    if "model" in values:
        base = replace(base, decoder=None, bridge=None)
    if values.get("model", base.model) is not None:
        clash = [f"--{name}" for name in MODEL_EXCLUSIVE if name in values]
        if clash:
            raise typer.BadParameter(f"--model brings its own planner, decoder and fusion; drop {', '.join(clash)}")
    try:
        return replace(base, **values)
    except InputError as err:
        flag = FLAGS.get(str(err).split(" ", 1)[0])
        raise typer.BadParameter(str(err), param_hint=f"'{flag}'" if flag else None) from None


DecoderOpt = Annotated[
    Optional[str],
    typer.Option("--decoder", help="Decoder: a folder or hub id in the TangoFlux layout, the Stable Audio 3 "
                 "diffusers layout or Stability's own SA3 layout (told apart by their files) "
                 f"[default: {DEFAULT_DECODER}; render: the one saved in the plan]."),
]  # fmt: skip
PlannerOpt = Annotated[
    Optional[str],
    typer.Option("--planner", help=f"Planner LLM: a folder, a .gguf file or a hub id of a chat model, or the "
                 f"http(s)://…/v1 URL of an OpenAI-compatible server [default: {DEFAULT_PLANNER}]."),
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
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", help="The released AudioStory checkpoint (a folder or TencentARC/AudioStory-3B): it "
                 "plans, conditions and renders with its own trained queries, in place of --planner, --decoder, "
                 "--bridge and --coherence."),
]  # fmt: skip
DeviceOpt = Annotated[
    str, typer.Option("--device", callback=one_of(DEVICE_CHOICES), help="auto: CUDA when present, else "
                      "MPS, else CPU (said on stderr).")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", callback=one_of(DTYPE_CHOICES), help="auto: bf16 on CUDA, fp32 elsewhere; fp16 on "
                      "CPU falls back to fp32."),
]  # fmt: skip
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Base seed; clip i uses a seed derived from it "
                                                 "and i [default: 0; render: the plan's saved seed].")]
StepsOpt = Annotated[
    Optional[int], typer.Option("--steps", help="Denoising steps per clip [default: the decoder's own: TangoFlux "
                                "50, Stable Audio 3 8; render: the plan's saved value]."),
]  # fmt: skip
GuidanceOpt = Annotated[
    Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale; <= 1 turns it off [default: "
                                  "the decoder's own: TangoFlux 4.5, Stable Audio 3 1.0; render: the plan's saved "
                                  "value]."),
]  # fmt: skip
CrossfadeOpt = Annotated[
    Optional[float], typer.Option("--crossfade", help="Seconds two consecutive clips overlap, equal-power "
                                  f"[default: {DEFAULT_CROSSFADE_S:g}; render: the plan's saved value]."),
]  # fmt: skip
WindowOpt = Annotated[
    Optional[str], typer.Option("--window", callback=one_of(WINDOWS), help="auto: denoise only the latent "
                                "frames a clip needs; full: always the model's whole window (TangoFlux: 30 s, "
                                "upstream's behaviour, slower) [default: auto; render: the plan's saved value]."),
]  # fmt: skip
def check_batch_size(value):
    """``auto`` (what fits the device's free memory) or a whole number of clips, 1 to 64."""
    if str(value) == "auto":
        return "auto"
    if not str(value).isdigit() or not 1 <= int(value) <= 64:
        raise typer.BadParameter(f"{value!r} is not auto or a whole number from 1 to 64")
    return int(value)


BatchSizeOpt = Annotated[
    str, typer.Option("--batch-size", callback=check_batch_size, help="Clips denoised together, or auto: one "
                      "at a time on a CPU (batching gains nothing there), on a GPU as many as fit its free memory "
                      "(at most 16; give a number if memory runs out). Changes the audio by float rounding only "
                      "[default: auto]."),
]  # fmt: skip
LoudnessOpt = Annotated[
    Optional[float], typer.Option("--loudness", help="Normalise to this integrated loudness in LUFS, e.g. -16 "
                                  "[default: off, peak-limited only; render: the plan's saved value]."),
]  # fmt: skip
CoherenceOpt = Annotated[
    Optional[float], typer.Option("--coherence", help="Weight of the residual query (story prompt, tone, "
                                  "earlier events) fused into each clip's conditioning, 0 to 1; 0: the caption "
                                  f"alone [default: {DEFAULT_COHERENCE}; render: the plan's saved value]."),
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
