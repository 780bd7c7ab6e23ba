"""Batch runs on a Ray cluster (``--ray auto|local|ADDRESS``), through Ray Data; the optional ``ray`` extra.

Data flow: ``BatchRun.todo -> ray.data.from_items -> map_batches(StoryActor, one row per call) -> records
-> manifest``. Each actor loads the models once (``StoryActor.__init__``) and runs ``local.run_story``, the
same per-story function as a local run, so the same seeds give the same samples. One actor per GPU the
cluster has (``num_gpus=1``); with no GPU, one CPU actor per node, holding that node's CPUs. Actors write into
the output folder themselves, so every node must see it at the same path (a shared file system); the driver
(this process) settles resume, appends the manifest as each record streams back, and cleans up, exactly as
``run_local`` does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from .. import errors
from ..errors import AudiostoryError, InputError
from .local import BatchModels, BatchRun, BatchSettings, ModelSpec, StoryTask, load_batch_models, run_story
from .manifest import Record

RAY_EXTRA_HINT = 'install it with `pip install "audiostory-cli[ray]"`'
RAY_MODES = ("auto", "local")  # --ray: an existing cluster (RAY_ADDRESS or a `ray start` on this machine), a new
#                                local one; anything else is a cluster address (host:6379 or ray://host:10001)


@dataclass(frozen=True)
class ActorPlan:
    """How many story actors, and what each reserves."""

    actors: int  # size of the fixed actor pool
    num_gpus: float  # per actor: 1 on GPU clusters, else 0
    num_cpus: float  # per actor: 1 with a GPU; the smallest node's CPUs without
    device: str  # what each actor loads its models on: "cuda" (Ray's CUDA_VISIBLE_DEVICES picks its GPU) or "cpu"


def import_ray():
    """The ``ray`` package with its Data library, or one line naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is in ray[data], not in bare ray)
    except ImportError:
        raise InputError("--ray needs Ray Data, which is not installed", hint=RAY_EXTRA_HINT) from None
    return ray


def connect(ray, address: str) -> None:
    """Join the cluster ``address`` names (``auto``, ``local`` or an address); a miss says how to start one."""
    try:
        # log_to_driver off: actors draw nothing, and their errors come back as exceptions (``_user_error``)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    except ConnectionError as err:
        hint = "start one with `ray start --head`, set RAY_ADDRESS, or use --ray local" if address == "auto" else (
            "check the address (host:6379, or ray://host:10001 for Ray Client) and that the cluster is up")
        raise InputError(f"--ray {address}: no Ray cluster there ({err})", hint=hint) from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines would bury our records


def actor_plan(cluster: dict[str, float], nodes: list[dict], device: str, stories: int) -> ActorPlan:
    """One actor per GPU Ray sees; with none, one CPU actor per alive node. Never more actors than stories.

    ``device``: the --device asked for ("auto", "cuda", "cpu", ...); "cuda" on a cluster without GPUs is refused."""
    gpus = int(cluster.get("GPU", 0))
    if gpus and device in ("auto", "cuda"):
        return ActorPlan(actors=max(1, min(gpus, stories)), num_gpus=1, num_cpus=1, device="cuda")
    if device == "cuda":
        raise InputError("--device cuda, but the Ray cluster has no GPU", hint="use --device auto or cpu")
    cpus = [node["Resources"].get("CPU", 0) for node in nodes if node.get("Alive") and node["Resources"].get("CPU")]
    if not cpus:
        raise InputError("the Ray cluster has no CPU to run on", hint="check `ray status`")
    return ActorPlan(actors=max(1, min(len(cpus), stories)), num_gpus=0, num_cpus=min(cpus), device="cpu")


class StoryActor:
    """A Ray Data worker: models loaded once in ``__init__``, then one story per call.

    A user-fixable load failure (a model not found) is kept and handed back with every row as ``fatal``, so the
    driver stops with that one message rather than Ray's actor-death tracebacks."""

    def __init__(self, spec: ModelSpec, settings: BatchSettings, run: str) -> None:
        self.settings = settings
        self.run = run
        self.models: BatchModels | None = None
        self.fatal = ""
        try:
            self.models = load_batch_models(spec)
        except AudiostoryError as err:
            self.fatal = json.dumps({"kind": type(err).__name__, "message": err.args[0], "hint": err.hint})

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        records = []
        for raw in batch["task"]:
            if self.models is not None:
                task = StoryTask(**json.loads(raw))
                records.append(run_story(self.models, task, self.settings, _no_progress, self.run).to_json())
        return {"record": records or [""] * len(batch["task"]), "fatal": [self.fatal] * len(batch["task"])}


def _no_progress(_report) -> None:
    """Actors draw nothing: the driver reports each story as its record comes back."""


def run_on_ray(
    batch: BatchRun, spec: ModelSpec, address: str, *, on_start: Callable[[ActorPlan], None] = lambda plan: None
) -> list[Record]:
    """Render ``batch.todo`` on the Ray cluster at ``address``; records stream back in the order stories end
    and go to the manifest at once. ``spec.device`` decides GPU or CPU actors (see ``actor_plan``)."""
    if not batch.todo:
        return batch.results()
    ray = import_ray()
    connect(ray, address)
    try:
        # 1. The actor pool the cluster allows.
        plan = actor_plan(ray.cluster_resources(), ray.nodes(), spec.device, len(batch.todo))
        on_start(plan)
        actor_spec = replace(spec, device=plan.device)
        # 2. One row (one block) per story, so an idle actor always takes the next story.
        stories = ray.data.from_items(
            [{"task": json.dumps(asdict(task))} for task in batch.todo], override_num_blocks=len(batch.todo)
        )
        # 3. Every actor loads the models once and runs the local per-story function.
        records = stories.map_batches(
            StoryActor,
            fn_constructor_kwargs={"spec": actor_spec, "settings": batch.settings, "run": batch.run},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_gpus=plan.num_gpus,
            num_cpus=plan.num_cpus,
        )
        # 4. Each record to the manifest as it arrives (streaming execution: the order stories end).
        for row in records.iter_rows():
            if row["fatal"]:
                raise _actor_error(json.loads(row["fatal"]))
            batch.record(Record(**json.loads(row["record"])))
    finally:
        ray.shutdown()
    return batch.results()


def _actor_error(fatal: dict[str, Any]) -> AudiostoryError:
    """The error an actor could not load its models with, as the same exception class, said once."""
    kind = getattr(errors, fatal["kind"], AudiostoryError)
    kind = kind if isinstance(kind, type) and issubclass(kind, AudiostoryError) else AudiostoryError
    return kind(f"on a Ray actor: {fatal['message']}", hint=fatal["hint"])

