"""Batch on one machine: one story per line of a prompts file, models loaded once, resumable.

Data flow: ``prompts file -> [BatchItem] -> [StoryTask] (file name, seed, recorded request) -> BatchRun (lock,
leftovers cleared, finished stories skipped) -> run_story per task (plan_task -> render_task -> audio + plan as a
pair) -> Record -> manifest.jsonl``. A bad line is reported and the rest go on. ``run_local`` plans the next
story on a thread while the decoder renders this one; ``batch.ray.run_on_ray`` runs the same ``run_story``
on Ray Data actors.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import audio_io
from ..checkpoints import DEFAULT_DECODER, default_planner
from ..editing.continuation import continue_from, told_prompt
from ..editing.records import ContinueFrom
from ..errors import AudiostoryError, InputError
from ..pipeline import StoryResult, plan_path_for, plan_story, render_plan, write_story
from ..run_setup import Notify, check_output_folder, resolve_hardware, story_request
from ..settings import RenderOptions
from ..story import Plan, Progress, ProgressFn, no_progress
from . import resume
from .manifest import ManifestWriter, Record, manifest_path, now_utc
from .prompts import BatchItem, safe_output_name

if TYPE_CHECKING:
    from ..conditioning.base import Conditioner
    from ..decoders.base import Decoder

@dataclass(frozen=True)
class BatchSettings:
    """What every line of one batch run shares; sent whole to each Ray actor, so plain values only."""

    outdir: Path  # the output folder (absolute: on a cluster, the same path on every node)
    options: RenderOptions  # render settings as given (None: the decoder's, device's own), model refs filled in
    default_duration_s: float  # length of a story whose line gives none
    max_events: int | None = None  # most events per story; None: enough for the duration (default_max_events)
    extension: str = ".wav"  # of the derived file names
    force: bool = False  # render finished stories again
    planner_model: str | None = None  # --planner-model (a model on a planner server): part of each recorded request


@dataclass(frozen=True)
class StoryTask:
    """One line of the prompts file, resolved: its file name, its seed, and the request its plan records."""

    line: int  # 1-based line number in the prompts file
    prompt: str  # the story prompt
    output: str | None  # file name inside the output folder; None when the line has no usable one
    total_s: float  # story length, seconds
    seed: int  # base seed of its clips
    tone: str | None  # the line's tone, if any
    request: dict  # what the plan records and a resumed run compares (resume.request_record)
    problem: str | None = None  # why the line cannot run; it is reported as failed
    continue_from: ContinueFrom | None = None  # the recording the story continues, read and hashed


@dataclass(frozen=True)
class BatchModels:
    """What a batch loads once (per process; per actor on Ray)."""

    planner: Any  # has .ref and .plan(request, progress=...)
    decoder: Decoder
    conditioner: Conditioner
    planner_free_render: bool  # rendering does not run the planner's LLM (no --bridge, no --model), so a planner
    #                            thread may plan the next story while the decoder renders this one
    device_type: str = "cpu"  # where the models run ("cuda", "mps", "cpu"): overlap pays only off the CPU


@dataclass(frozen=True)
class ModelSpec:
    """What a batch loads, as plain values: a local run loads it once, every Ray actor loads it once."""

    options: RenderOptions  # the model references (planner, decoder, bridge, model) and coherence
    device: str = "auto"  # --device: auto, cpu, cuda, mps
    dtype: str = "auto"  # --dtype: auto, fp32, fp16, bf16
    planner_model: str | None = None  # --planner-model: the model on a planner server (None: the first it lists)
    planner_engine: str | None = None  # --planner-engine (None: picked by the planner reference)


def with_default_refs(
    options: RenderOptions, *, device: str = "auto", planner_engine: str | None = None
) -> RenderOptions:  # fmt: skip
    """``options`` with the planner and decoder a run uses when none is named (not with --model, which
    brings its own), so a plan's recorded request names the models that made it. ``device``: the --device
    word, which picks the default planner with the installed engines (``checkpoints.default_planner``;
    "auto": this machine's device, decided once here for every process of the batch, Ray actors included)."""
    if options.model is not None:
        return options
    planner = options.planner
    if planner is None:
        from ..devices import resolve_device

        kind = resolve_device("auto").type if device == "auto" else device
        planner = default_planner(kind, "transformers" if options.bridge is not None else planner_engine)
    return replace(options, planner=planner, decoder=options.decoder or DEFAULT_DECODER)


def load_batch_models(spec: ModelSpec, *, notify: Notify | None = None) -> BatchModels:
    """Load the planner, decoder and conditioner ``spec`` names (or the AudioStory checkpoint, which brings
    all three), on the device and dtype it asks for (resolved here, per process: ``run_setup.resolve_hardware``)."""
    from ..registry import load_models

    device, dtype = resolve_hardware(spec.device, spec.dtype, notify=notify)
    options = spec.options
    models = load_models(options, device=device, dtype=dtype, planner_model=spec.planner_model,
                         planner_engine=spec.planner_engine)  # fmt: skip
    planner_free = options.model is None and options.bridge is None  # else rendering runs the planner's LLM
    return BatchModels(*models, planner_free_render=planner_free, device_type=device.type)


def make_tasks(items: Sequence[BatchItem], settings: BatchSettings) -> list[StoryTask]:
    """Every line as a task, in file order; two lines that would write one file is an error, up front."""
    tasks = []
    for index, item in enumerate(items):
        total_s = item.duration_s if item.duration_s is not None else settings.default_duration_s
        seed = item.seed if item.seed is not None else settings.options.seed
        problem, output, request, recording = item.problem, None, {}, None
        if problem is None:
            try:
                output = safe_output_name(item, index, settings.extension, settings.outdir)
                audio_io.check_extension(Path(output).suffix)
                extra: dict[str, Any] = {"planner_model": settings.planner_model} if settings.planner_model else {}
                if item.continue_from is not None:
                    recording = continue_from(item.continue_from, item.include_input)
                    extra["continue_from"] = recording.to_dict()
                request = resume.request_record(
                    prompt=item.prompt, duration_s=total_s, seed=seed, tone=item.tone,
                    max_events=settings.max_events, render=_request_render(replace(settings.options, seed=seed)),
                    **extra,
                )  # fmt: skip
            except AudiostoryError as err:
                problem = str(err)
        tasks.append(StoryTask(item.line, item.prompt, output, total_s, seed, item.tone, request, problem, recording))
    resume.check_unique_outputs([(t.line, t.output) for t in tasks if t.output is not None])
    return tasks


def _request_render(options: RenderOptions) -> dict:
    """The render settings a line's request records: all of them, but a batch size left to the device only
    when one was given (like the device itself; and so folders from before it was saved still resume)."""
    render = options.to_dict()
    if options.batch_size is None:
        del render["batch_size"]
    return render


# --- the per-story function: the same on one machine and on every Ray actor ------------------------------


def plan_task(models: BatchModels, task: StoryTask, settings: BatchSettings, progress: ProgressFn) -> Plan:
    """Step 1 of a story: the plan (the planner's LLM only)."""
    prompt = task.prompt if task.continue_from is None else told_prompt(task.prompt, task.continue_from)
    request = story_request(
        prompt, task.total_s, seed=task.seed, tone=task.tone, max_events=settings.max_events,
        window_s=models.decoder.caps.window_s, crossfade_s=settings.options.crossfade_s,
    )  # fmt: skip
    return plan_story(models.planner, request, progress=progress)


def render_task(
    models: BatchModels, task: StoryTask, plan: Plan, settings: BatchSettings, progress: ProgressFn
) -> StoryResult:
    """Step 2 of a story: render, mix, then commit audio and plan (with its request) as a pair."""
    output = settings.outdir / task.output
    options = replace(settings.options, seed=task.seed, planner=models.planner.ref)
    plan = plan if task.continue_from is None else replace(plan, continue_from=task.continue_from)
    done = render_plan(models.decoder, plan, options, models.conditioner, progress=progress)
    rendered = replace(plan.with_render(done.options), request=task.request)
    return write_story(
        output, plan_path_for(output), done.track, rendered, done.state,
        on_step=lambda done, what: progress(Progress("write", done, audio_io.STORY_WRITE_STEPS, what)),
    )  # fmt: skip


STORY_ERRORS = (AudiostoryError, OSError)  # what fails one story and not the batch: a user error, or the file
#   system refusing its files (ENOSPC, EACCES, ENAMETOOLONG, EIO) where audio_io did not already say so


def run_story(models: BatchModels, task: StoryTask, settings: BatchSettings, progress: ProgressFn, run: str) -> Record:
    """Plan and render one story; a user-fixable failure or a refused write becomes a failed record (the batch
    goes on), a bug propagates."""
    started = time.perf_counter()
    try:
        plan = plan_task(models, task, settings, progress)
        render_task(models, task, plan, settings, progress)
    except STORY_ERRORS as err:
        return _failed(task, err, time.perf_counter() - started, run)
    return _record(task, "ok", time.perf_counter() - started, run)


def _record(task: StoryTask, status: str, seconds: float, run: str, error: str | None = None) -> Record:
    return Record(task.line, task.prompt, task.output, status, round(seconds, 3), error, run, now_utc())


def _failed(task: StoryTask, err: BaseException | str, seconds: float, run: str) -> Record:
    """A failed record; its ``error`` is one line without "line N: " (the record has ``line``; the CLI adds it)."""
    return _record(task, "failed", seconds, run, error_line(err))


def error_line(err: BaseException | str) -> str:
    """The one line a failed record keeps: the message, or for a bare ``OSError`` what the system said."""
    if isinstance(err, OSError) and not isinstance(err, AudiostoryError):
        where = f" {err.filename}" if err.filename is not None else ""
        message = f"could not write{where}: {err.strerror or err}"
    else:
        message = str(err)
    return " ".join(message.split()) or type(err).__name__


# --- one run over a folder -----------------------------------------------------------------------------


def make_outdir(outdir: Path) -> None:
    """``run_setup.check_output_folder``, then create ``outdir``; every refusal is one user error."""
    check_output_folder(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the output folder {outdir}: {err.strerror or err}") from None



class BatchRun:
    """One run of a batch over its output folder: lock it, clear a killed run's leftovers, settle what is
    already finished, then render the rest (``run_local`` here, ``batch.ray.run_on_ray`` on a cluster).

    Use as a context manager; ``todo`` is known on entry, before any model loads, so a run with nothing left
    loads nothing. Every record goes to the manifest the moment it is known."""

    def __init__(self, tasks: Sequence[StoryTask], settings: BatchSettings, *, on_record: Callable[[Record], None]):
        self.tasks = list(tasks)
        self.settings = settings
        self.on_record = on_record
        self.run = f"{time.strftime('%Y-%m-%dT%H:%M:%S')}-{os.getpid()}"  # id in every record of this run
        self.records: dict[int, Record] = {}  # by line
        self.todo: list[StoryTask] = []  # tasks to render, in file order
        self.cleaned: list[Path] = []  # a killed run's temporary files, removed on entry
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> BatchRun:
        outdir = self.settings.outdir
        make_outdir(outdir)
        with self._stack as stack:
            stack.enter_context(resume.folder_lock(outdir))
            self._manifest = stack.enter_context(ManifestWriter(manifest_path(outdir)))
            self.cleaned = resume.clean_partials(outdir)
            for task in self.tasks:
                if task.problem is not None:
                    self.record(_failed(task, task.problem, 0.0, self.run))
                elif not self.settings.force and self.is_finished(task):
                    self.record(_record(task, "skipped", 0.0, self.run))
                else:
                    self.todo.append(task)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def is_finished(self, task: StoryTask) -> bool:
        audio = self.settings.outdir / task.output
        return resume.story_is_finished(audio, plan_path_for(audio), task.request)

    def record(self, record: Record) -> None:
        """Append to the manifest (durably), keep, and tell the caller."""
        self._manifest.append(record)
        self.records[record.line] = record
        self.on_record(record)

    def results(self) -> list[Record]:
        """This run's records in file order."""
        return [self.records[t.line] for t in self.tasks if t.line in self.records]


def run_local(
    batch: BatchRun, models: BatchModels, *, overlap: bool | None = None, progress: ProgressFn = no_progress
) -> list[Record]:
    """Render ``batch.todo`` in this process, in file order. ``overlap``: a planner thread plans the next
    story while the decoder renders this one, never where rendering runs the planner's LLM; None: only on a
    GPU (on a CPU both stages want the same cores, and planning ahead measured no faster: see
    benchmarks/batch_throughput.py). The samples are the same either way: planning is greedy and every clip
    draws from its own seeded generator. ``progress`` gets every story's reports, "line N: " in front."""
    pause = _test_pause_point()
    settings, run = batch.settings, batch.run

    def progress_for(line: int) -> ProgressFn:
        return _story_progress(progress, line, pause)

    if overlap is None:
        overlap = models.device_type == "cuda"
    if not (overlap and models.planner_free_render):
        for task in batch.todo:
            batch.record(run_story(models, task, settings, progress_for(task.line), run))
        return batch.results()
    for task, plan, planned_s, error in _planned_ahead(models, batch.todo, settings, progress_for):
        started = time.perf_counter()
        if error is None:
            try:
                render_task(models, task, plan, settings, progress_for(task.line))
            except STORY_ERRORS as err:
                error = err
        seconds = planned_s + time.perf_counter() - started
        batch.record(_record(task, "ok", seconds, run) if error is None else _failed(task, error, seconds, run))
    return batch.results()


_DONE = object()  # end of the planner thread's queue


def _planned_ahead(
    models: BatchModels, todo: Sequence[StoryTask], settings: BatchSettings, progress_for
) -> Iterator[tuple[StoryTask, Plan | None, float, BaseException | None]]:
    """(task, plan, seconds planning, error) in file order, planned by a thread that stays at most one plan
    ahead of the caller (a queue of depth 1: two plans in memory, never a growing backlog)."""
    plans: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                plans.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def planner_thread() -> None:
        try:
            for task in todo:
                started = time.perf_counter()
                try:
                    item = (task, plan_task(models, task, settings, progress_for(task.line)), None)
                except STORY_ERRORS as err:
                    item = (task, None, err)
                if not put((*item[:2], time.perf_counter() - started, item[2])):
                    return
        except BaseException as err:  # a bug: hand it to the caller's thread, which raises it
            put(err)
            return
        put(_DONE)

    thread = threading.Thread(target=planner_thread, name="audiostory-planner", daemon=True)
    thread.start()
    try:
        while (item := plans.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()
    finally:
        stop.set()  # the caller stopped early (an error, Ctrl-C): the thread ends at its next put


# --- progress, and the crash tests' pause point ----------------------------------------------------------

PAUSE_AT_ENV = "AUDIOSTORY_TEST_PAUSE_AT"  # tests only: "STAGE:LINE[:DONE]", e.g. "write:3:4" (see below)
PAUSE_FILE_ENV = "AUDIOSTORY_TEST_PAUSE_FILE"  # tests only: created when a run pauses there


def _test_pause_point() -> tuple[str, int, int | None, Path] | None:
    """The crash tests' pause point, read when a run starts (never at import)."""
    spec, flag = os.environ.get(PAUSE_AT_ENV), os.environ.get(PAUSE_FILE_ENV)
    if not spec or not flag:
        return None
    stage, line, *done = spec.split(":")
    return stage, int(line), int(done[0]) if done else None, Path(flag)


def _story_progress(progress: ProgressFn, line: int, pause) -> ProgressFn:
    """The progress of the story on ``line``: its reports to ``progress``, "line N: " in front.

    With a test pause point ("STAGE:LINE[:DONE]"), the thread making that report creates the flag file and
    then waits for good, so a crash test can SIGKILL the process at exactly that point of that story."""

    def report(event: Progress) -> None:
        progress(replace(event, message=f"line {line}: {event.message}" if event.message else f"line {line}"))
        if pause is not None and (event.stage, line) == pause[:2] and pause[2] in (None, event.done):
            pause[3].write_text(f"{event.stage}:{line}:{event.done}\n")
            threading.Event().wait()  # until the test kills the process

    return report
