"""Bridging and residual queries: fusion, the training-free residual, coherence 0 as the identity."""

from __future__ import annotations

import math

import pytest
import torch

from audiostory_cli.conditioning import residual as bridge
from audiostory_cli.errors import InputError
from audiostory_cli.registry import load_decoder
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import Event, Plan, load_plan

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def decoder(tiny_decoder):
    return load_decoder(str(tiny_decoder), device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def plan():
    return load_plan("examples/plan.json")


def _tokens(rows: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def test_fusion_at_coherence_zero_is_the_identity():
    semantic, residual = _tokens(5), _tokens(7, seed=1)
    out = bridge.Fusion(8)(semantic, residual, torch.ones(7), 0.0)
    assert out is semantic


def test_parameter_free_fusion_is_attention_added_back_and_scaled():
    semantic, residual = _tokens(3), _tokens(4, seed=1)
    weight = torch.tensor([1.0, 0.5, 0.25, 0.125])
    out = bridge.Fusion(8)(semantic, residual, weight, 0.5)
    scores = semantic @ residual.T / math.sqrt(8) + weight.log()
    expected = (semantic + 0.5 * scores.softmax(-1) @ residual) / 1.5
    torch.testing.assert_close(out, expected)


def test_down_weighted_residual_tokens_count_less():
    semantic, residual = _tokens(1), torch.stack([torch.ones(8), -torch.ones(8)])
    fusion = bridge.Fusion(8)
    toward_first = fusion(semantic, residual, torch.tensor([1.0, 0.01]), 1.0)
    toward_second = fusion(semantic, residual, torch.tensor([0.01, 1.0]), 1.0)
    assert toward_first.sum() > toward_second.sum()


def test_residual_holds_story_tone_and_earlier_events_with_decaying_weight(decoder, plan):
    conditionings = bridge.condition(plan, decoder, decoder)
    assert [c.event.index for c in conditionings] == [e.index for e in plan.events]
    first, third = conditionings[0], conditionings[2]
    story = decoder.encode_text(plan.prompt).states.shape[0]
    # the first event has nothing before it but the bed does not end before it either: story + tone only
    assert set(first.residual_weight.tolist()) == {1.0}
    assert first.residual.shape[0] > story
    # the third event (index 2) hears events 1 (weight 0.5) and 0 (weight 0.25)
    weights = third.residual_weight.tolist()
    assert weights.count(bridge.HISTORY_DECAY) == decoder.encode_text(plan.events[1].caption).states.shape[0]
    assert weights.count(bridge.HISTORY_DECAY**2) == decoder.encode_text(plan.events[0].caption).states.shape[0]
    torch.testing.assert_close(third.semantic.states, decoder.encode_text(plan.events[2].caption).states)


def test_fuse_changes_the_conditioning_only_when_coherence_is_on(decoder, plan):
    conditioning = bridge.condition(plan, decoder, decoder)[2]
    fusion = bridge.Fusion(decoder.caps.text_width)
    assert bridge.fuse(conditioning, fusion, 0.0) is conditioning.semantic
    fused = bridge.fuse(conditioning, fusion, 0.3)
    assert fused.states.shape == conditioning.semantic.states.shape
    assert not torch.allclose(fused.states, conditioning.semantic.states)
    torch.testing.assert_close(fused.pooled, fused.states.mean(dim=0))


def test_plan_without_prompt_or_tone_still_conditions(decoder):
    plan = Plan(prompt="", total_s=4.0, events=(Event(0, "rain", 0.0, 2.0), Event(1, "wind", 2.0, 2.0)))
    first, second = bridge.condition(plan, decoder, decoder)
    assert first.residual.shape[0] == 0
    assert second.residual_weight.tolist() == [bridge.HISTORY_DECAY] * second.residual.shape[0]
    fused = bridge.fuse(first, bridge.Fusion(32), 0.5)  # nothing to attend to: the caption alone
    assert torch.equal(fused.states, first.semantic.states)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_coherence_out_of_range_is_refused(value):
    with pytest.raises(InputError, match="coherence"):
        RenderOptions(coherence=value)
