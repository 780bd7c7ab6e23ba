"""Join metrics: how much a track's sound changes across event boundaries, against how much it changes anyway.

Pure numpy, no torch. Used by ``benchmarks/coherence.py``; every function takes a float wave
``[channels, samples]`` and its sample rate, and times in seconds on the track's timeline.

Data flow: ``wave -> log_mel -> mean spectrum of a window -> L2 distance`` (``boundary_discontinuity``) and
``wave -> RMS level of a window -> dB difference`` (``loudness_jumps_db``).

A *probe* at time ``p`` compares the window ``[p - context, p)`` with ``[p + gap, p + gap + context)``.
``gap_s`` is 0 by default (the two windows touch at ``p``); set it to the crossfade length to compare the
sound before a crossfade with the sound after it (the crossfade of a join at ``b`` spans ``[b, b + fade)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_CONTEXT_S = 0.05  # a join whose windows would be shorter than this is skipped, not scored
DISTANCE_FLOOR_B = 0.01  # added to both sides of ``ratio`` (bels): silence against silence gives 1, not 0/0
POWER_FLOOR = 1e-10  # added to mel power before log10, so silence is -10 (bels), not -inf
MEAN_SQUARE_FLOOR = 1e-12  # added to the mean square before dB, so silence is -120 dB, not -inf
FRAMES_PER_CHUNK = 2048  # frames transformed at once by ``log_mel``: bounds memory on 10-minute tracks


@dataclass(frozen=True)
class JoinScore:
    """Spectral change at one boundary, against the change inside the segments on either side."""

    boundary_s: float  # where the join is on the timeline, seconds
    across: float  # L2 distance (bels) between mean log-mel spectra just before and just after the join
    inside: float  # the same distance probed at the middle of the segments on either side, averaged (bels)
    ratio: float  # (across + DISTANCE_FLOOR_B) / (inside + DISTANCE_FLOOR_B); ~1: no more change than inside
    context_s: float  # length of each window actually used, seconds (shrunk near ends and close joins)
    skipped: str | None = None  # why the join was not scored (then across, inside, ratio are NaN); None if scored


# --- log-mel spectrogram ------------------------------------------------------------------------------


def log_mel(
    wave: np.ndarray, sample_rate: int, *, n_mels: int = 64, frame_s: float = 0.046, hop_s: float = 0.0116
) -> np.ndarray:
    """Log mel power spectrogram of the mono mix, ``[frames, n_mels]``, in bels (log10 of power).

    Frame ``i`` covers samples ``[i * hop, i * hop + frame)`` (no padding; a wave shorter than one frame is
    zero-padded to one), with ``frame = round(frame_s * sample_rate)`` and ``hop = round(hop_s * sample_rate)``.
    Each frame is (periodic) Hann-windowed and transformed with an ``rfft`` of the next power of two; power is
    ``|X|^2 / sum(window)^2`` (a full-scale sine puts 0.25 in its bin), summed through triangular HTK-mel
    filters (peak 1, 0 Hz to Nyquist), then ``log10(power + 1e-10)``. ``frame_times_s`` gives frame centres.
    """
    mono = _mono(wave)
    frame, hop = _frame_hop(sample_rate, frame_s, hop_s)
    if mono.size < frame:
        mono = np.pad(mono, (0, frame - mono.size))
    n_fft = 1 << (frame - 1).bit_length()
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame)).astype(np.float32)  # periodic Hann
    filters = mel_filterbank(sample_rate, n_fft, n_mels).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(mono, frame)[::hop]
    scale = np.float32(1.0 / window.sum() ** 2)
    out = np.empty((len(frames), n_mels), dtype=np.float32)
    for start in range(0, len(frames), FRAMES_PER_CHUNK):
        spectrum = np.fft.rfft(frames[start : start + FRAMES_PER_CHUNK] * window, n=n_fft, axis=-1)
        power = (spectrum.real**2 + spectrum.imag**2) * scale
        out[start : start + FRAMES_PER_CHUNK] = np.log10(power @ filters.T + POWER_FLOOR)
    return out


def frame_times_s(n_frames: int, sample_rate: int, *, frame_s: float = 0.046, hop_s: float = 0.0116) -> np.ndarray:
    """Centre time in seconds of each ``log_mel`` frame (same ``frame_s`` and ``hop_s``)."""
    frame, hop = _frame_hop(sample_rate, frame_s, hop_s)
    return (np.arange(n_frames) * hop + frame / 2) / sample_rate


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` on the HTK mel scale ``2595 log10(1 + f / 700)``.

    ``n_mels + 2`` edges equally spaced in mel from 0 Hz to ``sample_rate / 2``; filter ``m`` rises from
    edge ``m`` to 1 at edge ``m + 1`` and falls to 0 at edge ``m + 2``, linearly in Hz.
    """
    top_mel = 2595.0 * np.log10(1.0 + (sample_rate / 2) / 700.0)
    edges_hz = 700.0 * (10.0 ** (np.linspace(0.0, top_mel, n_mels + 2) / 2595.0) - 1.0)
    bins_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


