"""What the studio page does, as plain calls into the library: plan, render, pictures, the table <-> plan, event
audio, versions and their undo history, and the edits (the ``editing`` operations). No Gradio here: ``app.py``
wires these to the page, the tests call them directly too.

One ``Studio`` per process holds the models (loaded once, on first use) and serves every browser session; a
lock lets one model call run at a time (the page's queue already does; the lock keeps the library safe for any
other caller). A run is set up by ``run_setup.setup_run`` exactly as the CLI's (``cli/studio.py``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import numpy as np

from .. import audio_io, mix
from ..errors import InputError, PlanError
from ..pipeline import StoryResult, plan_story, render_to_file
from ..settings import RenderOptions, merge_options
from ..story import Event, Plan, Progress, ProgressFn, check_prompt, check_total_s, load_plan
from ..story import event_seed as story_event_seed
from ..story import no_progress, plan_from_dict, plan_to_dict
from .files import StudioFolder, Version

if TYPE_CHECKING:
    from ..registry import Models
    from ..run_setup import RunSetup

TABLE_HEADERS = ("#", "caption", "start (s)", "duration (s)", "layer", "seed")  # the plan as the page's table
TABLE_TYPES = ("number", "str", "number", "number", "number", "str")  # seeds are 64-bit: text, not a JS float
MODEL_FIELDS = ("decoder", "model", "bridge")  # what the process renders with: a plan's saved value is not used
#   (the planner is the plan's own record of who wrote it, kept)


class History:
    """The versions one browser session made or loaded, oldest first; the last is the one shown (Gradio gives
    each session its own copy)."""

    def __init__(self) -> None:
        self.versions: list[Version] = []

    @property
    def current(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    def push(self, version: Version) -> None:
        self.versions.append(version)

    def undo(self) -> Version:
        """Back to the version before the current one (its files stay in the folder)."""
        if len(self.versions) < 2:
            raise InputError("nothing to undo: this is the first version made or loaded on this page")
        self.versions.pop()
        return self.versions[-1]


class Studio:
    """The models and the output folder shared by every session of one ``audiostory studio`` process."""

    def __init__(self, setup: RunSetup, given: dict[str, Any], folder: StudioFolder, *,
                 planner_model: str | None = None, planner_engine: str | None = None,
                 status: Callable[[str], ContextManager] | None = None) -> None:  # fmt: skip
        self.setup = setup  # from run_setup.setup_run: merged options, decoder caps, device, dtype
        self.given = given  # the RenderOptions fields from the command line (None: not given)
        self.folder = folder
        self.planner_model = planner_model
        self.planner_engine = planner_engine
        self._status = status  # a context around each model load (the CLI: a line on stderr)
        self._models: Models | None = None
        self._lock = threading.Lock()  # one model call at a time: the models are shared

    # --- models ----------------------------------------------------------------------------------------------

    def references(self) -> dict[str, str]:
        """The planner and decoder this process serves, as the user named them (defaults filled in)."""
        from ..checkpoints import DEFAULT_DECODER, default_planner

        options = self.setup.options
        if options.model is not None:
            return {"planner": f"{options.model} (its own)", "decoder": f"{options.model} (its own)"}
        engine = "transformers" if options.bridge is not None else self.planner_engine
        planner = options.planner or default_planner(self.setup.device, engine)
        return {"planner": planner, "decoder": options.decoder or DEFAULT_DECODER}

    def models(self) -> Models:
        """The planner, decoder and conditioner, loaded on first use and then kept (call under ``self._lock``)."""
        if self._models is None:
            from ..registry import load_models

            self._models = load_models(self.setup.options, device=self.setup.device, dtype=self.setup.dtype,
                                       planner_model=self.planner_model, planner_engine=self.planner_engine,
                                       status=self._status)  # fmt: skip
        return self._models

    # --- plan and render -------------------------------------------------------------------------------------

    def plan(self, prompt: str, duration_s: float, tone: str | None = None, *,
             progress: ProgressFn = no_progress) -> Plan:  # fmt: skip
        """Plan a story (nothing is written): the page shows it as a table to edit before rendering. The plan's
        ``render`` holds the options it will be rendered with (seed, the planner used)."""
        prompt = (prompt or "").strip()
        check_prompt(prompt)
        check_total_s(duration_s)
        tone = (tone or "").strip() or None
        with self._lock:
            models = self.models()
            window_s = self.setup.caps.window_s if self.setup.caps is not None else models.decoder.caps.window_s
            request = self.setup.story_request(prompt, duration_s, tone=tone, window_s=window_s)
            plan = plan_story(models.planner, request, progress=progress)
        return plan.with_render(replace(self.setup.options, seed=request.seed, planner=models.planner.ref))

    def options_for(self, plan: Plan) -> RenderOptions:
        """What ``plan`` renders with: the command line's values, then the plan's saved ones, then the defaults;
        the models always this process's."""
        options = merge_options(plan.render, **self.given)
        return replace(options, **{name: getattr(self.setup.options, name) for name in MODEL_FIELDS})

    def render(self, plan: Plan, *, progress: ProgressFn = no_progress) -> Version:
        """Render ``plan`` into the next version's files (audio, plan beside it, picture) in the folder."""
        options = self.options_for(plan)
        with self._lock:
            models = self.models()
            version = self.folder.next_version()
            result = render_to_file(models.decoder, plan, options, models.conditioner, version.audio_path,
                                    progress=progress)  # fmt: skip
        return self._drawn(version, result)

    def _drawn(self, version: Version, result: StoryResult) -> Version:
        """The version, once its picture (over its audio) is beside it."""
        from ..plot import read_story_audio, write_plot

        if result.audio_path != version.audio_path:
            raise RuntimeError(f"the library wrote {result.audio_path}, not {version.audio_path}")
        write_plot(result.plan, version.picture_path, audio=read_story_audio(result.audio_path, result.plan))
        return version

    def plan_picture(self, plan: Plan) -> bytes:
        """The plan alone as a PNG (before it is rendered)."""
        from ..plot import plot_bytes

        return plot_bytes(plan, "png")

    # --- the folder ------------------------------------------------------------------------------------------

    def load(self, name: str) -> tuple[Version | None, Plan]:
        """A plan file in the folder (chosen on the page), with the audio beside it as a version to start from;
        without audio, the plan alone (None), to render."""
        from ..plot import find_audio, read_story_audio, write_plot

        plan_path = self.folder.inside(name, "plan file")
        if not plan_path.name.endswith(".plan.json"):
            raise InputError(f"{plan_path.name} is not a plan file (*.plan.json)")
        plan = load_plan(plan_path)
        audio_path = find_audio(plan_path)
        if audio_path is None:
            return None, plan
        audio_path = self.folder.inside(audio_path, "audio file")
        audio = read_story_audio(audio_path, plan)  # the right length, or one clear line
        picture = self.folder.inside(plan_path.name[: -len(".plan.json")] + ".png", "picture")
        write_plot(plan, picture, audio=audio)
        return Version(0, audio_path, plan_path, picture), plan

    def read_version(self, version: Version) -> Plan:
        return load_plan(self.folder.inside(version.plan_path, "plan file"))

    def event_audio(self, version: Version, event: int) -> tuple[int, np.ndarray]:
        """One event's span cut from the version's audio: (sample rate, 16-bit samples [T, channels]); 16-bit, as
        Gradio would scale float samples to their own peak, and the event should sound as loud as in the story."""
        plan = self.read_version(version)
        _check_event(plan, event)
        wave, sample_rate = audio_io.read_audio(self.folder.inside(version.audio_path, "audio file"))
        start, end = mix.event_spans(plan, sample_rate)[event]
        samples = np.clip(wave[:, start:end].T, -1.0, 1.0) * np.iinfo(np.int16).max
        return sample_rate, np.ascontiguousarray(np.round(samples).astype(np.int16))

    # --- edits: the editing library (``audiostory_cli.editing``) ---------------------------------------------

    def reroll(self, version: Version, event: int, *, progress: ProgressFn = no_progress) -> Version:
        """Event ``event`` (the plan's 0-based index) again with a new seed, everything else kept."""
        from .. import editing

        return self._edit(version, lambda: editing.EventEdit(event=event, reroll=True), event, progress)

    def vary(self, version: Version, event: int, strength: float, *, progress: ProgressFn = no_progress) -> Version:
        """A variation of event ``event`` (``strength`` in (0, 1]: 0.1 a nuance, 1 a new take)."""
        from .. import editing

        return self._edit(version, lambda: editing.Vary(event=event, strength=strength), event, progress)

    def recaption(self, version: Version, event: int, caption: str, *,
                  progress: ProgressFn = no_progress) -> Version:  # fmt: skip
        """Event ``event`` re-rendered with a new caption, everything else kept."""
        from .. import editing

        caption = (caption or "").strip()
        if not caption:
            raise InputError("the new caption is empty", hint="say what is heard in this event")
        return self._edit(version, lambda: editing.EventEdit(event=event, caption=caption), event, progress)

    def extend(self, version: Version, prompt: str, duration_s: float, *,
               progress: ProgressFn = no_progress) -> Version:  # fmt: skip
        """The story continued by ``duration_s`` seconds of what ``prompt`` says happens next."""
        from .. import editing

        prompt = (prompt or "").strip()
        check_prompt(prompt)
        check_total_s(duration_s)
        with self._lock:
            models = self.models()
            story = self._story(version)
            out = self.folder.next_version()
            result = editing.extend_story(models.planner, models.decoder, models.conditioner, story, prompt,
                                          duration_s, out.audio_path, progress=progress,
                                          notify=_told(progress))  # fmt: skip
        return self._drawn(out, result)

    def _edit(self, version: Version, change: Callable[[], Any], event: int, progress: ProgressFn) -> Version:
        from .. import editing

        with self._lock:
            models = self.models()
            story = self._story(version)
            _check_event(story.plan, event)
            out = self.folder.next_version()
            result = editing.apply_edit(models.decoder, models.conditioner, story, change(), out.audio_path,
                                        progress=progress, notify=_told(progress))  # fmt: skip
        return self._drawn(out, result)

    def _story(self, version: Version):
        """The version as the editing library reads it: plan, audio and latents. Each version's
        ``story-NNN.latents.safetensors`` lies beside its plan, so an edit after an undo or a load starts from
        that version's latents rather than rendering it again."""
        from .. import editing

        return editing.load_story(self.folder.inside(version.plan_path, "plan file"))


