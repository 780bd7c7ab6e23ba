"""The edited track: the old samples everywhere an edit did not reach, the new mix where it did. No torch.

An edit marks *dirty* ranges of the new timeline (where a clip's samples or placement changed); only those are
mixed again (``mix.mix_range``) from the waves of the clips that reach into them, at the story's own gain (the
peak ceiling and loudness factor of its first render, saved with its latents). So a gain computed over the
whole mix never touches an untouched sample. Where the new samples would pass the ceiling at that gain, the
range alone is turned down, with ``RAMP_S`` ramps at its ends so its edges meet the old samples without a step.
A ``--duration`` edit moves everything after the edited event: those samples are the old ones, shifted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import mix

RAMP_S = 0.05  # a dirty range turned down to fit the ceiling ramps its gain over this much at each end


@dataclass(frozen=True)
class Shift:
    """A duration edit's move: samples from ``at`` on (new timeline) are the old ones ``delta`` earlier."""

    at: int  # first sample of the new timeline that is moved
    delta: int  # samples everything from ``at`` on moved by (negative: earlier)


def merge(ranges: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges inside ``[0, length)``; empty ones dropped, touching ones joined."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted((max(0, a), min(length, b)) for a, b in ranges):
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def splice(
    old: np.ndarray,
    length: int,
    dirty: list[tuple[int, int]],
    placed: dict[int, tuple[int, np.ndarray]],
    waves: dict[int, np.ndarray],
    *,
    gain: float,
    peak_dbfs: float,
    sample_rate: int,
    shift: Shift | None = None,
) -> np.ndarray:
    """The new track, ``length`` samples: ``old`` (moved by ``shift``) outside ``dirty``, the raw mix of
    ``waves`` (placed as ``placed`` says) times ``gain`` inside it, each dirty range limited to the ceiling."""
    channels = old.shape[0]
    new = np.zeros((channels, length), dtype=np.float32)
    if shift is None or shift.delta == 0:
        keep = min(length, old.shape[-1])
        new[:, :keep] = old[:, :keep]
    else:
        new[:, : shift.at] = old[:, : shift.at]
        source = shift.at - shift.delta  # where the moved part starts in the old timeline
        count = min(length - shift.at, old.shape[-1] - source)
        new[:, shift.at : shift.at + count] = old[:, source : source + count]
    ceiling = 10 ** (peak_dbfs / 20)
    for a, b in merge(dirty, length):
        part = mix.mix_range(placed, waves, channels, a, b) * np.float32(gain)
        new[:, a:b] = _fit_ceiling(part, ceiling, sample_rate)
    if not np.isfinite(new).all():
        raise mix.AudiostoryError("the edited track has non-finite samples (NaN or inf); check the decoder output")
    return new


def _fit_ceiling(part: np.ndarray, ceiling: float, sample_rate: int) -> np.ndarray:
    """``part`` unchanged if its peak is within ``ceiling``; else turned down to it, the gain ramping from 1 at
    both ends over ``RAMP_S`` (what the ramps still leave above the ceiling is clipped)."""
    peak = float(np.max(np.abs(part))) if part.size else 0.0
    if peak <= ceiling:
        return part
    length = part.shape[-1]
    ramp = max(1, min(int(RAMP_S * sample_rate), length // 2))
    curve = np.full(length, ceiling / peak, dtype=np.float64)
    edge = np.linspace(1.0, ceiling / peak, ramp, dtype=np.float64)
    curve[:ramp] = edge
    curve[length - ramp :] = np.minimum(curve[length - ramp :], edge[::-1])
    out = (part * curve).astype(np.float32)
    np.clip(out, -ceiling, ceiling, out=out)
    return out

