"""Join metrics on synthetic audio: a continuous sine, a sine that turns into noise, a level step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from audiostory_cli.coherence import (
    MIN_CONTEXT_S,
    JoinScore,
    boundary_discontinuity,
    frame_times_s,
    log_mel,
    loudness_jumps_db,
    mel_filterbank,
)

SAMPLE_RATE = 16000  # low rate keeps the tests fast; the metrics take any rate


def sine(seconds: float, hz: float = 440.0, amplitude: float = 0.5, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.tile(amplitude * np.sin(2 * np.pi * hz * t), (channels, 1)).astype(np.float32)


def noise(seconds: float, amplitude: float = 0.3, channels: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal((channels, int(seconds * SAMPLE_RATE)))).astype(np.float32)


# --- log_mel -------------------------------------------------------------------------------------------


def test_log_mel_shape_units_and_peak_band():
    wave = sine(2.0, hz=1000.0, amplitude=1.0)
    mel = log_mel(wave, SAMPLE_RATE, n_mels=40)
    frame, hop = round(0.046 * SAMPLE_RATE), round(0.0116 * SAMPLE_RATE)
    assert mel.shape == (1 + (wave.shape[1] - frame) // hop, 40)
    assert mel.dtype == np.float32
    # A full-scale sine puts 0.25 of power in its bin (log10 ~ -0.6); the floor is -10 bels.
    assert -1.5 < mel.max() < 0.0
    assert mel.min() >= -10.0 - 1e-6
    filters = mel_filterbank(SAMPLE_RATE, 1024, 40)
    centres_hz = np.fft.rfftfreq(1024, 1 / SAMPLE_RATE) @ filters.T / filters.sum(axis=1)
    assert abs(centres_hz[mel.mean(axis=0).argmax()] - 1000.0) < 100.0


def test_log_mel_pads_a_wave_shorter_than_one_frame_and_silence_is_the_floor():
    mel = log_mel(np.zeros((1, 100), dtype=np.float32), SAMPLE_RATE)
    assert mel.shape == (1, 64)
    np.testing.assert_allclose(mel, -10.0, atol=1e-5)


def test_frame_times_are_frame_centres():
    times = frame_times_s(3, SAMPLE_RATE)
    frame, hop = round(0.046 * SAMPLE_RATE), round(0.0116 * SAMPLE_RATE)
    np.testing.assert_allclose(times, (np.arange(3) * hop + frame / 2) / SAMPLE_RATE)


def test_log_mel_rejects_a_wave_without_channels_axis():
    with pytest.raises(ValueError, match=r"\[channels, samples\]"):
        log_mel(np.zeros(1000, dtype=np.float32), SAMPLE_RATE)


# --- boundary_discontinuity ----------------------------------------------------------------------------


def test_a_continuous_sine_has_no_discontinuity():
    wave = sine(4.0)
    [score] = boundary_discontinuity(wave, SAMPLE_RATE, [2.0])
    assert isinstance(score, JoinScore) and score.skipped is None
    assert score.ratio <= 1.2
    assert score.across < 0.05  # bels, L2 over 64 bands: nothing changes


def test_a_sine_that_turns_into_noise_is_a_large_discontinuity():
    wave = np.concatenate([sine(2.0), noise(2.0)], axis=1)
    [score] = boundary_discontinuity(wave, SAMPLE_RATE, [2.0])
    assert score.across > 10 * score.inside
    assert score.ratio > 10


def test_gap_skips_a_crossfade_between_the_windows():
    # A 0.5 s linear crossfade from sine to noise starting at 2 s: with gap_s = 0.5 the after-window is pure noise.
    ramp = np.clip((np.arange(int(4.0 * SAMPLE_RATE)) / SAMPLE_RATE - 2.0) / 0.5, 0, 1).astype(np.float32)
    wave = sine(4.0) * (1 - ramp) + noise(4.0) * ramp
    [touching] = boundary_discontinuity(wave, SAMPLE_RATE, [2.0])
    [gapped] = boundary_discontinuity(wave, SAMPLE_RATE, [2.0], gap_s=[0.5])
    assert gapped.across > touching.across


def test_boundaries_near_the_ends_and_each_other_shrink_context_or_are_skipped():
    wave = np.concatenate([sine(3.0), noise(3.0)], axis=1)
    scores = boundary_discontinuity(wave, SAMPLE_RATE, [3.0, 0.3, 5.96, 3.05], context_s=0.25)
    assert len(scores) == 4
    assert [s.boundary_s for s in scores] == [3.0, 0.3, 5.96, 3.05]
    assert scores[1].skipped is None and scores[1].context_s == pytest.approx(0.15)  # half the first 0.3 s
    for skipped in (scores[0], scores[2], scores[3]):  # 3.0 and 3.05 are 50 ms apart; 5.96 is 40 ms from the end
        assert skipped.skipped and "context" in skipped.skipped
        assert skipped.context_s < MIN_CONTEXT_S
        assert math.isnan(skipped.across) and math.isnan(skipped.ratio)


def test_no_boundaries_gives_no_scores():
    assert boundary_discontinuity(sine(1.0), SAMPLE_RATE, []) == []
    assert loudness_jumps_db(sine(1.0), SAMPLE_RATE, []) == []


def test_silence_against_silence_has_ratio_one():
    [score] = boundary_discontinuity(np.zeros((2, 2 * SAMPLE_RATE), np.float32), SAMPLE_RATE, [1.0])
    assert score.across == 0.0 and score.inside == 0.0 and score.ratio == 1.0


def test_gap_per_boundary_must_match_the_boundaries():
    with pytest.raises(ValueError, match="one per boundary"):
        boundary_discontinuity(sine(4.0), SAMPLE_RATE, [1.0, 2.0], gap_s=[0.1])


# --- loudness_jumps_db ---------------------------------------------------------------------------------


def test_a_continuous_sine_has_no_loudness_jump():
    [jump] = loudness_jumps_db(sine(4.0), SAMPLE_RATE, [2.0])
    assert isinstance(jump, float)
    assert jump < 0.1


def test_a_12_db_step_is_a_12_db_jump():
    wave = np.concatenate([noise(2.0, seed=1), noise(2.0, seed=2) * 10 ** (-12 / 20)], axis=1)
    jumps = loudness_jumps_db(wave, SAMPLE_RATE, [2.0, 2.0], gap_s=[0.0, 0.25])
    assert jumps == pytest.approx([12.0, 12.0], abs=0.5)


def test_loudness_windows_are_cut_at_the_ends():
    wave = sine(2.0)
    jumps = loudness_jumps_db(wave, SAMPLE_RATE, [0.1, 1.95, 0.0, 2.0])
    assert len(jumps) == 4
    assert jumps[0] < 0.2 and jumps[1] < 0.2  # shorter windows, same level
    assert math.isnan(jumps[2]) and math.isnan(jumps[3])  # nothing before 0 s, nothing after the end
