"""``audiostory edit`` and ``audiostory extend``: change a rendered story, keeping everything else to the sample.

Both read ``STORY.plan.json`` with the audio and ``.latents.safetensors`` beside it, write a new story (the old one
stays), and record the change in the new plan so ``render`` replays it (``editing/``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .app import _check_plot, _load_models, _notify, _plot_beside, app
from .display import ProgressView, errors, print_result, stderr
from .options import DeviceOpt, DtypeOpt, JsonOpt, PlannerEngineOpt, PlannerModelOpt, PlotOpt, check_duration

StoryArg = Annotated[Path, typer.Argument(metavar="STORY.plan.json", help="The plan of a rendered story; its audio "
                     "(story.wav) and latents (story.latents.safetensors) are read from beside it.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="The new story's audio file (.wav, .flac, ...); its "
                      "plan and latents are written beside it. Never the story being edited: that one stays.")]


@app.command()
def edit(
    story: StoryArg,
    output: OutputOpt,
    event: Annotated[Optional[int], typer.Option("--event", metavar="N", min=0, help="Render event N (its index, as "
                     "the plan table, the picture and the plan JSON show it) again, with --caption, --duration, --seed or --reroll. Its head continues "
                     "the event before it; the next event's head is re-generated to continue it, the rest of that "
                     "clip kept.")] = None,
    vary: Annotated[Optional[int], typer.Option("--vary", metavar="N", min=0, help="A variation of event N: its "
                    "current latents noised to --strength and denoised again.")] = None,
    inpaint: Annotated[Optional[str], typer.Option("--inpaint", metavar="START:END", help="Regenerate the story "
                       "between START and END seconds (e.g. 12.5:15), everything outside kept; --caption says what "
                       "it should sound like [default: each event's own caption].")] = None,
    caption: Annotated[Optional[str], typer.Option("--caption", help="With --event or --inpaint: the new "
                       "caption.")] = None,
    duration: Annotated[Optional[float], typer.Option("--duration", help="With --event: its new length in seconds "
                        "(rounded to whole latent frames); what follows moves with it, unchanged.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help="The seed of the new clip [default: --event "
                    "keeps the event's seed; --vary and --inpaint draw a fresh one].")] = None,
    reroll: Annotated[bool, typer.Option("--reroll", help="With --event: a fresh seed (printed and saved).")] = False,
    strength: Annotated[Optional[float], typer.Option("--strength", help="With --vary: the noise level, > 0 and "
                        "<= 1 (0.2 a nuance, 1.0 a new clip).")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    plot: PlotOpt = False,
) -> None:
    """Change one thing in a rendered story: one event (--event), a variation of one (--vary), or a time range
    (--inpaint). Every sample outside the change and its joins is the old file's; the new plan records the edit,
    so `audiostory render` of it gives the same file. One change per run."""
    from ..editing import EventEdit, Inpaint, Vary, apply_edit, load_story
    from ..editing.operations import fresh_seed, resolve
    from ..editing.records import check_change
    from ..editing.stories import check_edit_output
    from ..run_setup import setup_run

    chosen = [name for name, value in (("--event", event), ("--vary", vary), ("--inpaint", inpaint)) if value is not None]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --event N, --vary N or --inpaint START:END (one change per run)",
                                 param_hint=" / ".join(chosen) or "'--event'")  # fmt: skip
    _only_with(strength is not None and vary is None, "--strength", "--vary")
    _only_with(vary is not None and strength is None, "--vary", "--strength S", needs=True)
    _only_with(duration is not None and event is None, "--duration", "--event")
    _only_with(reroll and event is None, "--reroll", "--event")
    _only_with(caption is not None and vary is not None, "--caption", "--event or --inpaint")
    if reroll and seed is not None:
        raise typer.BadParameter("--reroll draws a fresh seed: give it or --seed, not both", param_hint="'--reroll'")
    if event is not None and caption is None and duration is None and seed is None and not reroll:
        raise typer.BadParameter("nothing to change: add --caption, --duration, --seed or --reroll",
                                 param_hint="'--event'")  # fmt: skip
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise typer.BadParameter(f"{duration}: must be a number of seconds > 0", param_hint="'--duration'")
    span = _parse_range(inpaint) if inpaint is not None else None
    with errors():
        _check_plot(plot, output)
        loaded = load_story(story)
        if event is not None:
            change = EventEdit(event=event, caption=caption, duration_s=duration,
                               seed=fresh_seed() if reroll else seed)  # fmt: skip
        elif vary is not None:
            change = Vary(event=vary, strength=strength, seed=seed)
        else:
            change = Inpaint(start_s=span[0], end_s=span[1], caption=caption, seed=seed)
        check_change(change, loaded.plan.events, loaded.plan.total_s)  # before any model loads
        check_edit_output(loaded, output)
        setup = setup_run({}, saved=loaded.plan.render, output=output, device=device, dtype=dtype, notify=_notify)
        models = _load_models(setup, need_planner=False)
        change = resolve(change, loaded.plan, models.decoder)
        with ProgressView() as view:
            result = apply_edit(models.decoder, models.conditioner, loaded, change, setup.output, progress=view,
                                notify=_notify)  # fmt: skip
        stderr.print(_what_changed(change), soft_wrap=True)
        if plot:
            _plot_beside(result.plan, result.audio_path, over_audio=True)
        print_result(result, as_json)


@app.command()
def extend(
    story: StoryArg,
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="What happens next, e.g. 'then the gulls return "
                      "and the harbor wakes up'.")],
    output: OutputOpt,
    duration: Annotated[float, typer.Option("--duration", "-d", help="Seconds to add (the story may reach 600 in "
                        "all).", callback=check_duration)] = 30.0,
    planner: Annotated[Optional[str], typer.Option("--planner", help="The planner LLM [default: the one that "
                       "planned the story, as its plan records]." )] = None,
    planner_model: PlannerModelOpt = None,
    planner_engine: PlannerEngineOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    plot: PlotOpt = False,
) -> None:
    """Add to a rendered story: the planner sees its events and tone and plans only what follows; the first new
    clip continues the story's last one. The old part of the audio is unchanged to the sample."""
    from ..editing import extend_story, load_story
    from ..editing.records import check_extension
    from ..editing.stories import check_edit_output
    from ..run_setup import setup_run

    with errors():
        _check_plot(plot, output)
        loaded = load_story(story)
        check_extension(loaded.plan.total_s, duration)
        saved = loaded.plan.render
        given = {"planner": planner} if planner is not None else {}
        if saved.planner is None and planner is None and saved.model is None:
            raise InputError(f"{story} was written by hand: no planner is recorded", hint="give --planner")
        check_edit_output(loaded, output)
        setup = setup_run(given, saved=saved, output=output, device=device, dtype=dtype, notify=_notify)
        models = _load_models(setup, planner_model=planner_model, planner_engine=planner_engine)
        with ProgressView() as view:
            result = extend_story(models.planner, models.decoder, models.conditioner, loaded, prompt, duration,
                                  setup.output, progress=view, notify=_notify)  # fmt: skip
        if plot:
            _plot_beside(result.plan, result.audio_path, over_audio=True)
        print_result(result, as_json)


