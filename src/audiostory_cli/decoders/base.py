"""What every decoder is: ``DecoderCaps`` (what it can do), ``ClipRequest`` (one clip to render), ``TextTokens``
(what fills its text slot) and the ``Decoder`` protocol the pipeline calls.

A backend is one module under ``decoders/`` plus one line in ``registry.py``. It reads its caps from its
config files alone (``describe``), so a setting it cannot honour is refused before any weight loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from ..errors import InputError
from ..settings import RenderOptions
from ..story import Clip, Event, ProgressFn

if TYPE_CHECKING:
    import torch

CONTINUATIONS = ("latent", "inpaint")  # how a clip's head continues the previous clip's tail


@dataclass(frozen=True)
class DecoderCaps:
    """What a decoder is and can do, read from its config files without loading weights."""

    name: str  # backend name shown to users ("TangoFlux", "Stable Audio 3")
    sample_rate: int  # samples per second of its audio
    channels: int  # audio channels (2: stereo)
    window_s: float  # longest clip one denoising pass renders; longer clips are chained windows
    text_width: int  # width of one text token (T5 d_model, T5Gemma hidden): what a bridge must produce
    default_steps: int  # its own denoising steps (--steps not given)
    default_guidance: float  # its own guidance scale (--guidance not given)
    hop_samples: int  # audio samples per latent frame
    windows: tuple[str, ...] = ("auto", "full")  # --window values it honours
    continuation: str = "latent"  # how continuation is done: one of CONTINUATIONS
    frame_multiple: int = 1  # a latent grid's head is aligned to this many frames (SAME-S: one attention chunk)
    round_head_end_up: bool = False  # ``geometry.continuation_head``'s ``round_end_up`` for this decoder: the
    # previous clip's last, partly covered frame is part of a continuing head (SA3) or not (TangoFlux)

    def check(self, options: RenderOptions, *, bridge_width: int | None = None) -> None:
        """Refuse, up front, a setting this decoder cannot honour (like diffusers' ``check_inputs``)."""
        if options.window not in self.windows:
            raise InputError(
                f"--window {options.window} does not apply to {self.name}: it takes {', '.join(self.windows)}",
                hint="drop --window" if len(self.windows) == 1 else None,
            )
        if bridge_width is not None and bridge_width != self.text_width:
            raise InputError(
                f"the bridge produces text features of width {bridge_width}, but {self.name} takes {self.text_width}",
                hint="use the decoder it was trained for, or train a bridge for this one",
            )


@dataclass(frozen=True)
class TextTokens:
    """What fills the decoder's text-conditioning slot for one clip."""

    states: torch.Tensor  # [L, D] token features (the text encoder's states, or fused queries); all attended
    pooled: torch.Tensor  # [D] pooled text vector (TangoFlux projects it into its global conditioning)


@dataclass(frozen=True)
class LatentGuide:
    """Known latents a clip is rendered around (an edit, a variation, an input recording's tail).

    The clip's latent grid starts at ``origin_sample`` (its frame count and duration token follow as for a
    continuing clip). Frames marked ``pinned`` are held to ``latents``: before every denoising step they are
    set to ``(1 - sigma) * known + sigma * noise`` (the clip's own starting noise there), and after the last
    step to exactly ``latents`` (so the returned ``Clip.latents`` equal them bit for bit). ``strength`` 1
    starts from pure noise; below 1 the clip is a variation: it starts at the first step whose sigma is at
    most ``strength``, every frame at ``(1 - sigma) * known + sigma * noise``, and takes only the remaining
    steps (at least one). ``latents`` may be shorter or longer than the clip's grid: frames past the grid are
    ignored, missing ones are not pinned (and, below strength 1, start from noise).
    """

    origin_sample: int  # timeline sample where the clip's latent frame 0 lies (<= the request's start_sample)
    latents: np.ndarray = field(repr=False)  # [frames, C] float32 known latents on that grid
    pinned: np.ndarray = field(repr=False)  # [frames] bool: frames held to ``latents``
    strength: float = 1.0  # 1: from pure noise; 0 < s < 1: a variation from the known latents noised to s

    def __post_init__(self) -> None:
        if not (0.0 < self.strength <= 1.0):  # NaN fails too
            raise InputError(f"strength {self.strength}: must be above 0 and at most 1", hint="e.g. --strength 0.5")
        if self.latents.ndim != 2 or self.latents.dtype != np.float32:
            raise ValueError(f"guide latents must be [frames, C] float32, got {self.latents.dtype} {self.latents.shape}")
        if self.pinned.shape != self.latents.shape[:1] or self.pinned.dtype != np.bool_:
            raise ValueError(f"guide pinned must be [{self.latents.shape[0]}] bool, got {self.pinned.dtype} {self.pinned.shape}")

    def window(self, start: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """``(known [frames, C], pinned [frames])`` for grid frames ``[start, start + frames)``: zeros and not
        pinned where the guide has no frame."""
        known = np.zeros((frames, self.latents.shape[1]), dtype=np.float32)
        pinned = np.zeros(frames, dtype=bool)
        have = max(0, min(frames, self.latents.shape[0] - start))
        known[:have] = self.latents[start : start + have]
        pinned[:have] = self.pinned[start : start + have]
        return known, pinned

    def covered(self, start: int, frames: int) -> np.ndarray:
        """[frames] bool: which of grid frames ``[start, start + frames)`` the guide has latents for."""
        have = max(0, min(frames, self.latents.shape[0] - start))
        return np.arange(frames) < have


def first_step(sigmas: Sequence[float], strength: float, steps: int) -> int:
    """Index of the first of ``steps`` steps a guide of ``strength`` takes: 0 at strength 1, else the first
    whose sigma is at most ``strength``, at most the last step (a variation takes at least one)."""
    if strength >= 1.0:
        return 0
    return next((i for i in range(steps) if sigmas[i] <= strength), steps - 1)


@dataclass(frozen=True)
class ClipRequest:
    """One clip to render."""

    event: Event  # the event it renders
    n_samples: int  # exact length of the clip in samples (event span plus crossfade tail)
    seed: int  # seed of this clip's starting noise (one torch.Generator per clip)
    text: TextTokens | None = None  # conditioning; None: the decoder's own encoding of ``event.caption``
    start_sample: int = 0  # where the clip starts on the story timeline, in samples
    continues: int | None = None  # index (in the same request list) of the clip whose tail this clip's head
    # continues: with ``continuation`` on, the overlap is generated as the continuation of that clip
    guide: LatentGuide | None = None  # known latents to render around; excludes ``continues`` (see LatentGuide)

    def __post_init__(self) -> None:
        if self.guide is not None:
            if self.continues is not None:
                raise ValueError("a ClipRequest with a guide cannot also continue a clip: put the head in the guide")
            if self.guide.origin_sample > self.start_sample:
                raise ValueError(f"guide origin {self.guide.origin_sample} lies after the clip's start {self.start_sample}")


class Decoder(Protocol):
    """A loaded decoder. ``render`` gets options whose ``steps`` and ``guidance`` are already resolved."""

    ref: str  # the reference it was loaded from (saved in plans)
    caps: DecoderCaps  # what it is and can do

    def encode_text(self, text: str, *, pad_to: int | None = None) -> TextTokens:
        """The text encoder's tokens for ``text``; ``pad_to``: exactly that many rows (a training target)."""
        ...

    def render(
        self, requests: Sequence[ClipRequest], options: RenderOptions, *, batch_size: int, progress: ProgressFn
    ) -> list[Clip]:
        """One clip per request, in order, each exactly ``n_samples`` long, with its final ``latents`` and
        their ``origin_sample``."""
        ...

    def decode_latents(self, latents: np.ndarray, shift: int, n_samples: int) -> np.ndarray:
        """[C, n_samples] float32: the wave ``render`` returned for a clip with these final latents [frames, C]
        (``Clip.latents``) and ``shift`` (``start_sample - origin_sample``), bit for bit; no denoising."""
        ...

    def encode_audio(self, wave: np.ndarray) -> np.ndarray:
        """[frames, C] float32: the VAE's deterministic encoding (the posterior's mean) of ``wave`` [channels, T]
        at the decoder's rate, T a multiple of ``caps.hop_samples``; frame f holds samples [f*hop, (f+1)*hop)."""
        ...


class DecoderBackend(Protocol):
    """A decoder family, as the registry sees it (a module, or a class with these functions)."""

    name: str  # "tangoflux", "stable-audio-3"
    layout: str  # one line saying the files it expects, for messages

    def detect(self, folder: Path) -> bool:
        """Whether ``folder`` holds this backend's layout (by its files alone)."""
        ...

    def missing_files(self, folder: Path) -> list[str]:
        """The files of this layout ``folder`` lacks when it holds some of them, else [] (for messages)."""
        ...

    def describe(self, folder: Path) -> DecoderCaps:
        """Its caps, from config files only."""
        ...

    def load(self, ref: str, folder: Path, *, device: torch.device, dtype: torch.dtype) -> Decoder:
        """Load it strictly: every key mapped, none left over, shapes checked."""
        ...


def fit_length(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Cut (or, for a window shorter than the clip, zero-pad) ``[C, T]`` to exactly ``n_samples``, float32."""
    if wave.shape[-1] < n_samples:
        wave = np.pad(wave, ((0, 0), (0, n_samples - wave.shape[-1])))
    return np.ascontiguousarray(wave[:, :n_samples], dtype=np.float32)
