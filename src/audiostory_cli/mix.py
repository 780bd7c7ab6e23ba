"""Composition: rendered clips -> one track (timeline placement, equal-power crossfades, peak ceiling).

Pure numpy. The timeline is cut into sample-exact spans, ``start = round(start_s * sample_rate)``, so
consecutive events tile without gaps or drift and the track is ``round(total_s * sample_rate)`` long.
An event followed on its layer by another starting where it ends is a *join*: its clip is rendered
``span + tail`` samples long, the tail fading out (cos) under the next clip's fade in (sin).
Beds (layers 1..3) also fade in and out inside their own span where nothing joins them.
Loudness normalisation lives in ``loudness.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import AudiostoryError, InputError
from .story import Clip, Event, Plan, Track

JOIN_TOLERANCE_S = 1e-6  # an event joins its predecessor when it starts within this of its end
from .settings import DEFAULT_PEAK_DBFS  # noqa: E402 - re-exported: the peak ceiling of every track

# --- timeline -----------------------------------------------------------------------------------------


def join_fade_s(plan: Plan, crossfade_s: float) -> dict[int, float]:
    """Crossfade length in seconds for each event that has a successor on its layer starting where it ends.

    ``min(crossfade_s, before.duration_s / 2, after.duration_s / 2)``: a clip shorter than twice the
    fade gets a proportionally shorter fade. Events without such a successor are absent.
    """
    _check_crossfade_s(crossfade_s)
    return {
        before.index: min(crossfade_s, before.duration_s / 2, after.duration_s / 2)
        for before, after in joins(plan)
    }


def clip_samples(plan: Plan, crossfade_s: float, sample_rate: int) -> dict[int, int]:
    """Samples the decoder must render for each event index: its span plus its join tail, if any."""
    check_sample_rate(sample_rate)
    tails = _tail_samples(plan, crossfade_s, sample_rate)
    spans = event_spans(plan, sample_rate)
    return {index: end - start + tails.get(index, 0) for index, (start, end) in spans.items()}


def joins(plan: Plan) -> list[tuple[Event, Event]]:
    """(before, after) pairs of consecutive same-layer events that touch, in timeline order per layer."""
    joins = []
    for layer in sorted({e.layer for e in plan.events}):
        ordered = sorted((e for e in plan.events if e.layer == layer), key=lambda e: e.start_s)
        for before, after in zip(ordered, ordered[1:]):
            if abs(after.start_s - before.end_s) <= JOIN_TOLERANCE_S:
                joins.append((before, after))
    return joins


def event_spans(plan: Plan, sample_rate: int) -> dict[int, tuple[int, int]]:
    """(start, end) sample of every event; a joined event starts exactly where its predecessor ends."""
    spans = {
        e.index: (to_samples(e.start_s, sample_rate), to_samples(e.end_s, sample_rate)) for e in plan.events
    }
    for before, after in joins(plan):
        start = spans[before.index][1]
        spans[after.index] = (start, max(start, spans[after.index][1]))
    return spans


def _tail_samples(plan: Plan, crossfade_s: float, sample_rate: int) -> dict[int, int]:
    return {i: to_samples(fade_s, sample_rate) for i, fade_s in join_fade_s(plan, crossfade_s).items()}


def to_samples(seconds: float, sample_rate: int) -> int:
    return int(round(seconds * sample_rate))


# --- composition --------------------------------------------------------------------------------------


def compose(
    plan: Plan, clips: Sequence[Clip], crossfade_s: float, *, peak_dbfs: float = DEFAULT_PEAK_DBFS
) -> Track:
    """Place every clip at its event's start sample, crossfade joins, sum beds, limit the peak."""
    raw = compose_raw(plan, clips, crossfade_s, peak_dbfs=peak_dbfs)
    return Track(wave=limit_peak(raw, peak_dbfs), sample_rate=clips[0].sample_rate)


def compose_raw(
    plan: Plan, clips: Sequence[Clip], crossfade_s: float, *, peak_dbfs: float = DEFAULT_PEAK_DBFS,
    head_fades: dict[int, int] | None = None,
) -> np.ndarray:  # fmt: skip
    """``compose`` before its peak control: the clips placed, faded and summed, float32 [C, total samples].
    ``head_fades``: samples of fade-in for events whose head crossfades with something outside the plan (the
    recording a story continues)."""
    # 1. Check inputs: one clip per event, one format, lengths as ``clip_samples`` asked for
    _check_crossfade_s(crossfade_s)
    check_peak_dbfs(peak_dbfs)
    sample_rate, channels = _clip_format(clips)
    by_index = _clips_by_event(plan, clips)
    expected = clip_samples(plan, crossfade_s, sample_rate)
    spans = event_spans(plan, sample_rate)
    for index, clip in by_index.items():
        _check_clip(clip, index, expected[index], spans[index], sample_rate, channels)

    # 2. Place each clip with its fades; what runs past the end is cut
    wave = np.zeros((channels, to_samples(plan.total_s, sample_rate)), dtype=np.float32)
    for index, (start, gain) in placements(plan, crossfade_s, sample_rate, head_fades).items():
        _add_at(wave, by_index[index].wave, gain, start)
    return wave