def _only_with(wrong: bool, option: str, other: str, *, needs: bool = False) -> None:
    if wrong:
        text = f"{option} needs {other}" if needs else f"{option} goes with {other} only"
        raise typer.BadParameter(text, param_hint=f"'{option.split()[0]}'")


def _parse_range(text: str) -> tuple[float, float]:
    """``START:END`` in seconds; a usage error otherwise."""
    parts = text.split(":")
    try:
        start, end = (float(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        start = end = None
    if start is None or not (math.isfinite(start) and math.isfinite(end)) or not 0 <= start < end:
        raise typer.BadParameter(f"{text!r}: must be START:END in seconds with 0 <= START < END, e.g. 12.5:15",
                                 param_hint="'--inpaint'")  # fmt: skip
    return start, end


def _what_changed(change) -> str:
    from ..editing.records import EventEdit, Inpaint

    if isinstance(change, EventEdit):
        parts = [f"caption {change.caption!r}" if change.caption is not None else "",
                 f"duration {change.duration_s:.3f} s" if change.duration_s is not None else "",
                 f"seed {change.seed}" if change.seed is not None else ""]  # fmt: skip
        return f"event {change.event}: " + ", ".join(p for p in parts if p)
    if isinstance(change, Inpaint):
        return f"inpainted {change.start_s:g}-{change.end_s:g} s with seed {change.seed}"
    return f"event {change.event} varied at strength {change.strength:g} with seed {change.seed}"