def _told(progress: ProgressFn) -> Callable[[str], None]:
    """The editing library's notes (a version without its latents renders again first) as progress reports, so
    the page's bar says why an edit takes longer."""
    return lambda line: progress(Progress("load", 0, 0, line))


# --- the plan as a table ---------------------------------------------------------------------------------------


def event_seed(plan: Plan, event: Event) -> int:
    """The seed event ``event``'s clip renders with: its own (``Event.seed``), else derived from the story's."""
    return story_event_seed(event, plan.render.seed if plan.render is not None else RenderOptions().seed)


def plan_rows(plan: Plan) -> list[list[Any]]:
    """The page's table: one row an event, ``TABLE_HEADERS`` columns."""
    return [[e.index, e.caption, e.start_s, e.duration_s, e.layer, str(event_seed(plan, e))] for e in plan.events]


def plan_from_rows(plan: Plan, rows: list[list[Any]]) -> Plan:
    """``plan`` with the table's edits (captions, times, layers, seeds; rows added or removed), checked by the
    plan's own validation (``story.plan_from_dict``): a ``PlanError`` naming the event and the field otherwise. A
    seed typed into the table becomes the event's own ``seed``; an empty cell leaves the event's seed as it was."""
    data = plan_to_dict(plan)
    old = {e.index: e for e in plan.events}
    events = []
    for row_number, row in enumerate(rows or []):
        row = list(row) + [None] * (len(TABLE_HEADERS) - len(row))
        _, caption, start_s, duration_s, layer, seed = row[: len(TABLE_HEADERS)]
        where = f"event {row_number}"
        raw = dict(data["events"][row_number]) if row_number < len(data["events"]) else {}
        raw.update(index=row_number, caption="" if caption is None else str(caption),
                   start_s=_cell_number(start_s, where, "start_s"), duration_s=_cell_number(duration_s, where,
                   "duration_s"), layer=_cell_int(layer, where, "layer"))  # fmt: skip
        before = old.get(row_number)
        shown_seed = None if before is None else str(event_seed(plan, before))
        if _cell_text(seed) not in ("", shown_seed):  # a seed typed in: the event's own (empty: as it was)
            raw["seed"] = _cell_seed(seed, where)
        events.append(raw)
    if events != data["events"]:  # a table edit plans the story anew: no earlier edits to replay
        data.pop("history", None)
    data["events"] = events
    try:
        return plan_from_dict(data)
    except PlanError as err:
        raise PlanError(f"the table: {err}") from None


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _cell_number(value: Any, where: str, name: str) -> float:
    text = _cell_text(value)
    try:
        number = float(text)
    except ValueError:
        raise PlanError(f"{where}: {name} = {text[:40]!r} is not a number of seconds") from None
    if not math.isfinite(number):
        raise PlanError(f"{where}: {name} = {text[:40]!r} is not a finite number of seconds")
    return number


