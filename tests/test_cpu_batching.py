"""``--batch-size auto`` on a CPU: decided by timing the DiT's own matrix shapes on this machine, once, then cached."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from audiostory_cli import cpu_batching
from audiostory_cli.cpu_batching import CANDIDATE, CACHE_FILE, cpu_batch_size, linear_shapes, measure_gain
from audiostory_cli.pipeline import PROBE_CLIP_S, auto_batch_size

SHAPES = [(64, 128, 3), (128, 64, 1)]


def test_linear_shapes_counts_each_shape_most_flops_first():
    module = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 32), nn.Conv1d(4, 4, 3))
    assert linear_shapes(module) == [(8, 32, 2), (32, 8, 1)]


def _timed_as(monkeypatch, cost):
    """Products timed by ``cost(rows)`` instead of a clock: the arithmetic of the gain, exactly."""
    monkeypatch.setattr(cpu_batching, "_best", lambda run: cost(run().shape[0]))


def test_the_gain_is_what_a_row_saves_in_a_batch(monkeypatch):
    _timed_as(monkeypatch, lambda rows: float(rows))  # a row costs the same however many: nothing saved
    assert measure_gain(10, SHAPES, torch.float32) == pytest.approx(0.0)
    _timed_as(monkeypatch, lambda rows: 30.0 + rows)  # a fixed cost per product, shared by a batch
    assert measure_gain(10, SHAPES, torch.float32) == pytest.approx(1 - (30 + 40) / (4 * (30 + 10)))
    _timed_as(monkeypatch, lambda rows: rows**1.5)  # tall products are slower a row: batching costs
    assert measure_gain(10, SHAPES, torch.float32) < 0


def test_a_batch_is_used_only_where_it_pays_and_the_choice_is_measured_once(monkeypatch, tmp_path):
    calls = []
    gains = {torch.float32: 0.3, torch.bfloat16: 0.01}
    monkeypatch.setattr(cpu_batching, "measure_gain", lambda rows, shapes, dtype: calls.append(dtype) or gains[dtype])
    assert cpu_batch_size(100, SHAPES, torch.float32) == CANDIDATE
    assert cpu_batch_size(100, SHAPES, torch.bfloat16) == 1
    assert cpu_batch_size(100, SHAPES, torch.float32) == CANDIDATE and calls == [torch.float32, torch.bfloat16]
    saved = json.loads((tmp_path / "cache" / CACHE_FILE).read_text())
    assert sorted(v["batch"] for v in saved.values()) == [1, CANDIDATE]
    assert cpu_batch_size(101, SHAPES, torch.float32) == CANDIDATE and len(calls) == 3  # other rows: measured


def test_a_broken_or_unwritable_cache_only_means_measuring_again(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cpu_batching, "measure_gain", lambda *args: calls.append(1) or 0.5)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE).write_text("{not json")
    assert cpu_batch_size(100, SHAPES, torch.float32) == CANDIDATE
    assert json.loads((cache / CACHE_FILE).read_text())  # rewritten whole
    monkeypatch.setenv("AUDIOSTORY_CACHE", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("")  # the cache folder cannot be made
    assert cpu_batch_size(100, SHAPES, torch.float32) == CANDIDATE and len(calls) == 2


@pytest.mark.parametrize("folder", ["tiny_decoder", "tiny_sa3_small"])
def test_auto_on_a_cpu_measures_the_loaded_decoders_dit(folder, request, monkeypatch):
    from audiostory_cli import registry

    ref = str(request.getfixturevalue(folder))
    decoder = registry.load_decoder(ref, device=torch.device("cpu"), dtype=torch.float32)
    seen = []
    monkeypatch.setattr(cpu_batching, "measure_gain", lambda rows, shapes, dtype: seen.append((rows, shapes)) or 0.5)
    rows, dit = decoder.batch_probe(round(PROBE_CLIP_S * decoder.caps.sample_rate))
    limit = getattr(decoder, "max_batch_size", lambda: CANDIDATE)()
    assert auto_batch_size(decoder) == min(CANDIDATE, limit)
    assert seen == [(rows, linear_shapes(dit))] and rows > 0 and seen[0][1]
    monkeypatch.setattr(decoder, "max_batch_size", lambda: 2, raising=False)  # memory bounds the measured choice
    assert auto_batch_size(decoder) == 2


def test_the_measurement_runs_on_this_cpu():
    gain = measure_gain(16, SHAPES, torch.float32)
    assert -1.0 < gain < 1.0
