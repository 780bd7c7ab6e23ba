"""TangoFlux's ``config.json``: the DiT's sizes, with upstream's defaults, and what follows from them."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from ...errors import ModelLoadError
from ..base import DecoderCaps

DEFAULT_STEPS = 50  # TangoFlux's own number of flow-matching steps
DEFAULT_GUIDANCE = 4.5  # TangoFlux's own classifier-free guidance scale
SAMPLE_RATE = 44100  # the Stable Audio Open VAE's sample rate
HOP_SAMPLES = 2048  # audio samples per latent frame of that VAE


@dataclass(frozen=True)
class TangoFluxConfig:
    """The fields of TangoFlux's config.json, with upstream's defaults."""

    num_layers: int = 6  # double-stream (joint) transformer blocks
    num_single_layers: int = 18  # single-stream transformer blocks
    in_channels: int = 64  # latent channels (the VAE's latent size)
    attention_head_dim: int = 128  # width of one attention head
    joint_attention_dim: int = 1024  # width of the text tokens fed to the DiT (= the T5's d_model)
    num_attention_heads: int = 8  # attention heads
    audio_seq_len: int = 645  # latent frames of the full window (30 s at 44.1 kHz / 2048)
    max_duration: float = 30.0  # the duration token's upper bound, seconds
    uncondition: bool = False  # training flag, unused at inference
    text_encoder_name: str = "google/flan-t5-large"  # reference of the T5 text encoder

    @property
    def max_clip_s(self) -> float:
        """The longest clip one window holds, with the Stable Audio Open VAE (2048 samples a frame, 44.1 kHz)."""
        return self.audio_seq_len * HOP_SAMPLES / SAMPLE_RATE

    @classmethod
    def from_dict(cls, data: dict) -> TangoFluxConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_tangoflux_config(path: Path) -> TangoFluxConfig:
    """TangoFlux's config.json (the DiT's sizes), unknown fields ignored; a bad file is a ModelLoadError."""
    try:
        return TangoFluxConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot read decoder config {path}: {err}") from None


def caps_for(config: TangoFluxConfig, name: str = "TangoFlux") -> DecoderCaps:
    """What a TangoFlux-architecture decoder of this config can do (the VAE is Stable Audio Open's)."""
    return DecoderCaps(
        name=name,
        sample_rate=SAMPLE_RATE,
        channels=2,
        window_s=config.max_clip_s,
        text_width=config.joint_attention_dim,
        default_steps=DEFAULT_STEPS,
        default_guidance=DEFAULT_GUIDANCE,
        hop_samples=HOP_SAMPLES,
        windows=("auto", "full"),
        continuation="latent",
    )