# --- spectral change at joins -------------------------------------------------------------------------


def boundary_discontinuity(
    wave: np.ndarray,
    sample_rate: int,
    boundaries_s: Sequence[float],
    *,
    context_s: float = 0.25,
    gap_s: float | Sequence[float] = 0.0,
) -> list[JoinScore]:
    """One ``JoinScore`` per boundary, in the order given; units are bels (log10 power) and seconds.

    ``across``: L2 norm over mel bands of the difference between the mean ``log_mel`` spectrum of the frames
    centred in ``[b - c, b)`` and of those centred in ``[b + gap, b + gap + c)``. ``inside``: the same probe
    placed in the middle of the segment before and of the segment after (segments run between neighbouring
    joins and the track's ends, crossfades excluded), averaged; it is how much the sound changes anyway.
    The context ``c`` is ``context_s``, shrunk so both inside probes fit in their segments; a join left with
    less than ``MIN_CONTEXT_S`` is skipped (NaN scores, ``skipped`` says why). ``gap_s``: one value, or one
    per boundary (the crossfade of each join).
    """
    mel = log_mel(wave, sample_rate)
    times = frame_times_s(len(mel), sample_rate)
    return [
        _score_join(mel, times, b, gap, left, right, context_s)
        for b, gap, left, right in _segments(boundaries_s, gap_s, wave.shape[-1] / sample_rate)
    ]


def _score_join(mel, times, b: float, gap: float, left: float, right: float, context_s: float) -> JoinScore:
    """Score the join at ``b`` whose neighbouring segments are ``[left, b)`` and ``[b + gap, right)``."""
    before_s, after_s = b - left, right - (b + gap)
    context = min(context_s, (before_s - gap) / 2, (after_s - gap) / 2)
    if context < MIN_CONTEXT_S:
        why = f"only {max(context, 0.0):.3f} s of context fits (segments {before_s:.3f} s and {after_s:.3f} s)"
        return JoinScore(b, math.nan, math.nan, math.nan, max(context, 0.0), skipped=why)
    across = _probe(mel, times, b, gap, context)
    inside = float(np.mean([
        _probe(mel, times, (left + b - gap) / 2, gap, context),  # probe centred in [left, b)
        _probe(mel, times, (b + right) / 2, gap, context),  # probe centred in [b + gap, right)
    ]))  # fmt: skip
    ratio = (across + DISTANCE_FLOOR_B) / (inside + DISTANCE_FLOOR_B)
    return JoinScore(b, across, inside, ratio, context)


def _probe(mel: np.ndarray, times: np.ndarray, at_s: float, gap_s: float, context_s: float) -> float:
    """L2 distance between the mean spectrum of ``[at - c, at)`` and of ``[at + gap, at + gap + c)``."""
    before = _mean_spectrum(mel, times, at_s - context_s, at_s)
    after = _mean_spectrum(mel, times, at_s + gap_s, at_s + gap_s + context_s)
    return float(np.linalg.norm(before - after))


def _mean_spectrum(mel: np.ndarray, times: np.ndarray, start_s: float, stop_s: float) -> np.ndarray:
    """Mean log-mel spectrum of the frames centred in ``[start_s, stop_s)``; NaN if there are none."""
    lo, hi = np.searchsorted(times, [start_s, stop_s], side="left")
    if hi <= lo:
        return np.full(mel.shape[1], np.nan)
    return mel[lo:hi].astype(np.float64).mean(axis=0)


