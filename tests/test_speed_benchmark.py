"""benchmarks/speed.py at tiny size: it runs, prints its stage table and the projected speedup, and the upstream
loop it re-implements writes what AudioStory writes (32 kHz, 3 s linear crossfades)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_the_table_and_the_projected_speedup_last(speed, tiny_decoder, tmp_path, capsys):
    out = tmp_path / "speed.json"
    args = ["--decoder", str(tiny_decoder), "--steps", "2", "--device", "cpu", "--dtype", "fp32",
            "--duration", "4", "--events", "2", "--out", str(out)]  # fmt: skip
    assert speed.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"speedup at 50 steps: \d+\.\d\dx \(measured at 2 steps on cpu\)", lines[-1])
    table = "\n".join(lines[:-1])
    for config in ("upstream", "default", "no-continuation"):
        assert re.search(rf"^{config}\s+fp32\s", table, re.MULTILINE), table
    report = json.loads(out.read_text())
    rows = {r["config"]: r for r in report["rows"]}
    for row in rows.values():
        assert row["step_s"] > 0 and row["vae_s"] > 0 and row["peak_bytes"] > 0
        assert row["projected_s"] == pytest.approx(row["fixed_s"] + 50 * row["step_s"])
    speedup = float(re.search(r"(\d+\.\d+)x", lines[-1]).group(1))
    assert speedup == pytest.approx(rows["upstream"]["projected_s"] / rows["default"]["projected_s"], abs=0.01)


def test_upstream_crossfade_is_linear_and_three_seconds(speed):
    sr = 100
    a, b = np.ones((2, 500), np.float32), np.zeros((2, 400), np.float32)
    track = speed._smooth_concatenate([a, b], sr, 3.0)
    assert track.shape == (2, 500 + 400 - 300)
    np.testing.assert_allclose(track[0, 200:500], np.linspace(1, 0, 300), atol=1e-6)


def test_synthetic_plan_tiles_the_duration(speed):
    plan = speed.synthetic_plan(60.0, 7)
    assert len(plan.events) == 7
    assert plan.events[-1].end_s == pytest.approx(60.0)
    assert all(abs(b.start_s - a.end_s) < 1e-6 for a, b in zip(plan.events, plan.events[1:]))
