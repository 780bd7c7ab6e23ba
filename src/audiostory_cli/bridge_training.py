"""Semantic alignment, AudioStory's first training stage: planner hidden states -> the decoder's T5 space.

Learned query embeddings are appended after a caption in the planner's input; the planner's last hidden
states at those positions go through a projector into the feature space of the decoder's T5 text encoder
and are regressed onto the T5 states of the same caption, padded to one row per query (MSE + 1 - cosine
over every row). Only the queries and the projector learn; the planner and the decoder stay frozen.

    caption -> chat template -> token embeddings + queries -> planner (frozen) -> last hidden states at the
    query positions -> projector -> [n_queries, text_dim]  ~  decoder.encode_text(caption, pad_to=n_queries)

One folder holds a bridge: ``bridge.safetensors`` (queries + projector), ``bridge_config.json``
(``BridgeConfig``) and, while training, ``train_state.pt`` (adapter, optimizer, step, generator, losses).
Every file is written to a temporary name and renamed, so an interrupted run keeps its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from . import story
from .audio_io import atomic_write
from .decoder import TextTokens, strict_load
from .errors import InputError, ModelLoadError, ModelNotFoundError
from .story import Progress, ProgressFn, no_progress

if TYPE_CHECKING:
    from .decoder import Decoder
    from .planner import Planner

FORMAT_VERSION = 1  # layout of a bridge folder; other versions are refused with a message
WEIGHTS_FILE = "bridge.safetensors"  # queries + projector, float32
CONFIG_FILE = "bridge_config.json"  # BridgeConfig as JSON
STATE_FILE = "train_state.pt"  # what --resume needs: adapter, optimizer, step, generator, loss history
SYSTEM_MESSAGE = "You are a sound designer. You describe sounds."  # short: the default system prompts are long
USER_MESSAGE = "Describe the sound: {caption}"  # the user turn; the queries follow the assistant header


@dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    """Sizes of a bridge and the models it was trained between; saved as ``bridge_config.json``."""

    n_queries: int = 32  # learned query embeddings appended after the caption = rows of the bridge's output
    llm_hidden: int  # hidden size of the planner LLM: width of a query embedding and of the projector's input
    text_dim: int  # d_model of the decoder's T5 text encoder: width of the output rows
    projector_hidden: int = 1024  # width of the projector's middle layer
    planner: str  # reference of the planner it was trained with (absolute path when it was a local one)
    decoder: str  # reference of the decoder whose T5 features it was trained to match
    max_caption_tokens: int = 64  # captions are cut to this many planner tokens before the queries
    format_version: int = FORMAT_VERSION  # layout of the files on disk

    def __post_init__(self) -> None:
        for name in ("n_queries", "llm_hidden", "text_dim", "projector_hidden", "max_caption_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} = {value!r}: must be a positive integer")
        if self.format_version != FORMAT_VERSION:
            raise InputError(f"format_version = {self.format_version!r}: this audiostory reads {FORMAT_VERSION}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "bridge config") -> BridgeConfig:
        """Validate a decoded config; every problem is a ``ModelLoadError`` naming ``where``."""
        if not isinstance(data, dict):
            raise ModelLoadError(f"{where}: must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelLoadError(
                f"{where}: format_version = {version!r}: this audiostory reads version {FORMAT_VERSION}",
                hint="upgrade audiostory, or train the bridge again",
            )
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted(known - set(data) - {"format_version"})
        if unknown or missing:
            named = (("unknown", unknown), ("missing", missing))
            parts = [f"{label}: {', '.join(keys)}" for label, keys in named if keys]
            raise ModelLoadError(f"{where}: {'; '.join(parts)}")
        for name in ("planner", "decoder"):
            if not isinstance(data[name], str):
                raise ModelLoadError(f"{where}: {name} = {json.dumps(data[name])}: must be a string")
        try:
            return cls(**data)
        except InputError as err:
            raise ModelLoadError(f"{where}: {err}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "bridge config") -> BridgeConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{where}: not valid JSON: {err.msg} at line {err.lineno}") from None
        return cls.from_dict(data, where)


class BridgeAdapter(nn.Module):
    """The weights that learn in semantic alignment: the query embeddings and the projector.

    ``projector = LayerNorm(llm_hidden) -> Linear(llm_hidden, projector_hidden) -> GELU -> Linear(.., text_dim)``.
    The input LayerNorm evens out the planner's last hidden states, whose scale varies a lot between models
    (a few channels of Qwen2.5's final-norm output reach the hundreds). The output is not normalised: T5's
    states come out of an RMS norm with learned per-channel scales and are not zero-mean, which a LayerNorm
    would fight; the last Linear learns their scale.
    """

    def __init__(self, config: BridgeConfig, *, generator: torch.Generator | None = None, query_std: float = 0.02):
        super().__init__()
        self.config = config
        hidden, width, out = config.llm_hidden, config.projector_hidden, config.text_dim
        with torch.random.fork_rng(devices=[]):  # the layers' own init must not move the global RNG
            self.queries = nn.Parameter(torch.empty(config.n_queries, hidden))  # [n_queries, llm_hidden]
            self.projector = nn.Sequential(
                nn.LayerNorm(hidden), nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, out)
            )
        self.reset_parameters(generator if generator is not None else torch.Generator().manual_seed(0), query_std)

    def reset_parameters(self, generator: torch.Generator, query_std: float) -> None:
        """Queries ~ normal(0, query_std) (the scale of the planner's token embeddings); Linear weights
        ~ normal(0, 1 / sqrt(fan_in)), biases 0; LayerNorm at identity. All drawn from ``generator``."""
        with torch.no_grad():
            self.queries.copy_(torch.randn(self.queries.shape, generator=generator) * query_std)
            for layer in self.projector:
                if isinstance(layer, nn.Linear):
                    fan_in = layer.weight.shape[1]
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
                    layer.bias.zero_()
                elif isinstance(layer, nn.LayerNorm):
                    layer.weight.fill_(1.0)
                    layer.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Planner hidden states at the query positions [..., llm_hidden] -> T5-space rows [..., text_dim]."""
        return self.projector(hidden.to(self.queries.dtype))

    def save(self, folder: str | Path) -> Path:
        """Write ``bridge.safetensors`` then ``bridge_config.json`` into ``folder``, each atomically."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        data = save(state, metadata={"format": "pt", "format_version": str(FORMAT_VERSION)})
        atomic_write(folder / WEIGHTS_FILE, lambda file: file.write(data))
        atomic_write(folder / CONFIG_FILE, lambda file: file.write(self.config.to_json().encode("utf-8")))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> tuple[BridgeAdapter, BridgeConfig]:
        """Read a bridge folder; every key must be there and nothing unknown (a ``ModelLoadError`` lists them)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise ModelNotFoundError(f"bridge folder {folder} not found", hint="train one: `audiostory train-bridge`")
        missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
        if missing:
            raise ModelNotFoundError(
                f"bridge folder {folder} lacks {', '.join(missing)}",
                hint=f"a bridge folder holds {WEIGHTS_FILE} and {CONFIG_FILE}, as `audiostory train-bridge` writes",
            )
        config = _read_config(folder / CONFIG_FILE)
        try:
            state = load_file(str(folder / WEIGHTS_FILE))
        except Exception as err:  # noqa: BLE001 - any reader failure is one clear message
            raise ModelLoadError(f"cannot read {folder / WEIGHTS_FILE}: {err}") from None
        adapter = cls(config)
        strict_load(adapter, state, folder / WEIGHTS_FILE)
        return adapter, config


def _read_config(path: Path) -> BridgeConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from None
    return BridgeConfig.from_json(text, str(path))


# --- the forward pass: captions -> query states ----------------------------------------------------------


def prompt_ids(tokenizer: Any, caption: str, max_caption_tokens: int) -> list[int]:
    """Token ids of the chat that precedes the queries: system, user ("Describe the sound: ..."), the
    assistant header. The caption is cut to ``max_caption_tokens`` planner tokens first."""
    caption_ids = tokenizer(caption.strip(), add_special_tokens=False).input_ids
    if len(caption_ids) > max_caption_tokens:
        caption = tokenizer.decode(caption_ids[:max_caption_tokens])
    messages = [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": USER_MESSAGE.format(caption=caption.strip())},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def query_states(adapter: BridgeAdapter, planner: Planner, captions: list[str]) -> torch.Tensor:
    """The projected planner states at the query positions, [B, n_queries, text_dim] float32.

    Prompts are padded on the left (masked, with positions counted from each prompt's first real token), so
    the queries sit at the same positions in every row and a caption gets the same states alone or in a
    batch. Gradients reach the adapter through the frozen planner; wrap in ``torch.no_grad`` to skip them.
    """
    model, config = planner.model, adapter.config
    device = model.get_input_embeddings().weight.device
    ids = [prompt_ids(planner.tokenizer, caption, config.max_caption_tokens) for caption in captions]
    width = max(len(row) for row in ids)
    pad = planner.tokenizer.pad_token_id if planner.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width + config.n_queries), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    embeds = model.get_input_embeddings()(input_ids.to(device))
    queries = adapter.queries.to(device=device, dtype=embeds.dtype).expand(len(ids), -1, -1)
    mask = mask.to(device)
    out = model(
        inputs_embeds=torch.cat([embeds, queries], dim=1),
        attention_mask=mask,
        position_ids=(mask.cumsum(dim=-1) - 1).clamp(min=0),
        output_hidden_states=True,
        use_cache=False,
        logits_to_keep=1,  # the logits are not used; only the last position's are computed
    )
    hidden = out.hidden_states[-1][:, -config.n_queries :, :]
    return adapter(hidden.to(adapter.queries.device, torch.float32))


class TrainedBridge:
    """What generation uses in place of the T5 text encoder: caption -> the bridge's ``TextTokens``."""

    def __init__(self, adapter: BridgeAdapter, planner: Planner, folder: str | Path) -> None:
        self.adapter = adapter  # queries + projector, float32, on the planner's device, frozen
        self.config = adapter.config
        self.planner = planner  # the planner whose hidden states it reads
        self.ref = str(Path(folder).expanduser().resolve())  # its folder, absolute (saved as ``render.bridge``)

    @classmethod
    def load(cls, folder: str | Path, planner: Planner) -> TrainedBridge:
        """Load a bridge for ``planner``; its hidden size must be the one the bridge was trained for."""
        adapter, config = BridgeAdapter.load(folder)
        hidden = planner.model.config.hidden_size
        if config.llm_hidden != hidden:
            raise ModelLoadError(
                f"bridge {folder} was trained for a planner of hidden size {config.llm_hidden} ({config.planner}), "
                f"but planner {planner.ref} has hidden size {hidden}",
                hint="load the planner it was trained with, or train one for this planner: `audiostory train-bridge`",
            )
        device = planner.model.get_input_embeddings().weight.device
        adapter.to(device).eval().requires_grad_(False)
        return cls(adapter, planner, folder)

    @torch.inference_mode()
    def encode_text(self, caption: str) -> TextTokens:
        """The projected query states of ``caption`` [n_queries, text_dim] float32, pooled by their mean
        (``bridge.TextEncoder``: a bridge stands in for the decoder's T5)."""
        states = query_states(self.adapter, self.planner, [caption])[0].float()
        return TextTokens(states=states, pooled=states.mean(dim=0))


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
    for module in (planner.model, decoder.text_encoder, decoder.dit, decoder.vae):
        module.requires_grad_(False)
    device = planner.model.get_input_embeddings().weight.device

    # 2. The config: new, or the checkpoint's (which must match what was given).
    wanted = {
        "llm_hidden": planner.model.config.hidden_size,
        "text_dim": decoder.text_encoder.config.d_model,
        "planner": _canonical_ref(planner.ref),
        "decoder": _canonical_ref(decoder.ref),
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


def _canonical_ref(ref: str) -> str:
    """A local path as an absolute one (so a resume from another folder still matches); a hub id as given."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


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

