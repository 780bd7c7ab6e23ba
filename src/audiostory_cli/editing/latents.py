"""``story.latents.safetensors``: what a render leaves beside its plan so an edit re-denoises only what it
changes. No torch here (``safetensors.numpy``).

One tensor per clip, ``clip.<event index>`` [frames, channels] float32: its final latents on its own grid. The
metadata holds each grid's origin (the timeline sample of frame 0), the mix's gain, the samples of input
recording before the story's start, and two hashes: of the plan file's text and of the audio file's bytes, so a
latents file is used only with the exact pair it was written with. A minute of TangoFlux audio is ~330 KB.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "audiostory-latents"
VERSION = "1"
SUFFIX = ".latents.safetensors"
MAX_LATENTS_BYTES = 1 << 30  # a 10-minute story holds a few MB; more is not ours


@dataclass(frozen=True)
class StoryState:
    """What an edit needs of a rendered story besides its plan and samples."""

    latents: dict[int, np.ndarray] = field(repr=False)  # event index -> [frames, C] float32 final latents
    origins: dict[int, int] = field(default_factory=dict)  # event index -> timeline sample of its frame 0
    gain: float = 1.0  # the mix's gain (peak ceiling and loudness): track = raw mix * gain
    lead_samples: int = 0  # samples of the continued recording before the story's time 0 in the file
    head: np.ndarray | None = field(default=None, repr=False)  # [frames, C] latents of that recording's tail
    head_origin: int = 0  # timeline sample of ``head``'s frame 0 (negative: before the story starts)
    head_end: int = 0  # timeline sample where the recording's audio ends (> 0: it runs under the first clip)
    head_event: int | None = None  # the event whose clip continues the recording; None: no recording
    input_tail: np.ndarray | None = field(default=None, repr=False)  # [C, head_end] the recording's samples
    # from the story's start on, mixed under that clip's fade-in (when the output includes the recording)


def latents_path_for(plan_path: Path) -> Path:
    """``story.plan.json`` -> ``story.latents.safetensors``, beside it."""
    from ..audio_io import story_stem

    return plan_path.with_name(story_stem(plan_path) + SUFFIX)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_to_bytes(state: StoryState, plan_text: str, audio_sha256: str) -> bytes:
    """The file's bytes: every clip's latents, the grids and gain in the metadata, and the pair's hashes."""
    from safetensors.numpy import save

    tensors = {f"clip.{i}": np.ascontiguousarray(a, dtype=np.float32) for i, a in state.latents.items()}
    if state.head is not None:
        tensors["input.head"] = np.ascontiguousarray(state.head, dtype=np.float32)
    if state.input_tail is not None:
        tensors["input.tail"] = np.ascontiguousarray(state.input_tail, dtype=np.float32)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "plan_sha256": digest(plan_text.encode("utf-8")),
        "audio_sha256": audio_sha256,
        "origins": json.dumps({str(i): o for i, o in state.origins.items()}),
        "gain": repr(float(state.gain)),
        "lead_samples": str(state.lead_samples),
        "head_origin": str(state.head_origin),
        "head_end": str(state.head_end),
        "head_event": "" if state.head_event is None else str(state.head_event),
    }
    return save(tensors, metadata=metadata)


def read_state(path: Path, plan_text: str, audio_bytes: bytes) -> tuple[StoryState | None, str]:
    """The state saved in ``path`` if it belongs to exactly this plan text and audio; else None and why (for
    the message: the story then renders from scratch)."""
    from safetensors import safe_open

    if not path.is_file():
        return None, f"{path.name} is missing"
    if path.stat().st_size > MAX_LATENTS_BYTES:
        return None, f"{path.name} is larger than any story's latents"
    try:
        with safe_open(str(path), framework="numpy") as file:
            meta = file.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                return None, f"{path.name} is not an audiostory latents file of version {VERSION}"
            if meta.get("plan_sha256") != digest(plan_text.encode("utf-8")):
                return None, f"{path.name} was written with another version of the plan"
            if meta.get("audio_sha256") != digest(audio_bytes):
                return None, f"{path.name} was written with another version of the audio"
            latents = {int(k.split(".", 1)[1]): file.get_tensor(k) for k in file.keys() if k.startswith("clip.")}
            names = set(file.keys())
            head = file.get_tensor("input.head") if "input.head" in names else None
            tail = file.get_tensor("input.tail") if "input.tail" in names else None
            origins = {int(k): int(v) for k, v in json.loads(meta["origins"]).items()}
            state = StoryState(
                latents=latents, origins=origins, gain=float(meta["gain"]), lead_samples=int(meta["lead_samples"]),
                head=head, head_origin=int(meta["head_origin"]), head_end=int(meta["head_end"]),
                head_event=int(meta["head_event"]) if meta["head_event"] else None, input_tail=tail,
            )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - a damaged file is a reason to render afresh, said in words
        return None, f"{path.name} cannot be read ({type(err).__name__})"
    if set(state.latents) != set(state.origins) or any(a.ndim != 2 for a in state.latents.values()):
        return None, f"{path.name} is inconsistent"
    return state, ""