def _cell_int(value: Any, where: str, name: str) -> int:
    text = _cell_text(value)
    try:
        number = float(text)
    except ValueError:
        raise PlanError(f"{where}: {name} = {text[:40]!r} is not a whole number") from None
    if not number.is_integer():
        raise PlanError(f"{where}: {name} = {text[:40]!r} is not a whole number")
    return int(number)


def _cell_seed(value: Any, where: str) -> int:
    """A seed cell as an exact integer (seeds are 64-bit: no float on the way); its range is the plan's check."""
    text = _cell_text(value)
    try:
        return int(text)
    except ValueError:
        raise PlanError(f"{where}: seed = {text[:40]!r} is not a whole number") from None


def _check_event(plan: Plan, event: int) -> None:
    if not 0 <= event < len(plan.events):
        raise InputError(f"event {event}: this story has events 0 to {len(plan.events) - 1}")


def progress_fraction(report: Progress, state: dict) -> tuple[float | None, str]:
    """A library progress report as (fraction of the whole render, what it is doing) for a progress bar: clips
    done plus the denoising steps of the clip under way, over the clips in all."""
    if report.stage == "render":
        state["clips"], state["total"] = report.done, max(report.total, 1)
        state["step"] = 0.0
    elif report.stage == "step" and report.total:
        state["step"] = report.done / report.total
    total = state.get("total")
    if report.stage in ("render", "step") and total:
        clip = min(state["clips"] + 1, total)
        fraction = min((state["clips"] + state.get("step", 0.0)) / total, 1.0)
        what = f"clip {clip}/{total}" + (f", step {report.done}/{report.total}" if report.stage == "step" else "")
        return fraction, what
    labels = {"plan": "planning", "mix": "mixing", "write": "writing", "load": "loading"}
    return None, labels.get(report.stage, report.stage) + (f": {report.message}" if report.message else "")
