"""Resumable batches: a real ``audiostory batch`` process killed with SIGKILL, then run again.

Each crash test starts the command as a subprocess on the tiny models. ``AUDIOSTORY_TEST_PAUSE_AT`` makes the
thread that reaches one chosen point (planning, a denoising step, a step of writing the pair) stop there and
create a flag file; the test then kills the process with a real SIGKILL and runs the command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audiostory_cli.batch.manifest import read_manifest
from audiostory_cli.cli import app

PROMPTS = (
    "a storm reaches a quiet harbor, a ship's bell rings",
    "a campfire at night, wood crackles, an owl calls",
    "a morning train journey, doors close, wheels on rails",
    "a blacksmith at work, the forge roars, a hammer rings",
    "a library at closing time, pages turn, a door clicks shut",
    "a mountain stream in spring, water over stones, birdsong",
    "a busy market, voices, a cart on cobbles",
    "a thunderstorm over a city, rain on windows, distant thunder",
)
FAST = ["--duration", "1.5", "--steps", "2", "--device", "cpu"]
WAIT_S = 300  # longest wait for a run to reach its pause point on a busy machine


@pytest.fixture
def models(tiny_planner, tiny_decoder):
    return ["--planner", str(tiny_planner), "--decoder", str(tiny_decoder)]


def _prompts(tmp_path, count: int):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:count]) + "\n")
    return path


def _command(prompts, outdir, models, *extra) -> list[str]:
    return [sys.executable, "-m", "audiostory_cli", "batch", str(prompts), "-o", str(outdir), *models, *FAST, *extra]


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _run(prompts, outdir, models, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(prompts, outdir, models, *extra, "--json"), env=_env(), capture_output=True, text=True, timeout=900
    )


def _kill_when(condition, command, env, log) -> None:
    """Start ``command``, SIGKILL it as soon as ``condition()`` holds; fail if it ends first."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + WAIT_S
    try:
        while not condition():
            if process.poll() is not None:
                pytest.fail(f"the batch ended (exit {process.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the batch did not reach the kill point in {WAIT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _kill_at(point: str, prompts, outdir, models, tmp_path, *extra) -> None:
    flag = tmp_path / "paused"
    flag.unlink(missing_ok=True)
    env = _env(AUDIOSTORY_TEST_PAUSE_AT=point, AUDIOSTORY_TEST_PAUSE_FILE=str(flag))
    _kill_when(flag.exists, _command(prompts, outdir, models, *extra), env, tmp_path / "killed.log")


def _stories(outdir) -> dict[str, tuple[int, int]]:
    """Audio name -> (its mtime, its plan's mtime), for every audio file; each must have its plan."""
    stories = {}
    for audio in sorted(p for p in outdir.glob("*.wav") if not p.name.startswith(".")):
        plan = audio.with_name(audio.stem + ".plan.json")
        assert plan.exists(), f"{audio.name} has no plan beside it"
        stories[audio.name] = (audio.stat().st_mtime_ns, plan.stat().st_mtime_ns)
    return stories


def _leftovers(outdir) -> list[str]:
    return sorted(p.name for p in outdir.iterdir() if ".partial" in p.name)


def _statuses(result) -> dict[int, str]:
    return {r["line"]: r["status"] for r in map(json.loads, result.stdout.splitlines())}


def _check_resumed(prompts, outdir, models, before, count: int) -> None:
    """Run again: everything finished, what was finished untouched, no partial file; a third run renders
    nothing and exits 0."""
    again = _run(prompts, outdir, models)
    assert again.returncode == 0, again.stderr[-3000:]
    after = _stories(outdir)
    assert len(after) == count
    assert {name: after[name] for name in before} == before  # the finished stories were not rewritten
    assert _leftovers(outdir) == []
    statuses = _statuses(again)
    assert sum(s == "skipped" for s in statuses.values()) == len(before)
    assert sum(s == "ok" for s in statuses.values()) == count - len(before)
    third = _run(prompts, outdir, models)
    assert third.returncode == 0, third.stderr[-3000:]
    assert set(_statuses(third).values()) == {"skipped"}
    assert _stories(outdir) == after
    lines = read_manifest(outdir / "manifest.jsonl")
    assert len(lines) == len(before) + 2 * count  # every run's records, none lost, none torn


# --- SIGKILL at chosen points --------------------------------------------------------------------------------


KILL_POINTS = [
    pytest.param("plan:2:0", id="planning", marks=pytest.mark.slow),
    pytest.param("step:2:1", id="rendering"),
    pytest.param("write:2:1", id="writing-audio-partial", marks=pytest.mark.slow),
    pytest.param("write:2:2", id="writing-both-partials", marks=pytest.mark.slow),
    pytest.param("write:2:4", id="writing-plan-placed-audio-not"),
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_batch_killed_at_any_point_resumes_where_it_stopped(point, models, tmp_path):
    prompts, outdir = _prompts(tmp_path, 3), tmp_path / "out"
    _kill_at(point, prompts, outdir, models, tmp_path)
    before = _stories(outdir)
    first = "001-a-storm-reaches-a-quiet-harbor-a-ship-s-bell.wav"
    if point.startswith("plan:"):  # story 2 is planned while story 1 renders: story 1 may be done or not
        assert set(before) <= {first}
    else:
        assert list(before) == [first]  # story 2 is not there
    if point.startswith("write:2:"):
        assert _leftovers(outdir)  # the killed run's partial files, for the next run to clear
    _check_resumed(prompts, outdir, models, before, 3)


def test_eight_stories_killed_after_the_second_then_run_twice(models, tmp_path):
    """The issue's check: no pause hook; the kill lands as soon as the manifest records the second story."""
    prompts, outdir = _prompts(tmp_path, 8), tmp_path / "out"
    manifest = outdir / "manifest.jsonl"

    def two_done() -> bool:
        return sum(r.status == "ok" for r in read_manifest(manifest)) >= 2

    _kill_when(two_done, _command(prompts, outdir, models), _env(), tmp_path / "killed.log")
    before = _stories(outdir)
    assert 2 <= len(before) < 8
    _check_resumed(prompts, outdir, models, before, 8)


@pytest.mark.slow
def test_force_killed_after_removing_the_old_audio_leaves_no_audio_without_its_plan(models, tmp_path):
    prompts, outdir = _prompts(tmp_path, 2), tmp_path / "out"
    assert _run(prompts, outdir, models).returncode == 0
    first = _stories(outdir)
    _kill_at("write:1:3", prompts, outdir, models, tmp_path, "--force")
    assert list(_stories(outdir)) == [list(first)[1]]  # story 1's old audio went first; its old plan is not a story
    again = _run(prompts, outdir, models)
    assert again.returncode == 0 and _statuses(again) == {1: "ok", 2: "skipped"}
    assert _leftovers(outdir) == []


# --- what counts as finished -------------------------------------------------------------------------------


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_a_changed_setting_or_line_renders_again_and_force_renders_all(cli, models, tmp_path):
    prompts, outdir = tmp_path / "prompts.jsonl", tmp_path / "out"
    lines = [{"prompt": PROMPTS[0], "output": "a.wav"}, {"prompt": PROMPTS[1], "output": "b.wav", "seed": 4}]
    prompts.write_text("\n".join(map(json.dumps, lines)) + "\n")
    run = lambda *extra: cli("batch", prompts, "-o", outdir, *models, *FAST, "--json", *extra)
    assert _statuses(run()) == {1: "ok", 2: "ok"}
    assert _statuses(run()) == {1: "skipped", 2: "skipped"}
    lines[1]["seed"] = 5
    prompts.write_text("\n".join(map(json.dumps, lines)) + "\n")
    assert _statuses(run()) == {1: "skipped", 2: "ok"}
    assert _statuses(run("--steps", "3")) == {1: "ok", 2: "ok"}  # a render setting is part of the request
    assert _statuses(run("--steps", "3", "--force")) == {1: "ok", 2: "ok"}
    plan = json.loads((outdir / "b.plan.json").read_text())
    assert plan["request"]["seed"] == 5 and plan["render"]["steps"] == 3


def test_duplicate_output_names_fail_before_any_work(cli, models, tmp_path):
    prompts, outdir = tmp_path / "prompts.jsonl", tmp_path / "out"
    lines = [{"prompt": PROMPTS[0], "output": "a.wav"}, {"prompt": PROMPTS[1]}, {"prompt": PROMPTS[2], "output": "a"}]
    prompts.write_text("\n".join(map(json.dumps, lines)) + "\n")
    result = cli("batch", prompts, "-o", outdir, *models, *FAST)
    assert result.exit_code == 1
    assert "lines 1 and 3 both write a.wav" in " ".join(result.stderr.split())
    assert not outdir.exists()


def test_planning_ahead_changes_no_sample(cli, models, tmp_path):
    prompts = _prompts(tmp_path, 3)
    for name, flag in (("ahead", "--overlap"), ("plain", "--no-overlap")):
        assert cli("batch", prompts, "-o", tmp_path / name, *models, *FAST, flag).exit_code == 0
    names = sorted(p.name for p in (tmp_path / "plain").glob("*.wav"))
    assert names == sorted(p.name for p in (tmp_path / "ahead").glob("*.wav")) and len(names) == 3
    for name in names:
        a, b = (sf.read(tmp_path / folder / name, dtype="float32")[0] for folder in ("ahead", "plain"))
        assert np.array_equal(a, b), name


def test_a_batch_plan_with_its_recorded_request_renders_the_same_samples(cli, models, tmp_path):
    prompts, outdir = _prompts(tmp_path, 1), tmp_path / "out"
    assert cli("batch", prompts, "-o", outdir, *models, *FAST).exit_code == 0
    (audio,) = [p for p in outdir.glob("*.wav")]
    plan = audio.with_name(audio.stem + ".plan.json")
    assert json.loads(plan.read_text())["request"]["prompt"] == PROMPTS[0]
    again = tmp_path / "again.wav"
    result = cli("render", plan, "-o", again, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert np.array_equal(sf.read(audio, dtype="float32")[0], sf.read(again, dtype="float32")[0])