def _segments(boundaries_s: Sequence[float], gap_s, total_s: float):
    """``(b, gap, left, right)`` per boundary: its segment before starts at ``left`` (the previous join's
    crossfade end, or 0) and its segment after ends at ``right`` (the next join, or the track's end)."""
    bounds = [float(b) for b in boundaries_s]
    gaps = _gaps(gap_s, len(bounds))
    order = sorted(range(len(bounds)), key=bounds.__getitem__)
    out = [None] * len(bounds)
    for rank, i in enumerate(order):
        prev = order[rank - 1] if rank else None
        left = 0.0 if prev is None else bounds[prev] + gaps[prev]
        right = bounds[order[rank + 1]] if rank + 1 < len(order) else total_s
        out[i] = (bounds[i], gaps[i], left, right)
    return out


# --- level at joins -----------------------------------------------------------------------------------


def loudness_jumps_db(
    wave: np.ndarray,
    sample_rate: int,
    boundaries_s: Sequence[float],
    *,
    window_s: float = 0.5,
    gap_s: float | Sequence[float] = 0.0,
) -> list[float]:
    """Per boundary ``b``: ``|level(b + gap, b + gap + w) - level(b - w, b)|`` in dB, where ``level`` is
    ``10 log10(mean square + 1e-12)`` over all channels (RMS level in dBFS, -120 for silence).

    Windows are cut at the track's ends; a boundary with an empty window on either side gives NaN.
    """
    jumps = []
    for b, gap in zip(boundaries_s, _gaps(gap_s, len(boundaries_s))):
        before = _level_db(wave, sample_rate, b - window_s, b)
        after = _level_db(wave, sample_rate, b + gap, b + gap + window_s)
        jumps.append(abs(after - before))
    return jumps


def _level_db(wave: np.ndarray, sample_rate: int, start_s: float, stop_s: float) -> float:
    """RMS level in dBFS of ``wave[:, start:stop]`` (cut to the wave); NaN for an empty window."""
    start = max(0, round(float(start_s) * sample_rate))
    stop = min(wave.shape[-1], round(float(stop_s) * sample_rate))
    if stop <= start:
        return math.nan
    mean_square = float(np.mean(np.square(wave[:, start:stop], dtype=np.float64)))
    return 10.0 * math.log10(mean_square + MEAN_SQUARE_FLOOR)


# --- helpers ------------------------------------------------------------------------------------------


def _gaps(gap_s: float | Sequence[float], n_boundaries: int) -> list[float]:
    """``gap_s`` as one float per boundary: a single value repeated, or a sequence of the right length."""
    gaps = [float(gap_s)] * n_boundaries if np.isscalar(gap_s) else [float(g) for g in gap_s]
    if len(gaps) != n_boundaries:
        raise ValueError(f"gap_s has {len(gaps)} values: expected one, or one per boundary ({n_boundaries})")
    if any(not math.isfinite(g) or g < 0 for g in gaps):
        raise ValueError(f"gap_s = {gap_s}: must be >= 0 seconds")
    return gaps


def _mono(wave: np.ndarray) -> np.ndarray:
    """The mean of the channels of a float ``[channels, samples]`` wave, as float32."""
    if not isinstance(wave, np.ndarray) or wave.ndim != 2 or not np.issubdtype(wave.dtype, np.floating):
        shape = getattr(wave, "shape", None)
        raise ValueError(f"wave must be a float array [channels, samples], got {type(wave).__name__} {shape}")
    return wave.mean(axis=0, dtype=np.float64).astype(np.float32)


def _frame_hop(sample_rate: int, frame_s: float, hop_s: float) -> tuple[int, int]:
    """Frame and hop lengths in samples; both at least one sample."""
    if sample_rate <= 0 or frame_s <= 0 or hop_s <= 0:
        raise ValueError(f"sample_rate, frame_s and hop_s must be > 0, got {sample_rate}, {frame_s}, {hop_s}")
    return max(1, round(frame_s * sample_rate)), max(1, round(hop_s * sample_rate))
