"""Loudness (ITU-R BS.1770-4): reference readings, gating, exact K-weighting, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from audiostory_cli.loudness import loudness_lufs, normalize_loudness


def _sine(sample_rate: int, seconds: float, amplitude: float = 1.0, hz: float = 997.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("sample_rate", [44100, 48000])
def test_full_scale_997_hz_sine_reads_the_bs1770_reference(sample_rate):
    sine = _sine(sample_rate, 5.0)
    assert loudness_lufs(sine[None], sample_rate) == pytest.approx(-3.01, abs=0.01)
    assert loudness_lufs(np.stack([sine, np.zeros_like(sine)]), sample_rate) == pytest.approx(-3.01, abs=0.01)
    assert loudness_lufs(np.stack([sine, sine]), sample_rate) == pytest.approx(0.0, abs=0.01)


def test_gates_ignore_silence_and_much_quieter_passages():
    sample_rate = 16000
    sine = _sine(sample_rate, 4.0, amplitude=0.5)
    alone = loudness_lufs(sine[None], sample_rate)
    with_silence = np.concatenate([sine, np.zeros(4 * sample_rate, np.float32)])[None]
    with_whisper = np.concatenate([sine, sine * 10 ** (-30 / 20)])[None]
    # ungated, half the blocks would pull the reading 3 dB down; the blocks straddling the change
    # pass both gates and cost about 0.2 dB
    assert loudness_lufs(with_silence, sample_rate) == pytest.approx(alone, abs=0.25)  # absolute gate
    assert loudness_lufs(with_whisper, sample_rate) == pytest.approx(alone, abs=0.25)  # relative gate


def test_k_weighting_matches_a_direct_form_biquad_cascade_across_chunks():
    from audiostory_cli.loudness import _k_weighted, _k_weighting_sections

    sample_rate = 8000
    x = np.random.default_rng(0).standard_normal(3000)
    got = np.concatenate(list(_k_weighted(x, sample_rate, chunk_samples=640)))
    expected = x
    for b, a in _k_weighting_sections(sample_rate):
        y, x1, x2, y1, y2 = np.empty_like(expected), 0.0, 0.0, 0.0, 0.0
        for n, x0 in enumerate(expected):
            y[n] = b[0] * x0 + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2
            x1, x2, y1, y2 = x0, x1, y[n], y1
        expected = y
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_normalize_reaches_the_target_and_leaves_silence_alone():
    sample_rate = 16000
    sine = _sine(sample_rate, 3.0, amplitude=0.01, hz=500.0)
    louder = normalize_loudness(np.stack([sine, sine]), sample_rate, -16.0)
    assert loudness_lufs(louder, sample_rate) == pytest.approx(-16.0, abs=0.01)
    silence = np.zeros((2, sample_rate), np.float32)
    assert loudness_lufs(silence, sample_rate) == float("-inf")
    assert normalize_loudness(silence, sample_rate, -16.0) is silence


def test_normalize_keeps_the_peak_ceiling():
    sample_rate = 16000
    clicks = np.zeros((1, 2 * sample_rate), np.float32)
    clicks[0, ::400] = 0.5  # very peaky: reaching -5 LUFS would need a peak far above full scale
    louder = normalize_loudness(clicks, sample_rate, -5.0, peak_dbfs=-1.0)
    assert np.max(np.abs(louder)) == pytest.approx(10 ** (-1 / 20), abs=1e-6)
    assert loudness_lufs(louder, sample_rate) < -5.0