def placements(
    plan: Plan, crossfade_s: float, sample_rate: int, head_fades: dict[int, int] | None = None
) -> dict[int, tuple[int, np.ndarray]]:
    """Where each event's clip goes (its start sample) and its gain curve (fades), in ``plan.events`` order."""
    expected = clip_samples(plan, crossfade_s, sample_rate)
    spans = event_spans(plan, sample_rate)
    tails = _tail_samples(plan, crossfade_s, sample_rate)
    heads = {after.index: tails[before.index] for before, after in joins(plan)}
    heads.update(head_fades or {})
    placed = {}
    for event in plan.events:
        start, end = spans[event.index]
        bed_fade = _bed_fade_samples(event, end - start, crossfade_s, sample_rate)
        gain = _clip_gain(
            expected[event.index],
            end - start,
            head=heads.get(event.index, bed_fade),
            tail=tails.get(event.index, 0),
            bed_fade_out=0 if event.index in tails else bed_fade,
        )
        placed[event.index] = (start, gain)
    return placed


def mix_range(
    placed: dict[int, tuple[int, np.ndarray]], waves: dict[int, np.ndarray], channels: int, first: int, stop: int
) -> np.ndarray:
    """Samples ``[first, stop)`` of the raw mix (``compose_raw``), from the waves of the clips that reach into
    that range (``waves``, by event index; the caller gives every clip that does), float32 [C, stop - first]."""
    out = np.zeros((channels, stop - first), dtype=np.float32)
    for index, (start, gain) in placed.items():
        wave = waves.get(index)
        if wave is None:
            continue
        a, b = max(start, first), min(start + wave.shape[-1], stop)
        if b > a:
            out[:, a - first : b - first] += wave[:, a - start : b - start] * gain[a - start : b - start]
    return out


