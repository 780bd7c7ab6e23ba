"""``benchmarks/edit_speed.py`` on the tiny TangoFlux: it times a full render and an edit and prints the
ratio and both joins' metrics (the machinery; the figures themselves come from real sizes)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path


def _benchmark():
    spec = importlib.util.spec_from_file_location("edit_speed", Path("benchmarks/edit_speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edit_speed_prints_the_ratio_and_the_join_metrics(capsys):
    assert _benchmark().main(["--events", "4", "--event-s", "2", "--steps", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    ratio = float(re.search(r"edit / full render: ([0-9.]+)", out).group(1))
    assert 0 < ratio < 5
    assert out.count("spectral jump ratio") == 2 and "samples changed:" in out
