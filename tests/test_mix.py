"""Composition: exact lengths, equal-power joins without clicks, beds, peak ceiling, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audiostory_cli.errors import AudiostoryError
from audiostory_cli.mix import (
    clip_samples,
    compose,
    join_fade_s,
)
from audiostory_cli.story import Clip, Event, Plan

FULL_SCALE_DBFS = 0.0  # peak ceiling at full scale: compose leaves signals <= 1.0 as they are


def _event(index: int, start_s: float, duration_s: float, layer: int = 0) -> Event:
    return Event(index=index, caption=f"sound {index}", start_s=start_s, duration_s=duration_s, layer=layer)


def _plan(total_s: float, *events: Event) -> Plan:
    return Plan(prompt="a test story", total_s=total_s, events=tuple(events))


def _constant_clips(plan: Plan, crossfade_s: float, sample_rate: int, values: dict[int, float], channels: int = 1):
    lengths = clip_samples(plan, crossfade_s, sample_rate)
    waves = {e.index: np.full((channels, lengths[e.index]), values[e.index], np.float32) for e in plan.events}
    return [Clip(event=e, wave=waves[e.index], sample_rate=sample_rate) for e in plan.events]


def _fade_in_gain(length: int) -> np.ndarray:
    return np.sin(np.pi / 2 * (np.arange(length) + 0.5) / length)


# --- timeline -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate", [44100, 16000])
def test_output_length_is_exact_for_events_of_a_third_of_a_second(sample_rate):
    events = [_event(i, i / 3, 1 / 3) for i in range(7)]
    plan = _plan(7 / 3, *events)
    clips = _constant_clips(plan, 0.05, sample_rate, {i: 0.1 for i in range(7)}, channels=2)
    track = compose(plan, clips, 0.05)
    assert track.wave.shape == (2, round(7 / 3 * sample_rate))
    assert track.wave.dtype == np.float32
    assert track.sample_rate == sample_rate
    # the spans tile the timeline: lengths minus tails add up to the track, sample for sample
    tails = {i: round(f * sample_rate) for i, f in join_fade_s(plan, 0.05).items()}
    spans = [n - tails.get(i, 0) for i, n in clip_samples(plan, 0.05, sample_rate).items()]
    assert sum(spans) == round(7 / 3 * sample_rate)
    # constant clips crossfaded with equal power never leave a gap of silence
    assert np.min(np.abs(track.wave)) > 0.09


def test_join_fade_is_capped_by_half_of_each_neighbour():
    plan = _plan(1.0, _event(0, 0.0, 0.2), _event(1, 0.2, 0.1), _event(2, 0.3, 0.7))
    fades = join_fade_s(plan, 0.5)
    assert fades == pytest.approx({0: 0.05, 1: 0.05})
    assert 2 not in fades  # the last event has no successor
    lengths = clip_samples(plan, 0.5, 1000)
    assert lengths == {0: 200 + 50, 1: 100 + 50, 2: 700}


def test_events_with_a_gap_do_not_crossfade():
    plan = _plan(2.0, _event(0, 0.0, 0.5), _event(1, 1.0, 1.0))
    assert join_fade_s(plan, 0.1) == {}
    clips = _constant_clips(plan, 0.1, 1000, {0: 0.5, 1: 0.25})
    wave = compose(plan, clips, 0.1, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    np.testing.assert_array_equal(wave[500:1000], 0.0)  # the gap is silence
    np.testing.assert_array_equal(wave[:500], 0.5)
    np.testing.assert_array_equal(wave[1000:], 0.25)


# --- crossfades ---------------------------------------------------------------------------------------


def test_crossfade_gains_sum_to_equal_power():
    sample_rate, crossfade_s = 1000, 0.1
    plan = _plan(2.0, _event(0, 0.0, 1.0), _event(1, 1.0, 1.0))
    ones_then_zeros = _constant_clips(plan, crossfade_s, sample_rate, {0: 1.0, 1: 0.0})
    zeros_then_ones = _constant_clips(plan, crossfade_s, sample_rate, {0: 0.0, 1: 1.0})
    out_gain = compose(plan, ones_then_zeros, crossfade_s, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    in_gain = compose(plan, zeros_then_ones, crossfade_s, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    join = slice(1000, 1100)
    np.testing.assert_allclose(out_gain[join] ** 2 + in_gain[join] ** 2, 1.0, atol=1e-6)
    np.testing.assert_allclose(in_gain[join], _fade_in_gain(100), atol=1e-6)
    np.testing.assert_array_equal(out_gain[:1000], 1.0)  # the earlier clip plays in full up to its end
    np.testing.assert_array_equal(out_gain[1100:], 0.0)  # and its tail ends with the fade
    np.testing.assert_array_equal(in_gain[1100:], 1.0)


def test_join_of_identical_constants_follows_the_power_preserving_curve_without_a_click():
    sample_rate, crossfade_s, level = 1000, 0.1, 0.5
    plan = _plan(2.0, _event(0, 0.0, 1.0), _event(1, 1.0, 1.0))
    clips = _constant_clips(plan, crossfade_s, sample_rate, {0: level, 1: level})
    wave = compose(plan, clips, crossfade_s, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    fade_in = _fade_in_gain(100)
    expected = np.full(2000, level)
    expected[1000:1100] = level * (fade_in + fade_in[::-1])  # correlated: sin + cos, sqrt(2) mid-join
    np.testing.assert_allclose(wave, expected, atol=1e-6)
    max_step = level * math.sqrt(2) * (math.pi / 2) / 100  # steepest slope of level * (sin + cos)
    assert np.max(np.abs(np.diff(wave))) <= max_step + 1e-6


def test_join_of_opposite_signals_has_no_jump_a_hard_cut_would_have():
    sample_rate, crossfade_s = 1000, 0.1
    plan = _plan(2.0, _event(0, 0.0, 1.0), _event(1, 1.0, 1.0))
    clips = _constant_clips(plan, crossfade_s, sample_rate, {0: 0.5, 1: -0.5})
    wave = compose(plan, clips, crossfade_s).wave[0]
    assert np.max(np.abs(np.diff(wave))) < 0.02  # a hard cut would jump by 1.0


def test_clip_shorter_than_twice_the_crossfade_gets_a_shorter_fade():
    sample_rate = 1000
    plan = _plan(1.0, _event(0, 0.0, 0.1), _event(1, 0.1, 0.9))
    assert join_fade_s(plan, 0.5) == {0: pytest.approx(0.05)}
    clips = _constant_clips(plan, 0.5, sample_rate, {0: 1.0, 1: 0.0})
    assert clips[0].wave.shape[1] == 100 + 50
    wave = compose(plan, clips, 0.5, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    np.testing.assert_allclose(wave[100:150], _fade_in_gain(50)[::-1], atol=1e-6)
    np.testing.assert_array_equal(wave[150:], 0.0)


def test_join_within_a_microsecond_tiles_without_a_gap_sample():
    # end 500.4997 samples rounds to 500, start 500.5003 to 501: the join snaps the start to 500
    plan = _plan(1.0, _event(0, 0.0, 0.5005 - 3e-7), _event(1, 0.5005 + 3e-7, 1.0 - 0.5005 - 3e-7))
    lengths = clip_samples(plan, 0.0, 1000)
    assert lengths[0] + lengths[1] == 1000
    clips = _constant_clips(plan, 0.0, 1000, {0: 0.5, 1: 0.25})
    wave = compose(plan, clips, 0.0, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    np.testing.assert_array_equal(wave[:500], 0.5)
    np.testing.assert_array_equal(wave[500:], 0.25)


def test_tail_past_the_end_is_cut():
    plan = _plan(1.0, _event(0, 0.0, 0.5), _event(1, 0.5, 0.5))
    clips = _constant_clips(plan, 0.1, 8000, {0: 0.1, 1: 0.1})
    assert compose(plan, clips, 0.1).wave.shape == (1, 8000)


# --- beds ---------------------------------------------------------------------------------------------


def test_layer_one_bed_is_summed_under_the_foreground_with_its_own_fades():
    sample_rate, crossfade_s = 1000, 0.1
    plan = _plan(2.0, _event(0, 0.0, 2.0), _event(1, 0.5, 1.0, layer=1))
    assert clip_samples(plan, crossfade_s, sample_rate) == {0: 2000, 1: 1000}  # a bed has no tail
    clips = _constant_clips(plan, crossfade_s, sample_rate, {0: 0.25, 1: 0.5})
    wave = compose(plan, clips, crossfade_s, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    fade = _fade_in_gain(100)
    np.testing.assert_array_equal(wave[:500], 0.25)
    np.testing.assert_allclose(wave[500:600], 0.25 + 0.5 * fade, atol=1e-6)
    np.testing.assert_allclose(wave[600:1400], 0.75, atol=1e-6)
    np.testing.assert_allclose(wave[1400:1500], 0.25 + 0.5 * fade[::-1], atol=1e-6)
    np.testing.assert_array_equal(wave[1500:], 0.25)


def test_consecutive_beds_crossfade_and_fade_only_at_their_free_edges():
    sample_rate, crossfade_s = 1000, 0.1
    plan = _plan(3.0, _event(0, 0.0, 3.0), _event(1, 0.5, 1.0, layer=1), _event(2, 1.5, 1.0, layer=1))
    assert clip_samples(plan, crossfade_s, sample_rate) == {0: 3000, 1: 1000 + 100, 2: 1000}
    clips = _constant_clips(plan, crossfade_s, sample_rate, {0: 0.0, 1: 0.5, 2: 0.5})
    wave = compose(plan, clips, crossfade_s, peak_dbfs=FULL_SCALE_DBFS).wave[0]
    fade = _fade_in_gain(100)
    np.testing.assert_allclose(wave[500:600], 0.5 * fade, atol=1e-6)  # free start: fade in
    np.testing.assert_allclose(wave[1500:1600], 0.5 * (fade + fade[::-1]), atol=1e-6)  # the join
    np.testing.assert_allclose(wave[2400:2500], 0.5 * fade[::-1], atol=1e-6)  # free end: fade out


# --- peak control -------------------------------------------------------------------------------------


def test_loud_mix_is_scaled_down_to_the_peak_ceiling():
    plan = _plan(1.0, _event(0, 0.0, 1.0), _event(1, 0.0, 1.0, layer=1))
    clips = _constant_clips(plan, 0.0, 1000, {0: 0.8, 1: 0.8})
    wave = compose(plan, clips, 0.0).wave  # 1.6 before the ceiling
    assert np.max(np.abs(wave)) == pytest.approx(10 ** (-1 / 20), abs=1e-6)
    wave = compose(plan, clips, 0.0, peak_dbfs=-6.0).wave
    assert np.max(np.abs(wave)) == pytest.approx(10 ** (-6 / 20), abs=1e-6)


def test_quiet_mix_is_never_scaled_up():
    plan = _plan(1.0, _event(0, 0.0, 1.0))
    wave = compose(plan, _constant_clips(plan, 0.1, 1000, {0: 0.1}), 0.1).wave
    np.testing.assert_allclose(wave, 0.1, atol=1e-7)


# --- errors -------------------------------------------------------------------------------------------


def test_clip_of_the_wrong_length_is_an_error_naming_the_event():
    plan = _plan(2.0, _event(0, 0.0, 1.0), _event(1, 1.0, 1.0))
    clips = _constant_clips(plan, 0.1, 1000, {0: 0.1, 1: 0.1})
    clips[1] = Clip(event=clips[1].event, wave=np.zeros((1, 1001), np.float32), sample_rate=1000)
    with pytest.raises(AudiostoryError, match=r"event 1 has 1001 samples: expected 1000"):
        compose(plan, clips, 0.1)


def test_clips_of_another_sample_rate_or_channel_count_are_errors_naming_the_event():
    plan = _plan(2.0, _event(0, 0.0, 1.0), _event(1, 1.0, 1.0))
    clips = _constant_clips(plan, 0.0, 1000, {0: 0.1, 1: 0.1})
    other_rate = [clips[0], Clip(event=clips[1].event, wave=clips[1].wave, sample_rate=2000)]
    with pytest.raises(AudiostoryError, match=r"event 1 is at 2000 Hz: expected 1000 Hz"):
        compose(plan, other_rate, 0.0)
    stereo = [clips[0], Clip(event=clips[1].event, wave=np.zeros((2, 1000), np.float32), sample_rate=1000)]
    with pytest.raises(AudiostoryError, match=r"event 1 has 2 channels: expected 1"):
        compose(plan, stereo, 0.0)


def test_missing_or_non_finite_clip_is_an_error_naming_the_event():
    plan = _plan(2.0, _event(0, 0.0, 1.0), _event(1, 1.0, 1.0))
    clips = _constant_clips(plan, 0.0, 1000, {0: 0.1, 1: float("nan")})
    with pytest.raises(AudiostoryError, match="no clip for event 1"):
        compose(plan, clips[:1], 0.0)
    with pytest.raises(AudiostoryError, match="event 1 has non-finite samples"):
        compose(plan, clips, 0.0)
