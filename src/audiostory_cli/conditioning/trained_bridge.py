"""A trained bridge (``--bridge``): learned queries after a caption in the planner's input, the planner's
states there projected into the decoder's text space; it stands in for the decoder's text encoder.

    caption -> chat template -> token embeddings + queries -> planner (frozen) -> last hidden states at the
    query positions -> projector -> [n_queries, text_dim]  ~  decoder.encode_text(caption, pad_to=n_queries)

One folder holds a bridge: ``bridge.safetensors`` (queries + projector), ``bridge_config.json``
(``BridgeConfig``) and, while training, ``train_state.pt`` (see ``training/bridge.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..audio_io import atomic_write
from ..decoders.base import TextTokens
from ..decoders.weights import strict_load
from ..errors import InputError, ModelLoadError, ModelNotFoundError
from ..paths import expand_user

if TYPE_CHECKING:
    from ..planners.transformers import TransformersPlanner as Planner  # the bridge reads its hidden states

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

    @staticmethod
    def read_config(folder: str | Path) -> BridgeConfig:
        """A bridge folder's config alone (cheap: what the CLI checks before loading any model)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelNotFoundError(f"bridge folder {folder} not found", hint="train one: `audiostory train-bridge`")
        missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE) if not (folder / name).is_file()]
        if missing:
            raise ModelNotFoundError(
                f"bridge folder {folder} lacks {', '.join(missing)}",
                hint=f"a bridge folder holds {WEIGHTS_FILE} and {CONFIG_FILE}, as `audiostory train-bridge` writes",
            )
        return _read_config(folder / CONFIG_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> tuple[BridgeAdapter, BridgeConfig]:
        """Read a bridge folder; every key must be there and nothing unknown (a ``ModelLoadError`` lists them)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = cls.read_config(folder)
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
        self.ref = str(expand_user(folder).resolve())  # its folder, absolute (saved as ``render.bridge``)

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


