"""The trained part of TangoFlux as modules: the Flux transformer (from diffusers), the pooled-text projection
``fc`` and the duration token (``duration_emebdder``, upstream's spelling, so the keys load as published)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TangoFluxConfig


class _StableAudioPositionalEmbedding(nn.Module):
    """Random Fourier features of a scalar in [0, 1] (Stable Audio's continuous time embedding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(dim // 2))

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        times = times[..., None]
        freqs = times * self.weights[None] * 2 * math.pi
        return torch.cat((times, freqs.sin(), freqs.cos()), dim=-1)


class DurationEmbedder(nn.Module):
    """Maps a clip duration in seconds to one conditioning token (TangoFlux's duration token)."""

    def __init__(self, dim: int, max_value: float, internal_dim: int = 256) -> None:
        super().__init__()
        self.max_value = max_value
        self.time_positional_embedding = nn.Sequential(
            _StableAudioPositionalEmbedding(internal_dim), nn.Linear(internal_dim + 1, dim)
        )

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        normalized = seconds.clamp(0, self.max_value) / self.max_value
        dtype = self.time_positional_embedding[1].weight.dtype
        return self.time_positional_embedding(normalized.to(dtype)).unsqueeze(1)  # [B, 1, dim]


class TangoFluxDiT(nn.Module):
    """The trained part of TangoFlux: the Flux transformer, the pooled-text projection, the duration token."""

    def __init__(self, config: TangoFluxConfig, text_dim: int) -> None:
        super().__init__()
        from diffusers import FluxTransformer2DModel

        self.transformer = FluxTransformer2DModel(
            in_channels=config.in_channels,
            num_layers=config.num_layers,
            num_single_layers=config.num_single_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=config.joint_attention_dim,
            pooled_projection_dim=text_dim,
            guidance_embeds=False,
        )
        self.fc = nn.Sequential(nn.Linear(text_dim, config.joint_attention_dim), nn.ReLU())
        self.duration_emebdder = DurationEmbedder(text_dim, config.max_duration)  # upstream's spelling
