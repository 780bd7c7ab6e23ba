"""What every decoder is: ``DecoderCaps`` (what it can do), ``ClipRequest`` (one clip to render), ``TextTokens``
(what fills its text slot) and the ``Decoder`` protocol the pipeline calls.

A backend is one module under ``decoders/`` plus one line in ``registry.py``. It reads its caps from its
config files alone (``describe``), so a setting it cannot honour is refused before any weight loads.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    windows: tuple[str, ...] = ("auto", "full")  # --window values it honours
    continuation: str = "latent"  # how continuation is done: one of CONTINUATIONS

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
class ClipRequest:
    """One clip to render."""

    event: Event  # the event it renders
    n_samples: int  # exact length of the clip in samples (event span plus crossfade tail)
    seed: int  # seed of this clip's starting noise (one torch.Generator per clip)
    text: TextTokens | None = None  # conditioning; None: the decoder's own encoding of ``event.caption``
    start_sample: int = 0  # where the clip starts on the story timeline, in samples
    continues: int | None = None  # index (in the same request list) of the clip whose tail this clip's head
    # continues: with ``continuation`` on, the overlap is generated as the continuation of that clip


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
        """One clip per request, in order, each exactly ``n_samples`` long."""
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
