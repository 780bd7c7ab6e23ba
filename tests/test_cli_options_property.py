"""Every option of generate, render and batch under hostile values (hypothesis): huge ints, NaN, inf, negative,
empty, unicode, NUL, very long strings. Whatever is typed: exit 0, 1 or 2, no traceback, a few lines on
stderr, and no file left behind when it failed.

The models' loaders are replaced by a sentinel, so a value that passes every up-front check stops right where
the first model would load (cheap examples); the last test renders the tiny models for real, with valid
values of every setting, and holds what the run wrote against what the plan says.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from audiostory_cli.cli import app

PROMPT = "rain on a tin roof, then thunder"
MAX_ERROR_LINES = 4  # a usage error: "Usage:", "Try ...", the boxed line; ours: the line and the debug hint

HOSTILE = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "-0", "1.5", "2**64", "auto", "full",
                     "\x00", "a\x00b", "é", "☃" * 40, "../..", "/", ".", "~", "-", "--", "9" * 400, "1" + "0" * 5000,
                     "x" * 300 + ".wav", "ü" * 200 + ".wav", "a/" * 300 + "x.wav", "story.m4a", "story.xyz"]),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=40),
    st.text(min_size=200, max_size=3000),
)
# option -> the commands it belongs to
OPTIONS = {
    "--duration": ("generate", "batch"), "--seed": ("generate", "render", "batch"),
    "--steps": ("generate", "render", "batch"), "--guidance": ("generate", "render", "batch"),
    "--crossfade": ("generate", "render", "batch"), "--coherence": ("generate", "render", "batch"),
    "--loudness": ("generate", "render", "batch"), "--batch-size": ("generate", "render", "batch"),
    "--max-events": ("generate", "batch"), "--window": ("generate", "render", "batch"),
    "--device": ("generate", "render", "batch"), "--dtype": ("generate", "render", "batch"),
    "--output": ("generate", "render", "batch"), "--planner": ("generate", "batch"),
    "--decoder": ("generate", "render", "batch"), "--bridge": ("generate", "render", "batch"),
    "--model": ("generate", "render", "batch"), "--tone": ("generate",), "--format": ("batch",),
}  # fmt: skip
CASES = [(command, option) for option, commands in OPTIONS.items() for command in commands]


class ReachedModelLoad(Exception):
    """Raised where the first model would load: every up-front check passed."""


@pytest.fixture
def no_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise ReachedModelLoad

    monkeypatch.setattr("audiostory_cli.registry.load_models", refuse)
    monkeypatch.setattr("audiostory_cli.batch.local.load_batch_models", refuse)


def _invoke(tmp_path, command: str, option: str, value: str, tiny_decoder, tiny_planner):
    """Run ``command`` with ``option=value`` in an empty folder; every other argument valid."""
    base = {
        "generate": ["generate", PROMPT, "--output=story.wav", f"--planner={tiny_planner}"],
        "render": ["render", "plan.json", "--output=story.wav"],
        "batch": ["batch", "prompts.txt", "--outdir=out", f"--planner={tiny_planner}"],
    }[command]
    base += [f"--decoder={tiny_decoder}", "--steps=1", "--device=cpu"]
    flag = f"{option}=" if option != "--output" or command != "batch" else "--outdir="
    args = [a for a in base if not a.startswith(flag)] + [flag + value]
    (tmp_path / "plan.json").write_text(json.dumps({"total_s": 2, "events": [
        {"caption": "rain on a tin roof", "start_s": 0, "duration_s": 2}]}))  # fmt: skip
    (tmp_path / "prompts.txt").write_text(PROMPT + "\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)


def _check(result, tmp_path, before):
    if isinstance(result.exception, ReachedModelLoad):
        return  # accepted: every check passed, and nothing was written before the models load
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert 1 <= len(result.stderr.strip().splitlines()) <= MAX_ERROR_LINES, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a failed run left a file"


@pytest.mark.parametrize(("command", "option"), CASES, ids=[f"{c}{o}" for c, o in CASES])
def test_any_value_of_any_option_is_a_clean_exit(command, option, tiny_decoder, tiny_planner, tmp_path_factory,
                                                 no_models):  # fmt: skip
    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(value=HOSTILE)
    def check(value):
        folder = tmp_path_factory.mktemp("run")
        before = ["plan.json", "prompts.txt"]
        result = _invoke(folder, command, option, value, tiny_decoder, tiny_planner)
        _check(result, folder, before)

    check()


# --- valid values render, with the tiny models ------------------------------------------------------------------

VALID = st.fixed_dictionaries({
    "--seed": st.integers(0, 2**63 - 1), "--crossfade": st.floats(0, 10), "--coherence": st.floats(0, 1),
    "--loudness": st.floats(-70, 0), "--batch-size": st.sampled_from(["auto", "1", "3"]),
    "--window": st.sampled_from(["auto", "full"]), "--guidance": st.floats(0, 50),
})  # fmt: skip


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=VALID)
def test_valid_values_of_every_setting_render_what_the_plan_says(values, tiny_decoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    args = [f"{flag}={value!r}" if isinstance(value, float) else f"{flag}={value}" for flag, value in values.items()]
    plan = {"total_s": 2.5, "events": [{"caption": "rain on a tin roof", "start_s": 0, "duration_s": 1.5},
                                       {"caption": "thunder rolls", "start_s": 1.5, "duration_s": 1.0}]}  # fmt: skip
    (folder / "plan.json").write_text(json.dumps(plan))
    result = CliRunner().invoke(app, ["render", str(folder / "plan.json"), "-o", str(folder / "s.wav"),
                                      f"--decoder={tiny_decoder}", "--steps=1", "--device=cpu", *args])  # fmt: skip
    if result.exit_code != 0:  # e.g. a crossfade longer than a clip: refused in one line, nothing written
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
        assert sorted(p.name for p in folder.iterdir()) == ["plan.json"]
        return
    wave, sample_rate = sf.read(folder / "s.wav", always_2d=True)
    saved = json.loads((folder / "s.plan.json").read_text())["render"]
    assert wave.shape[0] == round(2.5 * sample_rate) and np.isfinite(wave).all()
    assert saved["seed"] == values["--seed"] and math.isclose(saved["crossfade_s"], values["--crossfade"])
    assert saved["batch_size"] == (1 if values["--batch-size"] == "auto" else int(values["--batch-size"]))
