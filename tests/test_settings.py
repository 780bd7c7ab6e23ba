"""RenderOptions: one place for every range, saved whole in plan["render"] and read back whole."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from audiostory_cli.errors import InputError, PlanError
from audiostory_cli.settings import RenderOptions, options_from_dict
from audiostory_cli.story import load_plan, plan_from_dict, plan_to_json

EVERY_OPTION = RenderOptions(
    seed=7, steps=12, guidance=2.5, crossfade_s=0.5, coherence=0.2, continuation=False, window="full",
    loudness_lufs=-16.0, peak_dbfs=-2.0, decoder="/models/decoder", planner="/models/planner",
    bridge="/models/bridge", model=None, batch_size=3,
)  # fmt: skip


def test_every_field_differs_from_its_default_in_the_round_trip_sample():
    default = RenderOptions()
    same = [f.name for f in fields(RenderOptions) if getattr(EVERY_OPTION, f.name) == getattr(default, f.name)]
    assert same == ["model"]  # model excludes planner/decoder/bridge: it gets a round trip of its own below


@pytest.mark.parametrize("options", [EVERY_OPTION, RenderOptions(seed=1, model="/models/AudioStory-3B")])
def test_options_survive_the_plan_file_whole(options):
    plan = load_plan("examples/plan.json").with_render(options)
    assert plan_from_dict(json.loads(plan_to_json(plan))).render == options


def test_a_plan_from_before_the_settings_existed_renders_as_it_did():
    old = {"seed": 3, "steps": 10, "guidance": 4.5, "crossfade_s": 1.0, "planner": None, "decoder": ""}
    options = options_from_dict(old)
    assert (options.coherence, options.continuation, options.window, options.loudness_lufs) == (0.0, False, "auto", None)
    assert options.decoder is None and options.steps == 10


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "steps = 0: must be an integer between 1 and 1000"),
        ({"guidance": 51.0}, "guidance = 51: must be between 0 and 50"),
        ({"guidance": float("nan")}, "guidance = nan"),
        ({"crossfade_s": 11.0}, "crossfade = 11: must be between 0 and 10"),
        ({"coherence": 1.5}, "coherence = 1.5: must be between 0 and 1"),
        ({"window": "half"}, "window = 'half'"),
        ({"loudness_lufs": 3.0}, "loudness = 3: must be between -70 and 0"),
        ({"seed": -1}, "seed = -1"),
        ({"seed": True}, "seed = True"),
    ],
)
def test_out_of_range_values_are_refused_once_here(values, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        RenderOptions(**values)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seed": 1, "guidance": 99}, "render.guidance = 99: must be between 0 and 50"),
        ({"seed": 1, "steps": 2.5}, "render.steps = 2.5: must be an integer"),
        ({"seed": 1, "sharpness": 3}, "render.sharpness: unknown field"),
        ({"steps": 2}, "render.seed is missing"),
    ],
)
def test_a_plan_file_may_not_carry_any_value(raw, message):
    with pytest.raises(PlanError, match=message):
        options_from_dict(raw)


def test_steps_and_guidance_left_to_the_decoder_are_filled_in():
    resolved = RenderOptions(steps=None, guidance=None).resolved(8, 1.0)
    assert (resolved.steps, resolved.guidance) == (8, 1.0)
    assert RenderOptions(steps=3, guidance=2.0).resolved(8, 1.0).steps == 3


# --- the one merge: command line > plan > defaults ---------------------------------------------------------


def test_given_values_win_over_saved_ones_which_win_over_the_defaults():
    from audiostory_cli.settings import merge_options

    saved = RenderOptions(seed=5, crossfade_s=0.5, batch_size=2)
    merged = merge_options(saved, seed=9, crossfade_s=None, batch_size=None, guidance=None)
    assert (merged.seed, merged.crossfade_s, merged.batch_size) == (9, 0.5, 2)
    assert merged.coherence == RenderOptions().coherence


@pytest.mark.parametrize(
    ("given", "field", "message"),
    [
        ({"guidance": float("nan")}, "guidance", "guidance = nan"),
        ({"seed": 2**64}, "seed", "seed = 18446744073709551616: must be an integer between 0"),
        ({"batch_size": 65}, "batch_size", "batch_size = 65: must be an integer between 1 and 64"),
        ({"decoder": "a\x00b"}, "decoder", "holds a NUL byte"),
        ({"planner": "p" * 5000}, "planner", "has 5000 chars"),
        ({"decoder": "d" * 300}, "decoder", "File name too long"),
        ({"model": "/m", "planner": "/p"}, "model", "--model brings its own planner, decoder and fusion; drop --plan"),
    ],
)
def test_a_bad_value_given_is_an_option_error_naming_its_field(given, field, message):
    from audiostory_cli.errors import OptionError
    from audiostory_cli.settings import merge_options

    with pytest.raises(OptionError, match=message.replace("(", r"\(")) as caught:
        merge_options(None, **given)
    assert caught.value.field == field


def test_local_model_references_are_saved_as_absolute_paths(tmp_path, monkeypatch):
    from audiostory_cli.settings import merge_options

    (tmp_path / "decoder").mkdir()
    monkeypatch.chdir(tmp_path)
    merged = merge_options(None, decoder="decoder", planner="Qwen/Qwen2.5-3B-Instruct", bridge="bridges/b")
    assert merged.decoder == str(tmp_path / "decoder") and merged.planner == "Qwen/Qwen2.5-3B-Instruct"
    assert merged.bridge == str(tmp_path / "bridges" / "b")  # a bridge always: it is a folder
