"""``render`` of an edited plan: the first render of its history's events, then every edit again, in order,
through the same ``apply_change`` an edit used, so the result is the edited file sample for sample."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..settings import RenderOptions
from ..story import Plan, Progress, ProgressFn, no_progress
from .latents import StoryState
from .operations import apply_change

if TYPE_CHECKING:
    from ..conditioning.base import Conditioner
    from ..decoders.base import Decoder


def replay(
    decoder: Decoder, plan: Plan, options: RenderOptions, conditioner: Conditioner, *,
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, StoryState]:  # fmt: skip
    """The wave and state of ``plan`` (which has a history), made from nothing; ``options`` resolved."""
    from ..pipeline import render_fresh

    history = plan.history
    now = replace(plan, events=history.events, total_s=history.total_s, history=None)
    count = len(history.edits)
    progress(Progress("replay", 0, count, "the first render"))
    wave, state = render_fresh(decoder, now, options, conditioner, progress=progress)
    for i, change in enumerate(history.edits):
        progress(Progress("replay", i, count, f"edit {i + 1} of {count}: {change.op}"))
        edited = apply_change(decoder, conditioner, now, wave, state, change, options, progress=progress)
        now, wave, state = edited.plan, edited.track, edited.state
    progress(Progress("replay", count, count, "replayed"))
    return wave, state
