"""The checkpoint's fusion, AudioStory's conditioning: the LLM's states at the query tokens, projected, the
semantic queries attending to their clip's residual queries, added back and scaled::

    query hidden states -> projector / audio_projector -> fusion MHA -> / t5_feature_scale -> decoder text slot
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...decoders.base import TextTokens
from ...story import Plan

if TYPE_CHECKING:
    from ...decoders.base import Decoder
    from .load import AudioStoryModel

FUSION_HEADS = 8  # upstream hard-codes nn.MultiheadAttention(1024, num_heads=8)
# Upstream's inference divides (semantic + MHA(semantic, residual)) once by t5_feature_scale ("inference");
# its training divides both projector outputs by it before the MHA, and the sum again ("training").
FUSION_SCALING = "inference"


def mlp_projector(in_dim: int, out_dim: int) -> nn.Sequential:
    """Upstream's ``mlp2x_gelu``: Linear, GELU, Linear (keys 0.* and 2.*)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class QueryFusion(nn.Module):
    """Semantic queries attend to their clip's residual queries; the result is added back and scaled."""

    def __init__(self, dim: int, feature_scale: float, scaling: str = FUSION_SCALING) -> None:
        super().__init__()
        if scaling not in ("inference", "training"):
            raise ValueError(f"fusion scaling {scaling!r}: must be 'inference' or 'training'")
        self.multihead_attention = nn.MultiheadAttention(dim, FUSION_HEADS)  # sequence-first, as upstream
        self.feature_scale = feature_scale
        self.scaling = scaling

    def forward(self, semantic: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``semantic`` [clips, N, D], ``residual`` [clips, M, D] (projected) -> fused [clips, N, D]."""
        if self.scaling == "training":
            semantic, residual = semantic / self.feature_scale, residual / self.feature_scale
        query, memory = semantic.transpose(0, 1), residual.transpose(0, 1)
        attended = self.multihead_attention(query, memory, memory, need_weights=False)[0].transpose(0, 1)
        return (semantic + attended) / self.feature_scale



class AudioStoryConditioner:
    """The checkpoint's own conditioning (``Conditioner``): its planner's query states through its fusion."""

    def __init__(self, model: AudioStoryModel) -> None:
        self.model = model  # the loaded checkpoint

    def condition(self, plan: Plan, decoder: Decoder) -> dict[int, TextTokens]:
        return self.model.event_texts(plan)
