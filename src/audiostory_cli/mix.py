"""Composition: rendered clips -> one track (timeline placement, equal-power crossfades, peak and loudness).

Pure numpy. The timeline is cut into sample-exact spans, ``start = round(start_s * sample_rate)``, so
consecutive events tile without gaps or drift and the track is ``round(total_s * sample_rate)`` long.
An event followed on its layer by another starting where it ends is a *join*: its clip is rendered
``span + tail`` samples long, the tail fading out (cos) under the next clip's fade in (sin).
Beds (layers 1..3) also fade in and out inside their own span where nothing joins them.

Loudness follows ITU-R BS.1770-4: K-weighting, 400 ms blocks with 75 % overlap, absolute gate
-70 LUFS, relative gate -10 LU. The K-weighting IIR runs exactly, without scipy, as block matrix
products (see ``_all_pole_chunk``): 10 minutes of stereo 44.1 kHz audio take about a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import AudiostoryError, InputError
from .story import Clip, Event, Plan, Track

JOIN_TOLERANCE_S = 1e-6  # an event joins its predecessor when it starts within this of its end
DEFAULT_PEAK_DBFS = -1.0  # peak ceiling of every track: 1 dB below full scale

LUFS_OFFSET = -0.691  # BS.1770 constant: a 997 Hz full-scale sine on one channel reads -3.01 LUFS
GATE_BLOCK_S = 0.4  # BS.1770 gating block: 400 ms
GATE_HOPS_PER_BLOCK = 4  # blocks overlap by 75 %: a new block every 100 ms
ABSOLUTE_GATE_LUFS = -70.0  # blocks quieter than this never count
RELATIVE_GATE_LU = -10.0  # blocks this far below the gated mean do not count either
MIN_LOUDNESS_SAMPLE_RATE = 8000  # below this the K-weighting shelf (1682 Hz) nears Nyquist

_FILTER_BLOCK_SAMPLES = 64  # samples per block of the block IIR: one 64x64 matrix product each
_HISTORY_GROUP_BLOCKS = 64  # blocks per group when solving the block-to-block state recurrence
_HISTORY_LEVELS = 4  # recursion levels prepared: 64**4 groups, far beyond one chunk of blocks


# --- timeline -----------------------------------------------------------------------------------------


def join_fade_s(plan: Plan, crossfade_s: float) -> dict[int, float]:
    """Crossfade length in seconds for each event that has a successor on its layer starting where it ends.

    ``min(crossfade_s, before.duration_s / 2, after.duration_s / 2)``: a clip shorter than twice the
    fade gets a proportionally shorter fade. Events without such a successor are absent.
    """
    _check_crossfade_s(crossfade_s)
    return {
        before.index: min(crossfade_s, before.duration_s / 2, after.duration_s / 2)
        for before, after in _joins(plan)
    }


def clip_samples(plan: Plan, crossfade_s: float, sample_rate: int) -> dict[int, int]:
    """Samples the decoder must render for each event index: its span plus its join tail, if any."""
    _check_sample_rate(sample_rate)
    tails = _tail_samples(plan, crossfade_s, sample_rate)
    spans = _event_spans(plan, sample_rate)
    return {index: end - start + tails.get(index, 0) for index, (start, end) in spans.items()}


def _joins(plan: Plan) -> list[tuple[Event, Event]]:
    """(before, after) pairs of consecutive same-layer events that touch, in timeline order per layer."""
    joins = []
    for layer in sorted({e.layer for e in plan.events}):
        ordered = sorted((e for e in plan.events if e.layer == layer), key=lambda e: e.start_s)
        for before, after in zip(ordered, ordered[1:]):
            if abs(after.start_s - before.end_s) <= JOIN_TOLERANCE_S:
                joins.append((before, after))
    return joins


def _event_spans(plan: Plan, sample_rate: int) -> dict[int, tuple[int, int]]:
    """(start, end) sample of every event; a joined event starts exactly where its predecessor ends."""
    spans = {
        e.index: (_to_samples(e.start_s, sample_rate), _to_samples(e.end_s, sample_rate)) for e in plan.events
    }
    for before, after in _joins(plan):
        start = spans[before.index][1]
        spans[after.index] = (start, max(start, spans[after.index][1]))
    return spans


def _tail_samples(plan: Plan, crossfade_s: float, sample_rate: int) -> dict[int, int]:
    return {i: _to_samples(fade_s, sample_rate) for i, fade_s in join_fade_s(plan, crossfade_s).items()}


def _to_samples(seconds: float, sample_rate: int) -> int:
    return int(round(seconds * sample_rate))


# --- composition --------------------------------------------------------------------------------------


def compose(
    plan: Plan, clips: Sequence[Clip], crossfade_s: float, *, peak_dbfs: float = DEFAULT_PEAK_DBFS
) -> Track:
    """Place every clip at its event's start sample, crossfade joins, sum beds, limit the peak."""
    # 1. Check inputs: one clip per event, one format, lengths as ``clip_samples`` asked for
    _check_crossfade_s(crossfade_s)
    _check_peak_dbfs(peak_dbfs)
    sample_rate, channels = _clip_format(clips)
    by_index = _clips_by_event(plan, clips)
    expected = clip_samples(plan, crossfade_s, sample_rate)
    spans = _event_spans(plan, sample_rate)
    tails = _tail_samples(plan, crossfade_s, sample_rate)
    for index, clip in by_index.items():
        _check_clip(clip, index, expected[index], spans[index], sample_rate, channels)

    # 2. Place each clip with its fades; what runs past the end is cut
    heads = {after.index: tails[before.index] for before, after in _joins(plan)}
    total_samples = _to_samples(plan.total_s, sample_rate)
    wave = np.zeros((channels, total_samples), dtype=np.float32)
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
        _add_at(wave, by_index[event.index].wave, gain, start)

    # 3. Peak control
    wave = _limit_peak(wave, peak_dbfs)
    return Track(wave=wave, sample_rate=sample_rate, clips=tuple(clips))


