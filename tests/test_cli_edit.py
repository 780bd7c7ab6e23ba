"""``audiostory edit``, ``extend`` and ``generate --continue-from`` on the command line: bad input is refused
with one line before any model loads (the plan names a decoder that does not exist, so a message about it
would mean a model was being loaded), and one real edit end to end on the tiny Stable Audio 3 Small."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audiostory_cli import audio_io


@pytest.fixture
def rendered_plan(tmp_path) -> Path:
    """A plan that says it was rendered, by a decoder that is not on this machine."""
    plan = json.loads(Path("examples/plan.json").read_text())
    plan["render"] = {"seed": 0, "steps": 2, "decoder": str(tmp_path / "no-such-decoder")}
    path = tmp_path / "story.plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--event", "9", "--reroll"], 1, "event 9: the story has events 0 to 4"),
        (["--event", "2"], 2, "nothing to change"),
        (["--event", "2", "--reroll", "--seed", "3"], 2, "not both"),
        (["--vary", "2"], 2, "--vary needs --strength"),
        (["--vary", "2", "--strength", "0"], 1, "strength = 0"),
        (["--vary", "2", "--strength", "1.5"], 1, "strength = 1.5"),
        (["--event", "2", "--strength", "0.5", "--reroll"], 2, "--strength goes with --vary"),
        (["--inpaint", "5"], 2, "START:END"),
        (["--inpaint", "9:3"], 2, "START:END"),
        (["--inpaint", "20:99"], 1, "must be START:END with 0 <= START < END <= 24"),
        (["--inpaint", "nan:3"], 2, "START:END"),
        (["--event", "1", "--vary", "2", "--strength", "0.5"], 2, "exactly one"),
        ([], 2, "exactly one"),
        (["--event", "1", "--duration", "-3"], 2, "> 0"),
        (["--event", "1", "--caption", ""], 1, "caption has 0 characters"),
    ],
)
def test_bad_edits_are_refused_before_any_model_loads(run, rendered_plan, tmp_path, args, code, message):
    result = run("edit", rendered_plan, "-o", tmp_path / "out.wav", *args)
    assert result.exit_code == code, result.output
    assert message in result.output and "no-such-decoder" not in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.wav").exists()


def test_edit_refuses_to_overwrite_the_story_and_an_unrendered_plan(run, rendered_plan, tmp_path):
    (tmp_path / "story.wav").write_bytes(b"")
    result = run("edit", rendered_plan, "-o", tmp_path / "story.wav", "--event", "1", "--reroll")
    assert result.exit_code == 1 and "would overwrite the story being edited" in result.output
    result = run("edit", "examples/plan.json", "-o", tmp_path / "x.wav", "--event", "1", "--reroll")
    assert result.exit_code == 1 and "has not been rendered" in result.output


def test_continue_from_bad_recordings_are_one_line(run, tmp_path):
    silent = tmp_path / "silent.wav"
    audio_io.write_audio(silent, np.zeros((2, 44100), np.float32), 44100)
    short = tmp_path / "short.wav"
    audio_io.write_audio(short, 0.1 * np.ones((2, 100), np.float32), 44100)
    six = tmp_path / "six.wav"
    import soundfile

    soundfile.write(six, 0.1 * np.ones((44100, 6), np.float32), 44100)
    (tmp_path / "text.wav").write_text("not audio")
    cases = [(silent, "silent"), (six, "has 6 channels"), (tmp_path / "text.wav", "not a readable audio file"),
             (tmp_path / "missing.wav", "no such file"), (tmp_path, "is a folder")]  # fmt: skip
    for path, message in cases:
        result = run("generate", "then the storm passes", "--continue-from", path, "-o", tmp_path / "o.wav",
                     "--decoder", tmp_path / "no-such-decoder", "--planner", tmp_path / "no-such-planner")  # fmt: skip
        assert result.exit_code == 1 and message in result.output, (path, result.output)
        assert "no-such" not in result.output


def test_edit_then_render_on_the_command_line(run, tiny_sa3_small, tmp_path):
    plan = json.loads(Path("examples/plan.json").read_text())
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    story = tmp_path / "story.wav"
    assert run("render", tmp_path / "plan.json", "--decoder", tiny_sa3_small, "--steps", "2", "--device", "cpu",
               "-o", story).exit_code == 0  # fmt: skip
    result = run("edit", tmp_path / "story.plan.json", "--event", "2", "--reroll", "-o", tmp_path / "v2.wav",
                 "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "event 2: seed" in result.output
    again = run("render", tmp_path / "v2.plan.json", "-o", tmp_path / "again.wav", "--device", "cpu")
    assert again.exit_code == 0, again.output
    a, b = audio_io.read_audio(tmp_path / "v2.wav")[0], audio_io.read_audio(tmp_path / "again.wav")[0]
    assert np.array_equal(a, b)
    old = audio_io.read_audio(story)[0]
    start = round(14.0 * 44100)  # event 2 starts at 14 s: everything before it is the old file's
    assert np.array_equal(a[:, :start], old[:, :start]) and not np.array_equal(a, old)


def test_batch_lines_continue_recordings(run, tiny_planner, tiny_sa3_small, tmp_path):
    t = np.arange(2 * 44100) / 44100
    audio_io.write_audio(tmp_path / "in.wav", (0.2 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32), 44100)
    lines = [
        {"prompt": "the storm passes", "duration": 3, "output": "a.wav", "continue_from": "in.wav"},
        {"prompt": "a quiet night", "duration": 3, "output": "b.wav", "continue_from": "in.wav", "include_input": False},
        {"prompt": "nothing there", "duration": 3, "output": "c.wav", "continue_from": "missing.wav"},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    result = run("batch", prompts, "-o", out, "--planner", tiny_planner, "--decoder", tiny_sa3_small,
                 "--steps", "2", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1 and "missing.wav: no such file" in result.output  # the third line alone
    a, b = audio_io.read_audio(out / "a.wav")[0], audio_io.read_audio(out / "b.wav")[0]
    assert a.shape[1] > b.shape[1] == 3 * 44100  # a starts with the recording, b is the story alone
    plan = json.loads((out / "a.plan.json").read_text())
    assert plan["continue_from"]["path"] == str((tmp_path / "in.wav").resolve())
    assert "continues an existing recording (in.wav)" in plan["prompt"]
    again = run("render", out / "a.plan.json", "-o", tmp_path / "again.wav", "--device", "cpu")
    assert again.exit_code == 0 and np.array_equal(audio_io.read_audio(tmp_path / "again.wav")[0], a)


def test_extend_on_the_command_line_plans_only_what_follows(run, tiny_planner, tiny_sa3_small, tmp_path):
    story = tmp_path / "story.wav"
    made = run("generate", "rain on a tin roof", "--duration", "4", "--planner", tiny_planner, "--decoder",
               tiny_sa3_small, "--steps", "2", "--device", "cpu", "-o", story)  # fmt: skip
    assert made.exit_code == 0, made.output
    result = run("extend", tmp_path / "story.plan.json", "then the gulls return", "--duration", "3", "-o",
                 tmp_path / "longer.wav", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    old, new = audio_io.read_audio(story)[0], audio_io.read_audio(tmp_path / "longer.wav")[0]
    assert new.shape[1] == 7 * 44100 and np.array_equal(new[:, : old.shape[1]], old)
    plan = json.loads((tmp_path / "longer.plan.json").read_text())
    assert plan["total_s"] == 7.0 and plan["history"]["edits"][0]["op"] == "extend"
    assert min(e["start_s"] for e in plan["history"]["edits"][0]["events"]) >= 4.0
    again = run("render", tmp_path / "longer.plan.json", "-o", tmp_path / "again.wav", "--device", "cpu")
    assert again.exit_code == 0 and np.array_equal(audio_io.read_audio(tmp_path / "again.wav")[0], new)
    # a hand-written plan records no planner: extend says what to give
    hand = json.loads(Path("examples/plan.json").read_text())
    hand["render"] = {"seed": 0, "decoder": str(tiny_sa3_small)}
    (tmp_path / "hand.plan.json").write_text(json.dumps(hand))
    refused = run("extend", tmp_path / "hand.plan.json", "then more", "-o", tmp_path / "h.wav")
    assert refused.exit_code == 1 and "no planner is recorded" in refused.output


def test_plot_of_a_continued_story_draws_the_story_part(run, tiny_sa3_small, tmp_path):
    pytest.importorskip("matplotlib")
    t = np.arange(2 * 44100) / 44100
    audio_io.write_audio(tmp_path / "in.wav", (0.2 * np.sin(2 * np.pi * 220 * t))[None].astype(np.float32), 44100)
    plan = json.loads(Path("examples/plan.json").read_text())
    from audiostory_cli.editing.continuation import continue_from

    plan["continue_from"] = continue_from(tmp_path / "in.wav").to_dict()
    (tmp_path / "p.json").write_text(json.dumps(plan))
    result = run("render", tmp_path / "p.json", "--decoder", tiny_sa3_small, "--steps", "1", "--device", "cpu",
                 "-o", tmp_path / "s.wav", "--plot")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert audio_io.read_audio(tmp_path / "s.wav")[0].shape[1] > 24 * 44100 and (tmp_path / "s.png").exists()
