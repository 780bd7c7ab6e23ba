"""Bridging and residual queries: Plan -> one ``Conditioning`` per event -> the decoder's text tokens.

AudioStory conditions each clip on two sets of tokens: a *bridging* (semantic) query, what this event
sounds like, and a *residual* query, what must carry over from the story so far. A fusion module lets the
semantic tokens attend to the residual tokens and adds the result back, scaled; its output fills the
decoder's text-conditioning slot (the duration token follows it, as for a plain caption).

Without trained weights (any planner with the TangoFlux decoder) the bridge is training-free:
``semantic`` is the text encoder on the caption (or a trained semantic adapter, ``--bridge``) and
``residual`` is the text encoder on what persists (the story prompt, its tone, and the previous events,
weighted less the further back they are), fused by attention without parameters.
``coherence`` weights the residual; at 0 the semantic tokens pass through untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
from torch import nn

from ..decoders.base import Decoder, TextTokens
from ..story import Event, Plan
from .base import TextEncoder

HISTORY_EVENTS = 4  # previous events that enter the residual
HISTORY_DECAY = 0.5  # weight of an event k steps back: HISTORY_DECAY ** k
STORY_WEIGHT = 1.0  # weight of the story prompt's tokens in the residual
TONE_WEIGHT = 1.0  # weight of the tone's tokens in the residual


@dataclass(frozen=True)
class Conditioning:
    """The two queries of one event, before fusion."""

    event: Event  # the event they condition
    semantic: TextTokens  # [N_s, D] what this event sounds like
    residual: torch.Tensor  # [N_r, D] what carries over from the story so far (N_r may be 0)
    residual_weight: torch.Tensor  # [N_r] weight of each residual token, in (0, 1]


class Fusion(nn.Module):
    """Semantic tokens attend to residual tokens; the result is added back and scaled.

    Attention without parameters (the released checkpoint brings its own trained fusion:
    ``models/audiostory/fusion.QueryFusion``): softmax(q k^T / sqrt(D) + log w) v with q = semantic,
    k = v = residual. Output: ``(semantic + coherence * attended) / (1 + coherence)``, which keeps the tokens'
    scale where the decoder was trained.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(
        self, semantic: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, coherence: float
    ) -> torch.Tensor:
        """``semantic`` [N_s, D], ``residual`` [N_r, D], ``weight`` [N_r] -> fused [N_s, D]."""
        if coherence == 0 or residual.shape[0] == 0:
            return semantic
        bias = weight.clamp(min=1e-6).log().to(semantic.dtype)
        scores = semantic @ residual.T / math.sqrt(self.dim) + bias[None, :]
        attended = scores.softmax(dim=-1) @ residual
        return (semantic + coherence * attended) / (1 + coherence)


def condition(plan: Plan, semantic_encoder: TextEncoder, residual_encoder: TextEncoder) -> list[Conditioning]:
    """Per event: semantic tokens of its caption, residual tokens of what persists (in ``plan.events`` order)."""
    story = _weighted(residual_encoder.encode_text(plan.prompt), STORY_WEIGHT) if plan.prompt.strip() else None
    tones: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    captions = {e.index: residual_encoder.encode_text(e.caption) for e in plan.events}
    conditionings = []
    for event in plan.events:
        parts = [story] if story is not None else []
        tone = ", ".join(t for t in (plan.tone, event.tone) if t)
        if tone:
            if tone not in tones:
                tones[tone] = _weighted(residual_encoder.encode_text(f"tone: {tone}"), TONE_WEIGHT)
            parts.append(tones[tone])
        for distance, earlier in enumerate(_history(plan, event), start=1):
            states = captions[earlier.index].states
            parts.append((states, torch.full((states.shape[0],), HISTORY_DECAY**distance)))
        residual, weight = _concat(parts, semantic_dim=captions[event.index].states.shape[1])
        same = semantic_encoder is residual_encoder  # then the caption's tokens are already encoded
        semantic = captions[event.index] if same else semantic_encoder.encode_text(event.caption)
        conditionings.append(Conditioning(event, semantic, residual, weight))
    return conditionings


def fuse(conditioning: Conditioning, fusion: Fusion, coherence: float) -> TextTokens:
    """The tokens that fill the decoder's text slot; at ``coherence`` 0 exactly the semantic tokens."""
    if coherence == 0:
        return conditioning.semantic
    residual = conditioning.residual.to(conditioning.semantic.states)
    weight = conditioning.residual_weight.to(residual.device)
    with torch.inference_mode():
        states = fusion(conditioning.semantic.states, residual, weight, coherence)
    return TextTokens(states=states, pooled=states.mean(dim=0))


def _history(plan: Plan, event: Event) -> list[Event]:
    """Up to HISTORY_EVENTS events that ended before ``event`` starts, nearest first (any layer)."""
    earlier = [e for e in plan.events if e.index != event.index and e.end_s <= event.start_s + 1e-6]
    return sorted(earlier, key=lambda e: e.end_s, reverse=True)[:HISTORY_EVENTS]


def _weighted(tokens: TextTokens, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    return tokens.states, torch.full((tokens.states.shape[0],), weight)


def _concat(parts, *, semantic_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not parts:
        return torch.zeros(0, semantic_dim), torch.zeros(0)
    states = torch.cat([p[0] for p in parts])
    return states, torch.cat([p[1].to(states.device) for p in parts])


class ResidualConditioner:
    """The training-free bridge: each caption's tokens (from the decoder's text encoder, or a trained bridge's
    ``semantic_encoder``) fused with the residual of what persists, weighted by ``coherence``."""

    def __init__(self, coherence: float, semantic_encoder: TextEncoder | None = None) -> None:
        self.coherence = coherence  # weight of the residual (RenderOptions checked its range)
        self.semantic_encoder = semantic_encoder  # a trained bridge, or None for the decoder's own encoder

    def condition(self, plan: Plan, decoder: Decoder) -> dict[int, TextTokens | None]:
        """At coherence 0 with no trained bridge, None for every event: the decoder encodes the caption
        itself, exactly as without a bridge."""
        if self.coherence == 0 and self.semantic_encoder is None:
            return {e.index: None for e in plan.events}
        conditionings = condition(plan, self.semantic_encoder or decoder, decoder)
        fusion = Fusion(decoder.caps.text_width)
        return {c.event.index: fuse(c, fusion, self.coherence) for c in conditionings}