def _bed_fade_samples(event: Event, span_samples: int, crossfade_s: float, sample_rate: int) -> int:
    """Fade in/out inside a bed's own span, min(crossfade_s, duration / 2); foreground events get none."""
    if event.layer == 0:
        return 0
    fade = to_samples(min(crossfade_s, event.duration_s / 2), sample_rate)
    return min(fade, span_samples // 2)


def _clip_gain(length: int, span: int, *, head: int, tail: int, bed_fade_out: int) -> np.ndarray:
    """Gain over one clip: sin fade in over ``head``, cos fade out over the ``tail`` past the span
    (a join) or over the span's last ``bed_fade_out`` samples (a bed with nothing after it)."""
    gain = np.ones(length, dtype=np.float64)
    fade_in = np.sin(np.pi / 2 * _fade_positions(head))
    gain[: len(fade_in)] *= fade_in[:length]
    if tail:
        gain[span : span + tail] *= np.cos(np.pi / 2 * _fade_positions(tail))[: length - span]
    if bed_fade_out:
        gain[span - bed_fade_out : span] *= np.cos(np.pi / 2 * _fade_positions(bed_fade_out))
    return gain


def _fade_positions(length: int) -> np.ndarray:
    """x in (0, 1) at sample midpoints: cos(pi/2 x)**2 + sin(pi/2 x)**2 == 1 at every sample of a join."""
    return (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)


def _add_at(track: np.ndarray, clip_wave: np.ndarray, gain: np.ndarray, start: int) -> None:
    stop = min(start + clip_wave.shape[-1], track.shape[-1])
    if stop > start:
        track[:, start:stop] += clip_wave[:, : stop - start] * gain[: stop - start]


def limit_peak(wave: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale the whole wave down so its peak is the ceiling; never up. Non-finite samples are an error."""
    if not np.isfinite(wave).all():
        raise AudiostoryError("the mixed track has non-finite samples (NaN or inf); check the decoder output")
    ceiling = 10 ** (peak_dbfs / 20)
    gain = peak_gain(wave, peak_dbfs)
    wave = wave.astype(np.float32, copy=False)
    if gain < 1:
        wave = (wave * np.float32(gain)).astype(np.float32, copy=False)
        np.clip(wave, -ceiling, ceiling, out=wave)  # absorb float32 rounding of the scale
    return wave


def peak_gain(wave: np.ndarray, peak_dbfs: float) -> float:
    """The factor ``limit_peak`` scales ``wave`` by: ceiling / peak where the peak passes the ceiling, else 1."""
    ceiling = 10 ** (peak_dbfs / 20)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    return ceiling / peak if peak > ceiling else 1.0


# --- checks -------------------------------------------------------------------------------------------


def _clip_format(clips: Sequence[Clip]) -> tuple[int, int]:
    """Sample rate and channel count shared by all clips (those of the first clip; checked per clip)."""
    if not clips:
        raise AudiostoryError("no clips to compose: the plan's events were not rendered")
    first = clips[0]
    if np.ndim(first.wave) != 2:
        where, shape = f"clip for event {first.event.index}", np.shape(first.wave)
        raise AudiostoryError(f"{where}: wave must be [channels, samples], got shape {shape}")
    return first.sample_rate, first.wave.shape[0]


def _clips_by_event(plan: Plan, clips: Sequence[Clip]) -> dict[int, Clip]:
    """One clip per plan event, matched by event index, rendering that event's timing and layer."""
    events = {e.index: e for e in plan.events}
    if len(events) != len(plan.events):
        raise AudiostoryError("the plan has two events with the same index; indexes must be unique")
    by_index: dict[int, Clip] = {}
    for clip in clips:
        index = clip.event.index
        if index not in events:
            raise AudiostoryError(f"clip for event {index}: the plan has no event {index}")
        if index in by_index:
            raise AudiostoryError(f"two clips for event {index}: expected exactly one")
        if _placement(clip.event) != _placement(events[index]):
            raise AudiostoryError(f"clip for event {index} renders another timing or layer than plan event {index}")
        by_index[index] = clip
    missing = sorted(set(events) - set(by_index))
    if missing:
        raise AudiostoryError(f"no clip for event {missing[0]}: each plan event needs one ({len(missing)} missing)")
    return by_index


def _placement(event: Event) -> tuple[float, float, int]:
    return event.start_s, event.duration_s, event.layer


def _check_clip(
    clip: Clip, index: int, samples: int, span: tuple[int, int], sample_rate: int, channels: int
) -> None:
    wave = clip.wave
    where = f"clip for event {index}"
    if clip.sample_rate != sample_rate:
        raise AudiostoryError(f"{where} is at {clip.sample_rate} Hz: expected {sample_rate} Hz as the first clip")
    if not isinstance(wave, np.ndarray) or wave.ndim != 2 or not np.issubdtype(wave.dtype, np.floating):
        raise AudiostoryError(f"{where}: wave must be a float array [channels, samples], got {_describe(wave)}")
    if wave.shape[0] != channels:
        raise AudiostoryError(f"{where} has {wave.shape[0]} channels: expected {channels} as the first clip")
    if wave.shape[1] != samples:
        span_samples = span[1] - span[0]
        raise AudiostoryError(
            f"{where} has {wave.shape[1]} samples: expected {samples} "
            f"({span_samples} for its span + {samples - span_samples} crossfade tail at {sample_rate} Hz)"
        )
    if not np.isfinite(wave).all():
        raise AudiostoryError(f"{where} has non-finite samples (NaN or inf)")


def _check_crossfade_s(crossfade_s: float) -> None:
    if not is_real(crossfade_s) or crossfade_s < 0:
        raise InputError(f"crossfade = {crossfade_s}: must be a number of seconds >= 0")


def check_peak_dbfs(peak_dbfs: float) -> None:
    if not is_real(peak_dbfs) or peak_dbfs > 0:
        raise InputError(f"peak = {peak_dbfs} dBFS: must be a number <= 0 (full scale)")


def check_sample_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudiostoryError(f"sample_rate = {sample_rate!r}: must be a positive integer (Hz)")


def check_wave(wave: np.ndarray) -> None:
    if not isinstance(wave, np.ndarray) or wave.ndim != 2 or not np.issubdtype(wave.dtype, np.floating):
        raise AudiostoryError(f"wave must be a float array [channels, samples], got {_describe(wave)}")
    if wave.shape[0] == 0:
        raise AudiostoryError("wave has no channels: expected [channels, samples] with channels >= 1")
    if not np.isfinite(wave).all():
        raise AudiostoryError("wave has non-finite samples (NaN or inf)")


def _describe(wave: object) -> str:
    if isinstance(wave, np.ndarray):
        return f"{wave.dtype} array of shape {wave.shape}"
    return type(wave).__name__


def is_real(value: object) -> bool:
    number = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    return number and math.isfinite(value)
