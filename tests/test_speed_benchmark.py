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
    assert re.match(r"cpu: .+; features: .+; torch capability \S+; \d+ threads on \d+ CPUs", lines[0]), lines[0]


def test_efficiency_table_counts_flops_from_the_shapes_against_the_measured_peak(speed, tiny_decoder, tiny_sa3_small,
                                                                                tmp_path, capsys):  # fmt: skip
    """Both decoders in one run: per stage FLOPs from the shapes, the fraction of the matmul peak measured in
    the same run, and the two last lines (TangoFlux's projected speedup, SA3's measured realtime factor)."""
    out = tmp_path / "speed.json"
    args = ["--decoder", str(tiny_decoder), "--sa3", str(tiny_sa3_small), "--steps", "1", "--sa3-steps", "2",
            "--device", "cpu", "--dtype", "fp32", "--duration", "4", "--events", "2", "--configs", "upstream,default",
            "--out", str(out)]  # fmt: skip
    assert speed.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"speedup at 50 steps: \d+\.\d\dx \(measured at 1 steps on cpu\)", lines[-2]), lines[-2]
    assert re.match(r"realtime factor at 2 steps: \d+\.\dx \(Stable Audio 3, a 4 s story rendered in ", lines[-1])
    report = json.loads(out.read_text())
    rows = {(r["decoder"], r["config"]): r for r in report["rows"]}
    assert set(rows) == {("TangoFlux", "upstream"), ("TangoFlux", "default"), ("Stable Audio 3", "default")}
    sa3 = rows[("Stable Audio 3", "default")]
    realtime = float(re.search(r"(\d+\.\d)x", lines[-1]).group(1))
    assert realtime == pytest.approx(4.0 / (sa3["measured_s"] - sa3["load_s"]), abs=0.06)
    for name in ("TangoFlux", "Stable Audio 3"):
        assert report["matmul_peak_flops"][name]["fp32"] > 0 and report["matmul_peak_flops"][name]["bf16"] > 0
    # The upstream loop denoises a 645-frame window per clip, ours only the clip's frames: more DiT FLOPs a step,
    # and every Linear of the tiny TangoFlux DiT counted (2 M K N) at least once per step.
    up, ours = rows[("TangoFlux", "upstream")], rows[("TangoFlux", "default")]
    assert up["flops"]["dit"] > 2 * ours["flops"]["dit"] > 0
    for row in (up, ours, sa3):
        assert row["flops"]["vae"] > 0 and row["stage_dtypes"]["dit"] == "fp32"
        m, k, n = row["largest"]["dit"]
        assert row["flops"]["dit"] >= 2 * m * k * n * row["steps"]
    table = lines[lines.index(next(x for x in lines if x.startswith("efficiency"))) + 3 :]
    fractions = [line for line in table if re.match(r"(TangoFlux|Stable Audio 3)\s+\S+\s+fp32\s+DiT step", line)]
    assert len(fractions) == 3 and all(re.search(r"\d+ %$", line) for line in fractions), table


def test_flop_counter_formulas(speed):
    """The counted FLOPs are the formulas of the docstring: 2 M K N, 2 B Cout Lout Cin/g k, 4 B H Lq Lk D."""
    import torch

    timer = speed.Timer(torch.device("cpu"))
    counter = speed.FlopCounter(timer)
    linear, conv = torch.nn.Linear(8, 16), torch.nn.Conv1d(4, 6, 3, groups=2)
    up = torch.nn.ConvTranspose1d(6, 4, 4, stride=2)
    with counter.active(), timer("dit"), torch.no_grad():
        linear(torch.zeros(2, 5, 8))
        conv(torch.zeros(1, 4, 10))  # Lout = 8
        up(torch.zeros(1, 6, 7))
        torch.nn.functional.scaled_dot_product_attention(*(torch.zeros(2, 3, 5, 4),) * 3)
    expected = 2 * 10 * 8 * 16 + 2 * 6 * 8 * 2 * 3 + 2 * 6 * 7 * 4 * 4 + 4 * 2 * 3 * 5 * 5 * 4
    assert counter.flops == {"dit": expected}
    assert counter.largest["dit"] == (10, 8, 16)


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
