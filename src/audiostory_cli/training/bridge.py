"""Semantic alignment, AudioStory's first training stage (``audiostory train-bridge``): planner hidden states ->
the decoder's text space.

Learned query embeddings are appended after a caption in the planner's input; the planner's last hidden
states at those positions go through a projector into the feature space of the decoder's text encoder
and are regressed onto the text encoder's states of the same caption, padded to one row per query (MSE +
1 - cosine over every row). Only the queries and the projector learn; the planner and the decoder stay
frozen. The adapter itself, and how generation uses it, is ``conditioning/trained_bridge.py``.

Every file is written to a temporary name and renamed, so an interrupted run keeps its last checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .. import story
from ..audio_io import atomic_write
from ..checkpoints import canonical_ref
from ..conditioning.trained_bridge import (
    CONFIG_FILE,
    FORMAT_VERSION,
    STATE_FILE,
    WEIGHTS_FILE,
    BridgeAdapter,
    BridgeConfig,
    query_states,
)
from ..errors import InputError, ModelLoadError
from ..story import Progress, ProgressFn, no_progress

if TYPE_CHECKING:
    from ..decoders.base import Decoder
    from ..planners.transformers import TransformersPlanner as Planner  # the bridge reads its hidden states


# --- captions --------------------------------------------------------------------------------------------


def read_captions(source: str | Path) -> list[str]:
    """Captions from a text file (one a line; blank lines and ``#`` lines skipped) or a folder of plan JSON
    files (every ``events[].caption`` of every ``*.json``, files in name order)."""
    source = Path(source)
    if source.is_dir():
        captions = []
        for path in sorted(source.glob("*.json")):
            captions += [event.caption for event in story.load_plan(path).events]
        what = f"no captions in {source}: it holds no plan files (*.json)"
    elif source.is_file():
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read captions file {source}: {err}") from None
        captions = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        what = f"no captions in {source}: every line is blank or a # comment"
    else:
        raise InputError(f"captions file or folder not found: {source}")
    if not captions:
        raise InputError(what, hint="give a text file with one caption a line, or a folder of plan files")
    return captions


# --- training --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What a training run did; the loss lists start at step 1, resumed runs included."""

    losses: list[float]  # total loss (mse + cosine) of every step
    mse: list[float]  # its masked-MSE part
    cosine: list[float]  # its (1 - cosine similarity) part
    steps_done: int  # steps trained in all, resumed runs included
    seconds_per_step: float  # mean wall time of the steps this call ran, checkpoints included (0 if none)
    out_dir: Path  # the folder holding the adapter and train_state.pt


def alignment_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked MSE, 1 - cosine similarity), each averaged over the real target rows (``mask`` [B, n_queries])."""
    weights = mask.to(pred.dtype)
    rows = weights.sum().clamp(min=1)
    mse = (((pred - target) ** 2).mean(dim=-1) * weights).sum() / rows
    cosine = ((1 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)) * weights).sum() / rows
    return mse, cosine


def _has_checkpoint(folder: Path) -> bool:
    return any((folder / name).exists() for name in (WEIGHTS_FILE, CONFIG_FILE, STATE_FILE))


def train_bridge(
    planner: Planner,
    decoder: Decoder,
    captions: list[str],
    out_dir: str | Path,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    save_every: int = 100,
    resume: bool = False,
    seed: int = 0,
    n_queries: int | None = None,
    projector_hidden: int | None = None,
    progress: ProgressFn = no_progress,
) -> TrainResult:
    """Train the queries and projector for ``steps`` steps in all (a resumed run counts the steps already
    done); checkpoint every ``save_every`` steps and at the end into ``out_dir``.

    ``n_queries`` and ``projector_hidden`` default to ``BridgeConfig``'s (or, with ``resume``, to the saved
    ones). Each step trains on ``min(batch_size, len(captions))`` distinct captions drawn by a generator
    seeded with ``seed``, whose state is checkpointed, so 20 + 20 resumed steps equal 40 straight ones.
    ``lr`` applies from the first step of this call, a resumed one included.
    """
    # 1. Check inputs; freeze the models.
    _check_train_args(captions, steps, batch_size, lr, save_every, seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder {out_dir} is a file", hint="give a folder for the bridge")
    decoder_modules = [m for m in vars(decoder).values() if isinstance(m, torch.nn.Module)]  # any backend's
    for module in (planner.model, *decoder_modules):
        module.requires_grad_(False)
    device = planner.model.get_input_embeddings().weight.device

    # 2. The config: new, or the checkpoint's (which must match what was given).
    wanted = {
        "llm_hidden": planner.model.config.hidden_size,
        "text_dim": decoder.caps.text_width,
        "planner": canonical_ref(planner.ref),
        "decoder": canonical_ref(decoder.ref),
    }
    sizes = {k: v for k, v in (("n_queries", n_queries), ("projector_hidden", projector_hidden)) if v is not None}
    state = _resume_state(out_dir, {**wanted, **sizes}) if resume else None
    if state is None and _has_checkpoint(out_dir):
        raise InputError(
            f"{out_dir} already holds a bridge checkpoint",
            hint="pass --resume to continue it, or choose another folder",
        )
    config = BridgeConfig.from_dict(state["config"]) if state else BridgeConfig(**wanted, **sizes)

    # 3. Adapter, optimizer and generator: fresh from ``seed``, or as checkpointed.
    generator = torch.Generator().manual_seed(seed)
    table = planner.model.get_input_embeddings().weight
    query_std = float(table[:: max(1, table.shape[0] // 4096)].float().std())  # the token embeddings' scale
    adapter = BridgeAdapter(config, generator=generator, query_std=query_std).to(device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr)
    history: dict[str, list[float]] = {"loss": [], "mse": [], "cosine": []}
    step = 0
    if state:
        adapter.load_state_dict(state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history, step = {k: list(v) for k, v in state["history"].items()}, state["step"]
        for group in optimizer.param_groups:
            group["lr"] = lr
    if step >= steps:
        raise InputError(f"{out_dir} already holds {step} steps: --steps {steps} leaves nothing to train",
                         hint=f"pass --steps larger than {step}")  # fmt: skip

    # 4. Targets: the T5 states of every caption, once, cut to n_queries rows.
    targets = _targets(decoder, captions, config.n_queries, device, progress)

    # 5. The loop: sample, forward through the frozen planner, regress, step, checkpoint.
    adapter.train()
    started, first_step = time.perf_counter(), step
    while step < steps:
        picks = torch.randperm(len(captions), generator=generator)[:batch_size].tolist()
        target, mask = _stack_targets([targets[captions[i]] for i in picks], config.n_queries, device)
        mse, cosine = alignment_loss(query_states(adapter, planner, [captions[i] for i in picks]), target, mask)
        loss = mse + cosine
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        values = {"loss": float(loss.detach()), "mse": float(mse.detach()), "cosine": float(cosine.detach())}
        for key, value in values.items():
            history[key].append(value)
        message = f"loss {values['loss']:.4f} (mse {values['mse']:.4f}, 1-cos {values['cosine']:.4f})"
        progress(Progress("train", step, steps, message))
        if step % save_every == 0 or step == steps:
            _save_checkpoint(out_dir, adapter, optimizer, generator, step, history)
    seconds = (time.perf_counter() - started) / max(1, step - first_step)
    return TrainResult(history["loss"], history["mse"], history["cosine"], step, seconds, out_dir)


def _check_train_args(captions: list[str], steps: int, batch_size: int, lr: float, save_every: int, seed: int) -> None:
    if not captions:
        raise InputError("no captions to train on", hint="give a text file with one caption a line")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("save_every", save_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} = {value!r}: must be an integer >= 1")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= 1):
        raise InputError(f"lr = {lr!r}: must be > 0 and <= 1")
    story.check_seed(seed)


def _resume_state(out_dir: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint in ``out_dir``, checked against the config values given for this run."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise InputError(f"nothing to resume: {out_dir} holds no {STATE_FILE}",
                         hint="train without --resume to start a new bridge")  # fmt: skip
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged file is one clear message
        raise ModelLoadError(f"cannot read {path}: {err}") from None
    keys = {"format_version", "config", "adapter", "optimizer", "generator", "step", "history"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise ModelLoadError(f"{path} is not an audiostory bridge training state")
    if state["format_version"] != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: format_version = {state['format_version']!r}: this audiostory reads "
                             f"version {FORMAT_VERSION}")  # fmt: skip
    saved = BridgeConfig.from_dict(state["config"], str(path))
    differs = [f"{k}: saved {getattr(saved, k)!r}, now {v!r}" for k, v in given.items() if getattr(saved, k) != v]
    if differs:
        raise InputError(
            f"cannot resume {out_dir}: its config differs ({'; '.join(differs)})",
            hint="resume with the same planner, decoder and sizes, or train in another folder",
        )
    return state


def _targets(decoder: Decoder, captions: list[str], n_queries: int, device, progress: ProgressFn) -> dict:
    """caption -> its T5 states padded to [n_queries, text_dim] (float32 on ``device``), each encoded once.

    Every query row has a target: the caption's token states, then T5's own states of padding, so the rows
    past the caption (which the decoder attends to as well) learn what padding looks like to it."""
    unique = list(dict.fromkeys(captions))
    targets = {}
    for i, caption in enumerate(unique):
        progress(Progress("targets", i, len(unique), "T5 states of the captions"))
        states = decoder.encode_text(caption, pad_to=n_queries).states
        targets[caption] = states.to(device, torch.float32).clone()  # clone: a normal tensor, not an inference one
    progress(Progress("targets", len(unique), len(unique), "T5 states of the captions"))
    return targets


def _stack_targets(rows: list[torch.Tensor], n_queries: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad each target to ``n_queries`` rows: targets [B, n_queries, D], real-row mask [B, n_queries]."""
    target = torch.zeros(len(rows), n_queries, rows[0].shape[-1], device=device)
    mask = torch.zeros(len(rows), n_queries, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        target[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = True
    return target, mask


def _save_checkpoint(out_dir: Path, adapter, optimizer, generator, step: int, history) -> None:
    """``train_state.pt`` first (it holds the adapter too, so a resume is consistent even if the run stops
    between the files), then the adapter files. Each write is atomic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": FORMAT_VERSION,
        "config": asdict(adapter.config),
        "adapter": {k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "step": step,
        "history": {k: list(v) for k, v in history.items()},
    }
    atomic_write(out_dir / STATE_FILE, lambda file: torch.save(state, file))
    adapter.save(out_dir)