def _bed_fade_samples(event: Event, span_samples: int, crossfade_s: float, sample_rate: int) -> int:
    """Fade in/out inside a bed's own span, min(crossfade_s, duration / 2); foreground events get none."""
    if event.layer == 0:
        return 0
    fade = _to_samples(min(crossfade_s, event.duration_s / 2), sample_rate)
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


def _limit_peak(wave: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale the whole wave down so its peak is the ceiling; never up. Non-finite samples are an error."""
    if not np.isfinite(wave).all():
        raise AudiostoryError("the mixed track has non-finite samples (NaN or inf); check the decoder output")
    ceiling = 10 ** (peak_dbfs / 20)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    wave = wave.astype(np.float32, copy=False)
    if peak > ceiling:
        wave = (wave * np.float32(ceiling / peak)).astype(np.float32, copy=False)
        np.clip(wave, -ceiling, ceiling, out=wave)  # absorb float32 rounding of the scale
    return wave


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
    if not _is_real(crossfade_s) or crossfade_s < 0:
        raise InputError(f"crossfade = {crossfade_s}: must be a number of seconds >= 0")


def _check_peak_dbfs(peak_dbfs: float) -> None:
    if not _is_real(peak_dbfs) or peak_dbfs > 0:
        raise InputError(f"peak = {peak_dbfs} dBFS: must be a number <= 0 (full scale)")


def _check_sample_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudiostoryError(f"sample_rate = {sample_rate!r}: must be a positive integer (Hz)")


def _check_wave(wave: np.ndarray) -> None:
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


def _is_real(value: object) -> bool:
    number = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    return number and math.isfinite(value)


# --- loudness (ITU-R BS.1770-4) -----------------------------------------------------------------------


def loudness_lufs(wave: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of ``wave`` [channels, samples] in LUFS; ``-inf`` for silence.

    Every channel is weighted 1.0 (right for mono and stereo). A wave shorter than one 400 ms
    block is measured as a single block.
    """
    _check_wave(wave)
    _check_sample_rate(sample_rate)
    if sample_rate < MIN_LOUDNESS_SAMPLE_RATE:
        raise InputError(f"sample_rate = {sample_rate}: loudness needs at least {MIN_LOUDNESS_SAMPLE_RATE} Hz")
    block_power = _gating_block_power(wave, sample_rate)
    with np.errstate(divide="ignore"):
        block_lufs = LUFS_OFFSET + 10 * np.log10(block_power)
    kept = block_power[block_lufs > ABSOLUTE_GATE_LUFS]
    if kept.size == 0:
        return float("-inf")
    relative_gate_lufs = LUFS_OFFSET + 10 * np.log10(kept.mean()) + RELATIVE_GATE_LU
    kept = block_power[(block_lufs > ABSOLUTE_GATE_LUFS) & (block_lufs > relative_gate_lufs)]
    return float(LUFS_OFFSET + 10 * np.log10(kept.mean()))


def normalize_loudness(
    wave: np.ndarray, sample_rate: int, target_lufs: float, *, peak_dbfs: float = DEFAULT_PEAK_DBFS
) -> np.ndarray:
    """Gain ``wave`` to ``target_lufs``, then apply the peak ceiling (which may leave it a little quieter).

    Silence (loudness ``-inf``) is returned unchanged.
    """
    if not _is_real(target_lufs) or not ABSOLUTE_GATE_LUFS < target_lufs <= 0:
        raise InputError(f"loudness target = {target_lufs} LUFS: must be between {ABSOLUTE_GATE_LUFS:g} and 0")
    _check_peak_dbfs(peak_dbfs)
    current_lufs = loudness_lufs(wave, sample_rate)
    if current_lufs == float("-inf"):
        return wave
    gain = 10 ** ((target_lufs - current_lufs) / 20)
    return _limit_peak((wave * gain).astype(np.float32), peak_dbfs)


def _gating_block_power(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Channel-summed mean square of the K-weighted wave per 400 ms gating block (one per 100 ms)."""
    hop_samples = _to_samples(GATE_BLOCK_S / GATE_HOPS_PER_BLOCK, sample_rate)
    block_samples = hop_samples * GATE_HOPS_PER_BLOCK
    hop_energy = 0.0
    total_energy = 0.0
    for channel in wave:
        energies, total = _hop_energy(channel, sample_rate, hop_samples)
        hop_energy = hop_energy + energies
        total_energy += total
    if wave.shape[1] < block_samples:
        return np.array([total_energy / max(wave.shape[1], 1)])
    window = np.ones(GATE_HOPS_PER_BLOCK)
    return np.convolve(hop_energy, window, mode="valid") / block_samples


def _hop_energy(channel: np.ndarray, sample_rate: int, hop_samples: int) -> tuple[np.ndarray, float]:
    """Sum of squares of the K-weighted channel per complete hop, and over the whole channel."""
    energies = []
    total = 0.0
    for filtered in _k_weighted(channel, sample_rate, chunk_samples=hop_samples * _FILTER_BLOCK_SAMPLES):
        whole_hops = filtered[: len(filtered) // hop_samples * hop_samples].reshape(-1, hop_samples)
        energies.append(np.einsum("ij,ij->i", whole_hops, whole_hops))
        total += float(np.einsum("i,i->", filtered, filtered))
    return (np.concatenate(energies) if energies else np.zeros(0)), total


# --- K-weighting filter: an exact IIR as block matrix products ----------------------------------------


def _k_weighting_sections(sample_rate: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(b, a) of the two BS.1770 K-weighting biquads at any sample rate: pre-filter shelf, RLB high-pass.

    Built from the analogue prototypes (as libebur128 does); at 48 kHz they equal the standard's table.
    """
    k = math.tan(math.pi * 1681.974450955533 / sample_rate)  # shelf corner frequency, Hz
    gain_db, q = 3.999843853973347, 0.7071752369554196
    vh = 10 ** (gain_db / 20)
    vb = vh**0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf_b = np.array([vh + vb * k / q + k * k, 2 * (k * k - vh), vh - vb * k / q + k * k]) / a0
    shelf_a = np.array([a0, 2 * (k * k - 1), 1 - k / q + k * k]) / a0

    k = math.tan(math.pi * 38.13547087602444 / sample_rate)  # high-pass corner frequency, Hz
    q = 0.5003270373238773
    a0 = 1 + k / q + k * k
    high_pass_b = np.array([1.0, -2.0, 1.0])
    high_pass_a = np.array([a0, 2 * (k * k - 1), 1 - k / q + k * k]) / a0
    return (shelf_b, shelf_a), (high_pass_b, high_pass_a)


@dataclass(frozen=True)
class _AllPoleKernel:
    """Matrices that run ``y[n] = v[n] - a1 y[n-1] - a2 y[n-2]`` one block of L samples at a time.

    The history entering a block, (y[-1], y[-2]), is carried in a basis (``to_state``) where the free
    response rows are orthonormal: in the plain basis the high-pass's double pole near z = 1 costs
    about three digits.
    """

    toeplitz: np.ndarray  # [L, L]: block output from block input, starting from rest
    free: np.ndarray  # [2, L]: block output from the entering state, orthonormal rows
    to_state: np.ndarray  # [2, 2]: state from the plain history (y[-1], y[-2])
    levels: tuple[tuple[np.ndarray, np.ndarray], ...]  # per recursion level: (step powers, within-group matrix)


@lru_cache(maxsize=8)
def _k_weighting_filter(sample_rate: int) -> tuple[np.ndarray, tuple[_AllPoleKernel, ...]]:
    """The FIR part of both biquads (5 taps) and one all-pole kernel per biquad."""
    (shelf_b, shelf_a), (high_pass_b, high_pass_a) = _k_weighting_sections(sample_rate)
    kernels = tuple(_all_pole_kernel(tuple(a), _FILTER_BLOCK_SAMPLES) for a in (shelf_a, high_pass_a))
    return np.convolve(shelf_b, high_pass_b), kernels


def _all_pole_kernel(a: tuple[float, ...], block_samples: int) -> _AllPoleKernel:
    order = len(a) - 1
    impulse = _all_pole_direct(np.eye(1, block_samples)[0], a, [0.0] * order)
    index = np.arange(block_samples)
    lag = index[None, :] - index[:, None]
    toeplitz = np.where(lag >= 0, impulse[np.clip(lag, 0, None)], 0.0)
    free = np.stack([_all_pole_direct(np.zeros(block_samples), a, list(np.eye(order)[k])) for k in range(order)])
    left, scale, free_orthonormal = np.linalg.svd(free, full_matrices=False)
    to_state = left * scale
    step = np.linalg.solve(to_state, free[:, ::-1][:, :order] @ to_state)
    levels = []
    for _ in range(_HISTORY_LEVELS):
        powers = _matrix_powers(step, _HISTORY_GROUP_BLOCKS + 1)
        levels.append((powers, _within_group(powers, _HISTORY_GROUP_BLOCKS)))
        step = powers[-1]
    return _AllPoleKernel(toeplitz=toeplitz, free=free_orthonormal, to_state=to_state, levels=tuple(levels))


def _all_pole_direct(v: np.ndarray, a: Sequence[float], history: list[float]) -> np.ndarray:
    """Reference recursion for one short block; ``history[k]`` is y[-(k+1)]."""
    past = list(history)
    out = np.empty(len(v))
    for n, value in enumerate(v):
        y = value - sum(a[k + 1] * past[k] for k in range(len(past)))
        past = [y] + past[:-1]
        out[n] = y
    return out


def _k_weighted(channel: np.ndarray, sample_rate: int, chunk_samples: int) -> Iterator[np.ndarray]:
    """The K-weighted channel, float64, in chunks of ``chunk_samples`` (a multiple of the filter block)."""
    b, kernels = _k_weighting_filter(sample_rate)
    histories = [np.zeros(2) for _ in kernels]
    for start in range(0, len(channel), chunk_samples):
        stop = min(start + chunk_samples, len(channel))
        filtered = _fir_chunk(channel, start, stop, b)
        for i, kernel in enumerate(kernels):
            filtered = _all_pole_chunk(filtered, kernel, histories[i])
            histories[i] = filtered[::-1][:2]
        yield filtered[: stop - start]


def _fir_chunk(x: np.ndarray, start: int, stop: int, b: np.ndarray) -> np.ndarray:
    """``sum_k b[k] x[n-k]`` for n in [start, stop), with x = 0 before the first sample."""
    taps = len(b) - 1
    lead = min(taps, start)
    segment = np.concatenate([np.zeros(taps - lead), x[start - lead : stop].astype(np.float64)])
    length = stop - start
    return sum(b[k] * segment[taps - k : taps - k + length] for k in range(len(b)))


def _all_pole_chunk(v: np.ndarray, kernel: _AllPoleKernel, history: np.ndarray) -> np.ndarray:
    """All-pole filter of ``v`` (zero-padded to whole blocks) entering with plain ``history``.

    Per block: output = input @ toeplitz + entering state @ free; the states entering the blocks
    follow a linear recurrence solved by ``_history_recurrence``.
    """
    block_samples = kernel.toeplitz.shape[0]
    n_blocks = -(-len(v) // block_samples)
    blocks = np.zeros(n_blocks * block_samples)
    blocks[: len(v)] = v
    zero_state = blocks.reshape(n_blocks, block_samples) @ kernel.toeplitz
    drive = zero_state[:, ::-1][:, :2] @ kernel.to_state  # each block's own share of the next state
    entering = (history @ kernel.to_state)[None, :]
    states = _history_recurrence(np.concatenate([entering, drive]), kernel.levels)[1:]
    return (zero_state + states @ kernel.free).ravel()


def _history_recurrence(drive: np.ndarray, levels: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """s[0] = 0, s[i+1] = drive[i] + s[i] @ step: groups of G steps as one matrix product, recursively.

    ``levels[0]`` holds the powers of ``step`` and the within-group matrix; ``levels[1]`` the same
    for ``step**G``, the step from one group to the next.
    """
    n_steps, order = drive.shape
    group = _HISTORY_GROUP_BLOCKS
    powers, within = levels[0]
    if n_steps <= group or len(levels) == 1:
        return _history_loop(drive, powers[1])
    n_groups = -(-n_steps // group)
    padded = np.zeros((n_groups * group, order))
    padded[:n_steps] = drive
    inside = (padded.reshape(n_groups, group * order) @ within).reshape(n_groups, group + 1, order)
    entering = _history_recurrence(inside[:, group], levels[1:])
    states = inside[:, :group] + np.einsum("gn,knm->gkm", entering, powers[:group])
    return states.reshape(-1, order)[:n_steps]


def _history_loop(drive: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The same recurrence step by step, in Python floats: a few dozen 2x2 steps, no BLAS call each."""
    step_rows = step.tolist()
    state = [0.0] * drive.shape[1]
    states = [state]
    for row in drive[:-1].tolist():
        state = [d + sum(s * m[j] for s, m in zip(state, step_rows)) for j, d in enumerate(row)]
        states.append(state)
    return np.array(states).reshape(drive.shape)


def _matrix_powers(step: np.ndarray, count: int) -> np.ndarray:
    powers = [np.eye(step.shape[0])]
    for _ in range(count - 1):
        powers.append(powers[-1] @ step)
    return np.stack(powers)


def _within_group(powers: np.ndarray, group: int) -> np.ndarray:
    """[G*N, (G+1)*N] block matrix: block (j, k) = step**(k-1-j) for j < k, else 0.

    One group's drives, as a row, times it give their share of the state at positions 0..G.
    """
    order = powers.shape[-1]
    lag = np.arange(group + 1)[None, :] - 1 - np.arange(group)[:, None]
    blocks = np.where((lag >= 0)[..., None, None], powers[np.clip(lag, 0, None)], 0.0)
    return blocks.transpose(0, 2, 1, 3).reshape(group * order, (group + 1) * order)
