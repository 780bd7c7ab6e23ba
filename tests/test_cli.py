"""The ``audiostory`` command end to end with the tiny checkpoints: files, lengths, seeds, exit codes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from audiostory_cli.decoders.tangoflux.decoder import TangoFluxDecoder
from audiostory_cli.cli import app

PROMPT = "a storm reaches a quiet harbor, a ship's bell rings, the rain stops and gulls return"
FAST = ["--steps", "2", "--device", "cpu"]


@pytest.fixture
def models(tiny_planner, tiny_decoder):
    return ["--planner", tiny_planner, "--decoder", tiny_decoder]


@pytest.fixture
def short_plan(tmp_path):
    """The example plan cut to 6 s: three foreground events and a bed under them."""
    plan = json.loads(open("examples/plan.json").read())
    plan["total_s"] = 6.0
    plan["events"] = [
        {**plan["events"][0], "start_s": 0.0, "duration_s": 2.0},
        {**plan["events"][1], "start_s": 2.0, "duration_s": 2.5},
        {**plan["events"][2], "start_s": 4.5, "duration_s": 1.5},
        {**plan["events"][4], "index": 3, "start_s": 0.0, "duration_s": 6.0},
    ]
    path = tmp_path / "short.json"
    path.write_text(json.dumps(plan))
    return path


def _audio(path):
    wave, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    return wave.T, sample_rate


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# --- generate ---------------------------------------------------------------------------------------------


def test_generate_writes_stereo_story_of_the_planned_length(run, models, tmp_path):
    out = tmp_path / "story.wav"
    result = run("generate", PROMPT, "-o", out, "--duration", "3.3", "--seed", "7", *models, *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    wave, sample_rate = _audio(out)
    plan = json.loads((tmp_path / "story.plan.json").read_text())
    assert sample_rate == 44100 and wave.shape[0] == 2
    assert wave.shape[1] == round(plan["total_s"] * sample_rate) == round(3.3 * 44100)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0.01
    assert plan["render"]["seed"] == 7 and plan["render"]["planner"] == str(models[1])


def test_same_seed_same_samples_other_seed_differs(run, models, tmp_path):
    for name, seed in (("a.wav", 1), ("b.wav", 1), ("c.wav", 2)):
        result = run("generate", PROMPT, "-o", tmp_path / name, "--duration", "2", "--seed", seed, *models, *FAST)
        assert result.exit_code == 0, result.output
    a, b, c = (_audio(tmp_path / n)[0] for n in ("a.wav", "b.wav", "c.wav"))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_render_of_saved_plan_reproduces_generate(run, models, tmp_path):
    first = tmp_path / "first.wav"
    assert run("generate", PROMPT, "-o", first, "--duration", "2.5", "--seed", "11", *models, *FAST).exit_code == 0
    again = tmp_path / "again.flac"
    result = run("render", tmp_path / "first.plan.json", "-o", again, "--device", "cpu")
    assert result.exit_code == 0, result.output
    # FLAC stores 24-bit integers: compare against the WAV read back at the same precision.
    np.testing.assert_allclose(_audio(again)[0], _audio(first)[0], atol=2**-22)
    again_wav = tmp_path / "again.wav"
    assert run("render", tmp_path / "first.plan.json", "-o", again_wav, "--device", "cpu").exit_code == 0
    assert np.array_equal(_audio(again_wav)[0], _audio(first)[0])


def test_dry_run_prints_the_plan_and_writes_nothing(run, models, tmp_path):
    result = run("generate", PROMPT, "--dry-run", "--json", "--duration", "12", *models[:2], "--device", "cpu")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["total_s"] == 12 and len(plan["events"]) >= 1
    assert "plan:" in result.stderr and "total: 12 s" in result.stderr
    assert _files(tmp_path) == []


def test_long_story_is_planned_in_events_that_fit_the_decoder_window(run, models):
    result = run("generate", PROMPT, "--dry-run", "--json", "--duration", "100", *models, "--device", "cpu")
    assert result.exit_code == 0, result.output
    events = json.loads(result.stdout)["events"]
    assert len(events) >= 4
    assert all(e["duration_s"] <= 29.95 - 1.0 for e in events)  # window minus the default crossfade


def test_dry_run_with_output_writes_nothing(run, models, tmp_path):
    result = run("generate", PROMPT, "--dry-run", "-o", tmp_path / "x.wav", *models[:2], "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) == []


# --- render -----------------------------------------------------------------------------------------------


def test_render_hand_written_plan_with_layers(run, tiny_decoder, short_plan, tmp_path):
    out = tmp_path / "short.wav"
    result = run("render", short_plan, "-o", out, "--decoder", tiny_decoder, "--crossfade", "0.5", *FAST)
    assert result.exit_code == 0, result.output
    wave, sample_rate = _audio(out)
    assert wave.shape == (2, 6 * 44100)
    assert np.abs(wave).max() <= 10 ** (-1 / 20) + 1e-6  # peak-limited at -1 dBFS
    saved = json.loads((tmp_path / "short.plan.json").read_text())
    assert saved["render"]["crossfade_s"] == 0.5 and saved["render"]["planner"] is None


def test_no_two_events_share_their_starting_noise(run, tiny_decoder, short_plan, tmp_path, monkeypatch):
    drawn = []
    original = TangoFluxDecoder._noise

    def record(self, seed, frames):
        noise = original(self, seed, frames)
        drawn.append((seed, noise))
        return noise

    monkeypatch.setattr(TangoFluxDecoder, "_noise", record)
    result = run("render", short_plan, "-o", tmp_path / "s.wav", "--decoder", tiny_decoder, *FAST)
    assert result.exit_code == 0, result.output
    assert len(drawn) == 4 and len({seed for seed, _ in drawn}) == 4
    firsts = [noise[:8] for _, noise in drawn]
    assert all(not np.allclose(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1 :])


def test_render_example_plan_json(run, tiny_decoder, tmp_path):
    out = tmp_path / "example.ogg"
    result = run("render", "examples/plan.json", "-o", out, "--decoder", tiny_decoder, "--steps", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    info = sf.info(out)
    assert info.samplerate == 44100 and info.channels == 2 and abs(info.duration - 24.0) < 0.01


def test_event_three_windows_long_renders_exactly_and_smoothly(run, tiny_decoder, tmp_path):
    plan = {"total_s": 90, "events": [{"caption": "rain on a tin roof", "start_s": 0, "duration_s": 90}]}
    (tmp_path / "long.json").write_text(json.dumps(plan))
    out = tmp_path / "long.wav"
    result = run("render", tmp_path / "long.json", "-o", out, "--decoder", tiny_decoder, *FAST)
    assert result.exit_code == 0, result.output
    wave, sample_rate = _audio(out)
    assert wave.shape == (2, 90 * 44100)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0.01
    # Internal joins (window stitches and VAE chunk edges) jump no more than the sound does elsewhere.
    jumps = np.abs(np.diff(wave, axis=1)).max(axis=0)
    hop, window, overlap = 2048, 645, round(3.0 * 44100 / 2048)
    joins = [k * (window - overlap) * hop for k in (1, 2, 3)] + [k * window * hop for k in (1, 2)]
    near = np.concatenate([jumps[j - 64 : j + 64] for j in joins])
    assert near.max() <= 3 * np.percentile(jumps, 99.9)


# --- errors: one line, exit codes, no files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["generate", "  ", "-o", "{tmp}/x.wav"], 2, "the prompt is empty"),
        (["generate", PROMPT, "-o", "{tmp}/x.wav", "--duration", "0"], 2, "must be > 0 and <= 600"),
        (["generate", PROMPT, "-o", "{tmp}/x.wav", "--duration", "601"], 2, "must be > 0 and <= 600"),
        (["generate", PROMPT, "-o", "{tmp}/no/such/dir/x.wav"], 2, "does not exist"),
        (["generate", PROMPT, "-o", "{tmp}/x.xyz"], 2, ".xyz"),
        (["generate", PROMPT], 2, "an output file is needed"),
        (["generate", PROMPT, "-o", "{tmp}/x.wav", "--planner", "{tmp}/missing-planner"], 1, "missing-planner"),
        (["generate", PROMPT, "-o", "{tmp}/x.wav", "--decoder", "nobody/no-decoder"], 1, "nobody/no-decoder"),
        (["render", "{tmp}/nope.json", "-o", "{tmp}/x.wav"], 1, "plan file not found"),
        (["render", "{tmp}/bad.json", "-o", "{tmp}/x.wav"], 1, "not valid JSON"),
        (["render", "{tmp}/invalid.json", "-o", "{tmp}/x.wav"], 1, "events[0].duration_s = -2: must be > 0"),
        (["generate", PROMPT, "-o", "{tmp}/x.wav", "--device", "tpu"], 2, "'tpu' is not one of auto, cuda, cpu, mps"),
        (["render", "{tmp}/bad.json", "-o", "{tmp}/x.wav", "--window", "half"], 2, "'half' is not one of auto, full"),
        (["generate", PROMPT, "-o", "{tmp}/x.wav", "--steps", "0"], 2, "--steps"),
        (["batch", "examples/prompts.txt", "-o", "{tmp}/out", "--format", "xyz"], 1, "output format .xyz is not supported"),
    ],
)
def test_bad_input_one_line_exit_code_no_file(run, tiny_planner, tiny_decoder, tmp_path, args, code, message):
    (tmp_path / "bad.json").write_text('{"total_s": 5, "events": [')
    (tmp_path / "invalid.json").write_text(
        json.dumps({"total_s": 5, "events": [{"caption": "rain", "start_s": 0, "duration_s": -2}]})
    )
    before = _files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    defaults = []
    if args[0] == "generate" and "--planner" not in args:
        defaults += ["--planner", str(tiny_planner)]
    if "--decoder" not in args:
        defaults += ["--decoder", str(tiny_decoder)]
    result = run(*args, *defaults, "--steps", "1") if "--steps" not in args else run(*args, *defaults)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.split())
    assert result.stdout == ""
    assert _files(tmp_path) == before
    if code == 1:
        assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1
        assert "Traceback" not in result.stderr


def test_missing_model_message_says_where_it_looked(run, tmp_path):
    result = run("render", "examples/plan.json", "-o", tmp_path / "x.wav", "--decoder", "nobody/no-decoder", *FAST)
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "hub cache" in message and "HF_HUB_OFFLINE=1" in message and "tangoflux.safetensors" in message


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    from audiostory_cli.errors import PlanError

    monkeypatch.setenv("AUDIOSTORY_DEBUG", "1")
    (tmp_path / "bad.json").write_text("{")
    result = CliRunner().invoke(app, ["render", str(tmp_path / "bad.json"), "-o", str(tmp_path / "x.wav")])
    assert isinstance(result.exception, PlanError)


def test_failure_while_writing_leaves_no_audio(run, tiny_decoder, short_plan, tmp_path, monkeypatch):
    from audiostory_cli import audio_io

    real = audio_io._write_partial

    def broken(path, write):  # the audio's partial file is written, then the disk is full for the plan
        if path.name.endswith(".plan.json"):
            raise OSError("disk full")
        return real(path, write)

    monkeypatch.setattr(audio_io, "_write_partial", broken)
    out = tmp_path / "s.wav"
    result = run("render", short_plan, "-o", out, "--decoder", tiny_decoder, *FAST)
    assert result.exit_code == 1 and "disk full" in result.stderr  # one line, as any failed write
    assert not out.exists()
    assert _files(tmp_path) == ["short.json"]


# --- batch ----------------------------------------------------------------------------------------------------


def test_batch_plain_prompts_file(run, models, tmp_path):
    prompts = tmp_path / "prompts.txt"
    shutil.copy("examples/prompts.txt", prompts)
    out = tmp_path / "out"
    result = run("batch", prompts, "-o", out, "--duration", "1.5", *models, *FAST)
    assert result.exit_code == 0, result.output
    names = [n for n in _files(out) if n.endswith(".wav")]
    assert names == [
        "001-a-storm-reaches-a-quiet-harbor-a-ship-s-bell.wav",
        "002-a-campfire-at-night-wood-crackles-an-owl-calls.wav",
        "003-a-morning-train-journey-doors-close-wheels.wav",
    ]
    assert result.stdout.split() == [str(out / n) for n in names]
    assert "batch summary" in result.stderr


def test_batch_json_lines_with_a_bad_line(run, models, tmp_path):
    lines = [json.loads(line) for line in open("examples/prompts.jsonl")]
    for line in lines:
        line["duration"] = 1.5  # the example's lengths, shortened for the test
    lines.insert(1, {"prompt": "", "output": "empty.wav"})
    lines.append({"prompt": "escape", "output": "../escape.wav"})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + '\n{"prompt": 3}\nnot json {\n')
    out = tmp_path / "out"
    result = run("batch", prompts, "-o", out, *models, *FAST)
    assert result.exit_code == 1
    assert sorted(n for n in _files(out) if not n.endswith((".plan.json", ".latents.safetensors"))) == [
        "003-a-blacksmith-at-work-the-forge-roars-a-hammer.wav",
        "harbor.wav",
        "library.flac",
        "manifest.jsonl",
    ]
    stderr = " ".join(result.stderr.split())
    assert "line 2: the prompt is empty" in stderr
    assert "line 5: output = '../escape.wav': must be a plain file name" in stderr
    assert "line 6: prompt = 3: must be a string" in stderr
    assert "line 7: not valid JSON" in stderr
    assert "4 of 7 prompts failed" in stderr
    assert not (tmp_path / "escape.wav").exists()
    harbor = json.loads((out / "harbor.plan.json").read_text())
    assert harbor["render"]["seed"] == 7


def test_help_explains_the_commands(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("generate", "render", "batch"):
        assert command in result.stdout
    generate_help = " ".join(run("generate", "--help").stdout.split())
    for option in ("--dry-run", "--seed", "--crossfade", "--window", "--planner", "--decoder", "--json"):
        assert option in generate_help


def test_loudness_option_normalises_the_story(run, tiny_decoder, short_plan, tmp_path):
    from audiostory_cli.loudness import loudness_lufs

    out = tmp_path / "loud.wav"
    result = run("render", short_plan, "-o", out, "--decoder", tiny_decoder, "--loudness", "-30", *FAST)
    assert result.exit_code == 0, result.output
    wave, sample_rate = _audio(out)
    assert loudness_lufs(wave, sample_rate) == pytest.approx(-30, abs=0.1)


# --- bridging, residual and continuation ------------------------------------------------------------------


def test_coherence_zero_without_continuation_is_the_caption_only_render(run, tiny_decoder, short_plan, tmp_path):
    """The foundation's algorithm: every clip conditioned on its caption alone, clips batched, crossfaded."""
    import torch

    from audiostory_cli import mix
    from audiostory_cli.decoders.base import ClipRequest
    from audiostory_cli.registry import load_decoder
    from audiostory_cli.settings import RenderOptions
    from audiostory_cli.story import clip_seed, load_plan

    out = tmp_path / "plain.wav"
    args = ("--coherence", "0", "--no-continuation", "--crossfade", "0.5")
    assert run("render", short_plan, "-o", out, "--decoder", tiny_decoder, *args, *FAST).exit_code == 0
    plan = load_plan(short_plan)
    decoder = load_decoder(str(tiny_decoder), device=torch.device("cpu"), dtype=torch.float32)
    lengths = mix.clip_samples(plan, 0.5, 44100)
    requests = [ClipRequest(e, lengths[e.index], clip_seed(0, e.index)) for e in plan.events]
    clips = decoder.render(requests, RenderOptions(steps=2, guidance=4.5, continuation=False), batch_size=4)
    expected = mix.compose(plan, clips, 0.5).wave
    np.testing.assert_allclose(_audio(out)[0], expected, atol=2**-22)  # 24-bit WAV
    saved = json.loads((tmp_path / "plain.plan.json").read_text())["render"]
    assert saved["coherence"] == 0 and saved["continuation"] is False


def test_coherence_and_continuation_change_the_story_and_are_saved(run, tiny_decoder, short_plan, tmp_path):
    outputs = {}
    for name, args in {
        "plain": ("--coherence", "0", "--no-continuation"),
        "residual": ("--coherence", "0.8", "--no-continuation"),
        "continued": ("--coherence", "0", "--continuation"),
    }.items():
        out = tmp_path / f"{name}.wav"
        assert run("render", short_plan, "-o", out, "--decoder", tiny_decoder, *args, *FAST).exit_code == 0
        outputs[name] = _audio(out)[0]
    assert not np.allclose(outputs["plain"], outputs["residual"])
    assert not np.allclose(outputs["plain"], outputs["continued"])
    saved = json.loads((tmp_path / "residual.plan.json").read_text())["render"]
    assert saved["coherence"] == 0.8 and saved["continuation"] is False


def test_plan_saved_without_bridge_settings_renders_caption_only(run, tiny_decoder, short_plan, tmp_path):
    """A plan from before the bridge existed (no coherence/continuation saved) renders as it did then."""
    out = tmp_path / "now.wav"
    assert run("render", short_plan, "-o", out, "--decoder", tiny_decoder, *FAST).exit_code == 0
    saved = json.loads((tmp_path / "now.plan.json").read_text())
    del saved["render"]["coherence"], saved["render"]["continuation"], saved["render"]["bridge"]
    old = tmp_path / "old.plan.json"
    old.write_text(json.dumps(saved))
    assert run("render", old, "-o", tmp_path / "old.wav", "--device", "cpu").exit_code == 0
    explicit = tmp_path / "explicit.wav"
    flags = ("--coherence", "0", "--no-continuation", "--decoder", tiny_decoder)
    assert run("render", short_plan, "-o", explicit, *flags, *FAST).exit_code == 0
    assert np.array_equal(_audio(tmp_path / "old.wav")[0], _audio(explicit)[0])


# --- the released AudioStory checkpoint (--model) ------------------------------------------------------------


def test_generate_with_the_audiostory_checkpoint_and_render_it_again(run, tiny_audiostory_model, tmp_path):
    out = tmp_path / "story.wav"
    result = run("generate", PROMPT, "--model", tiny_audiostory_model, "-o", out, "--duration", "4", *FAST)
    assert result.exit_code == 0, result.output
    wave, sample_rate = _audio(out)
    assert wave.shape == (2, 4 * sample_rate)
    saved = json.loads((tmp_path / "story.plan.json").read_text())
    assert saved["render"]["model"] == str(tiny_audiostory_model) and len(saved["events"]) >= 1
    again = tmp_path / "again.wav"
    assert run("render", tmp_path / "story.plan.json", "-o", again, "--device", "cpu").exit_code == 0
    assert np.array_equal(_audio(again)[0], wave)


def test_dry_run_with_the_audiostory_checkpoint_shows_captions_times_and_reasoning(run, tiny_audiostory_model):
    result = run("generate", PROMPT, "--model", tiny_audiostory_model, "--dry-run", "--json", "--duration", "6",
                 "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["total_s"] == 6 and plan["events"][0]["caption"]
    assert "reasoning:" in result.stderr and "plan:" in result.stderr


def test_model_with_planner_is_a_usage_error(run, tiny_audiostory_model, tiny_planner, tmp_path):
    result = run("generate", PROMPT, "--model", tiny_audiostory_model, "--planner", tiny_planner,
                 "-o", tmp_path / "x.wav", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2
    assert "--model brings its own planner, decoder and fusion; drop --planner" in " ".join(result.stderr.split())


def test_audiostory_checkpoint_with_a_renamed_key_is_named(run, tiny_audiostory_model, tmp_path):
    import torch

    broken = tmp_path / "broken"
    shutil.copytree(tiny_audiostory_model, broken)
    state = torch.load(broken / "pytorch_model.bin", weights_only=True)
    state["seedx.projector.0.weight_renamed"] = state.pop("seedx.projector.0.weight")
    torch.save(state, broken / "pytorch_model.bin")
    result = run("generate", PROMPT, "--model", broken, "-o", tmp_path / "x.wav", "--device", "cpu")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "seedx.projector.0.weight" in message and "seedx.projector.0.weight_renamed" in message
    assert not (tmp_path / "x.wav").exists()


def test_trained_bridge_generates_and_renders_again(run, models, tiny_planner, tiny_decoder, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("rain on a tin roof\ngulls cry over the water\na ship's bell rings\nwind howls\n")
    bridge_dir = tmp_path / "bridge"
    trained = run("train-bridge", captions, "-o", bridge_dir, "--planner", tiny_planner, "--decoder", tiny_decoder,
                  "--steps", "3", "--batch-size", "2", "--n-queries", "8", "--device", "cpu")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "story.wav"
    result = run("generate", PROMPT, "-o", out, "--duration", "2.5", "--bridge", bridge_dir, *models, *FAST)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "story.plan.json").read_text())["render"]
    assert saved["bridge"] == str(bridge_dir.resolve())
    plain = tmp_path / "plain.wav"
    assert run("render", tmp_path / "story.plan.json", "-o", plain, "--device", "cpu").exit_code == 0
    assert np.array_equal(_audio(plain)[0], _audio(out)[0])  # the saved bridge (and its planner) came back
    without = tmp_path / "without.wav"
    flags = ("--decoder", tiny_decoder, "--seed", "0", *FAST)
    assert run("generate", PROMPT, "-o", without, "--duration", "2.5", "--planner", tiny_planner, *flags).exit_code == 0
    assert not np.allclose(_audio(without)[0], _audio(out)[0])


# --- settings saved whole, capabilities checked up front ------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ("--loudness", "-16", "--window", "full", "--crossfade", "0.5", "--coherence", "0.2"),
        ("--seed", "7", "--guidance", "2.0", "--no-continuation", "--coherence", "0", "--crossfade", "0.25"),
    ],
    ids=["loudness-window-crossfade-coherence", "seed-guidance-no-continuation"],
)
def test_render_of_the_saved_plan_reproduces_generate_for_every_setting(run, models, tmp_path, flags):
    out = tmp_path / "story.wav"
    result = run("generate", PROMPT, "-o", out, "--duration", "5", *flags, *models, *FAST)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "story.plan.json").read_text())["render"]
    given = dict(zip(flags[::2], flags[1::2])) if "--no-continuation" not in flags else {}
    for flag, field in (("--loudness", "loudness_lufs"), ("--crossfade", "crossfade_s"), ("--coherence", "coherence")):
        if flag in given:
            assert saved[field] == float(given[flag])
    assert saved["steps"] == 2 and saved["guidance"] == (2.0 if "--guidance" in flags else 4.5)  # used, not None
    again = tmp_path / "again.wav"
    assert run("render", tmp_path / "story.plan.json", "-o", again, "--device", "cpu").exit_code == 0
    assert np.array_equal(_audio(again)[0], _audio(out)[0])
    assert json.loads((tmp_path / "again.plan.json").read_text())["render"] == saved


def test_a_command_line_value_wins_over_the_saved_one(run, tiny_decoder, short_plan, tmp_path):
    first = tmp_path / "first.wav"
    assert run("render", short_plan, "-o", first, "--decoder", tiny_decoder, "--loudness", "-20", *FAST).exit_code == 0
    second = tmp_path / "second.wav"
    assert run("render", tmp_path / "first.plan.json", "-o", second, "--loudness", "-30", *FAST).exit_code == 0
    assert json.loads((tmp_path / "second.plan.json").read_text())["render"]["loudness_lufs"] == -30


def test_a_bridge_for_another_text_width_is_refused_before_any_model_loads(run, models, tmp_path, monkeypatch):
    from audiostory_cli import registry
    from audiostory_cli.conditioning.trained_bridge import BridgeAdapter, BridgeConfig

    bridge = tmp_path / "bridge"
    BridgeAdapter(BridgeConfig(llm_hidden=16, text_dim=999, planner="p", decoder="d")).save(bridge)
    loaded = []
    monkeypatch.setattr(registry, "load_decoder", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(registry, "load_planner", lambda *a, **k: loaded.append(a))
    result = run("generate", PROMPT, "-o", tmp_path / "x.wav", "--bridge", bridge, *models, *FAST)
    assert result.exit_code == 1 and loaded == []
    assert "the bridge produces text features of width 999, but TangoFlux takes 32" in " ".join(result.stderr.split())
    assert not (tmp_path / "x.wav").exists()


def test_out_of_range_settings_are_usage_errors_naming_the_option(run, models, tmp_path):
    result = run("generate", PROMPT, "-o", tmp_path / "x.wav", "--guidance", "51", *models, *FAST)
    assert result.exit_code == 2
    assert "'--guidance'" in result.stderr and "must be between 0 and 50" in result.stderr


# --- Stable Audio 3 through the command line -------------------------------------------------------------------


def test_stable_audio_3_layouts_render_the_same_samples_at_its_own_steps(run, tiny_sa3, tiny_sa3_original, tmp_path):
    outputs = {}
    for name, folder in (("diffusers", tiny_sa3), ("original", tiny_sa3_original)):
        out = tmp_path / f"{name}.wav"
        result = run("render", "examples/plan.json", "-o", out, "--decoder", folder, "--device", "cpu")
        assert result.exit_code == 0, result.output
        outputs[name] = _audio(out)
        saved = json.loads((tmp_path / f"{name}.plan.json").read_text())["render"]
        assert (saved["steps"], saved["guidance"]) == (8, 1.0)  # the decoder's own, recorded
    wave, sample_rate = outputs["diffusers"]
    assert sample_rate == 44100 and wave.shape == (2, 24 * 44100)
    assert np.array_equal(outputs["original"][0], wave)
    again = tmp_path / "again.wav"
    assert run("render", tmp_path / "original.plan.json", "-o", again, "--device", "cpu").exit_code == 0
    assert np.array_equal(_audio(again)[0], wave)


def test_full_window_on_stable_audio_3_is_refused_before_any_model_loads(run, tiny_sa3, tmp_path, monkeypatch):
    from audiostory_cli import registry

    monkeypatch.setattr(registry, "load_decoder", lambda *a, **k: pytest.fail("a model was loaded"))
    result = run("render", "examples/plan.json", "-o", tmp_path / "x.wav", "--decoder", tiny_sa3, "--window", "full",
                 *FAST)  # fmt: skip
    assert result.exit_code == 1
    assert "--window full does not apply to Stable Audio 3" in " ".join(result.stderr.split())
    assert not (tmp_path / "x.wav").exists()


def test_a_renamed_key_in_stabilitys_layout_fails_naming_it_and_writes_nothing(run, tiny_sa3_original, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "sa3"
    shutil.copytree(tiny_sa3_original, broken)
    state = load_file(str(broken / "model.safetensors"))
    key = "model.model.transformer.layers.0.self_attn.to_out.weight"
    state[key + "_renamed"] = state.pop(key)
    save_file(state, str(broken / "model.safetensors"))
    result = run("render", "examples/plan.json", "-o", tmp_path / "x.wav", "--decoder", broken, *FAST)
    assert result.exit_code == 1
    assert key in result.stderr and f"{key}_renamed" in " ".join(result.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sa3"]


def test_convert_writes_the_diffusers_layout_once(run, tiny_sa3_original, tmp_path):
    out = tmp_path / "converted"
    result = run("convert", tiny_sa3_original, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and (out / "model_index.json").is_file()
    again = run("convert", tiny_sa3_original, "-o", out)
    assert again.exit_code == 1 and "converted" in again.stderr


def test_batch_size_auto_renders_what_a_fixed_batch_size_renders(run, tiny_decoder, short_plan, tmp_path):
    for name, size in (("auto", "auto"), ("four", "4")):  # auto is 1 on a CPU
        out = tmp_path / f"{name}.wav"
        result = run("render", short_plan, "-o", out, "--decoder", tiny_decoder, "--batch-size", size, *FAST)
        assert result.exit_code == 0, result.output
    (auto, _), (four, _) = _audio(tmp_path / "auto.wav"), _audio(tmp_path / "four.wav")
    assert np.linalg.norm(auto - four) / np.linalg.norm(four) < 1e-3  # batching changes float rounding only
    result = run("render", short_plan, "-o", tmp_path / "x.wav", "--decoder", tiny_decoder, "--batch-size", "0", *FAST)
    assert result.exit_code == 2 and "'--batch-size'" in result.output
    assert "batch_size = 0: must be an integer between 1 and 64" in result.output
    result = run("render", short_plan, "-o", tmp_path / "x.wav", "--decoder", tiny_decoder, "--batch-size", "two")
    assert result.exit_code == 2 and "'two' is not auto or a whole number from 1 to 64" in result.output


def test_auto_batch_size_is_one_clip_on_a_cpu_without_a_probe_and_the_memory_estimate_elsewhere():
    from types import SimpleNamespace

    from audiostory_cli.pipeline import FALLBACK_BATCH_SIZE, MAX_AUTO_BATCH_SIZE, auto_batch_size

    assert auto_batch_size(SimpleNamespace(device=torch.device("cpu"), max_batch_size=lambda: 12)) == 1
    assert auto_batch_size(SimpleNamespace(device=torch.device("cuda:1"), max_batch_size=lambda: 12)) == 12
    assert auto_batch_size(SimpleNamespace(device="cuda", max_batch_size=lambda: 99)) == MAX_AUTO_BATCH_SIZE
    assert auto_batch_size(SimpleNamespace(device="cuda", max_batch_size=lambda: 0)) == 1
    assert auto_batch_size(SimpleNamespace(device="mps")) == FALLBACK_BATCH_SIZE


# --- the output checked before any model loads -----------------------------------------------------------------


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: what these runs refuse, they refuse up front."""
    from audiostory_cli import registry

    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded")

    for name in ("load_models", "load_decoder", "load_planner"):
        monkeypatch.setattr(registry, name, refuse)


def _one_usage_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    message = " ".join(result.stderr.split())
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("x" * 250 + ".wav", ["is 254 bytes: too long for this file system", "use a name of at most 209 bytes"]),
        ("story\x00.wav", ["null byte"]),  # click's Path type says so first
        ("é" * 120 + ".wav", ["too long for this file system"]),  # 244 bytes: the partial name is 270
    ],
    ids=["long", "nul", "long-in-bytes"],
)
def test_an_output_name_the_file_system_cannot_take_is_refused_up_front(run, models, tmp_path, no_model_loads, name,
                                                                         needles):  # fmt: skip
    for command in (["generate", PROMPT, *models], ["render", "examples/plan.json", *models[2:]]):
        result = run(*command, "-o", f"{tmp_path}/{name}", *FAST)
        _one_usage_error(result, "'--output' / '-o'", *needles)
    assert _files(tmp_path) == []


def test_the_longest_name_the_file_system_takes_is_accepted(run, tiny_decoder, short_plan, tmp_path):
    import os

    # the longest name whose latents' hidden partial name (".NAME.latents.safetensors.XXXXXXXX.partial.safetensors")
    # still fits: of the three files, the latents have the longest suffix
    room = os.pathconf(tmp_path, "PC_NAME_MAX") - len("..latents.safetensors.12345678.partial.safetensors")
    out = tmp_path / ("s" * room + ".wav")
    result = run("render", short_plan, "-o", out, "--decoder", tiny_decoder, *FAST)
    assert result.exit_code == 0, result.output
    assert out.exists() and (tmp_path / ("s" * room + ".plan.json")).exists()
    assert (tmp_path / ("s" * room + ".latents.safetensors")).exists()
    result = run("render", short_plan, "-o", tmp_path / ("s" * (room + 1) + ".wav"), *FAST)
    _one_usage_error(result, "once the plan and latents beside it", f"use a name of at most {room + 4} bytes")


def test_a_folder_named_like_the_plan_is_refused_before_any_model_loads(run, models, tmp_path, no_model_loads):
    (tmp_path / "story.plan.json").mkdir()
    result = run("generate", PROMPT, "-o", tmp_path / "story.wav", *models, *FAST)
    _one_usage_error(result, f"plan path {tmp_path / 'story.plan.json'} is a folder")
    assert _files(tmp_path) == ["story.plan.json"]


def test_a_folder_that_cannot_be_written_is_refused_before_any_model_loads(run, models, tmp_path, monkeypatch,
                                                                          no_model_loads):  # fmt: skip
    """The kernel's answer is mocked (tests may run as root, whom chmod does not stop); the non-root case runs
    for real below."""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: str(path) != str(tmp_path) and real(path, mode))
    result = run("generate", PROMPT, "-o", tmp_path / "story.wav", *models, *FAST)
    _one_usage_error(result, f"cannot write into {tmp_path}: permission denied")
    result = run("batch", "examples/prompts.txt", "-o", tmp_path / "new" / "out", *models, *FAST)
    _one_usage_error(result, f"cannot write into {tmp_path}: permission denied")
    assert _files(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_for_real(run, models, tmp_path, no_model_loads):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run("generate", PROMPT, "-o", locked / "story.wav", *models, *FAST)
    _one_usage_error(result, "permission denied")


def test_m4a_without_ffmpeg_is_one_line_with_the_install_hint_before_any_work(tmp_path):
    """A real process with a PATH that lacks ffmpeg."""
    import subprocess
    import sys

    env = {**os.environ, "PATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "audiostory_cli", "generate", PROMPT, "-o", str(tmp_path / "x.m4a"),
                           "--decoder", str(tmp_path / "none")], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 4
    message = " ".join(done.stderr.split())
    assert "writing .m4a needs ffmpeg, which is not on PATH" in message and "apt-get install ffmpeg" in message
    assert _files(tmp_path) == []


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(run, tiny_decoder, short_plan, tmp_path, monkeypatch):
    import errno

    from audiostory_cli import audio_io

    class Full:  # the file system fills up after 64 KiB
        def __init__(self, file):
            self.file, self.left = file, 65536

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(audio_io, "open", lambda *a, **k: Full(open(*a, **k)), raising=False)
    result = run("render", short_plan, "-o", tmp_path / "s.wav", "--decoder", tiny_decoder, *FAST)
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr and "cffi" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: could not write {tmp_path / 's.wav'}: [Errno 28] No space left on device"
    ]
    assert _files(tmp_path) == ["short.json"]


# --- batch size: saved and reproduced --------------------------------------------------------------------------


def test_the_batch_size_is_saved_and_render_reproduces_it(run, models, tmp_path):
    out = tmp_path / "story.wav"
    flags = ("--duration", "5", "--window", "full", "--batch-size", "2", "--max-events", "3")
    assert run("generate", PROMPT, "-o", out, *flags, *models, *FAST).exit_code == 0
    saved = json.loads((tmp_path / "story.plan.json").read_text())["render"]
    assert saved["batch_size"] == 2
    again = tmp_path / "again.wav"
    assert run("render", tmp_path / "story.plan.json", "-o", again, "--device", "cpu").exit_code == 0
    assert np.array_equal(_audio(again)[0], _audio(out)[0])
    one = tmp_path / "one.wav"  # the command line wins, and is saved in its turn
    assert run("render", tmp_path / "story.plan.json", "-o", one, "--batch-size", "1", "--device", "cpu").exit_code == 0
    assert json.loads((tmp_path / "one.plan.json").read_text())["render"]["batch_size"] == 1


def test_a_plan_without_a_batch_size_renders_as_before(run, tiny_decoder, short_plan, tmp_path):
    """Old plans: the device's own batch size (one clip at a time on a CPU), recorded once rendered."""
    first = tmp_path / "first.wav"
    assert run("render", short_plan, "-o", first, "--decoder", tiny_decoder, *FAST).exit_code == 0
    saved = json.loads((tmp_path / "first.plan.json").read_text())
    assert saved["render"].pop("batch_size") == 1
    (tmp_path / "old.plan.json").write_text(json.dumps(saved))
    assert run("render", tmp_path / "old.plan.json", "-o", tmp_path / "old.wav", "--device", "cpu").exit_code == 0
    assert np.array_equal(_audio(tmp_path / "old.wav")[0], _audio(first)[0])


def test_a_batch_renders_again_when_the_batch_size_changes(run, models, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("rain on a tin roof\n")
    out = tmp_path / "out"
    first = run("batch", prompts, "-o", out, "--duration", "1.5", "--batch-size", "2", *models, *FAST, "--json")
    assert first.exit_code == 0 and json.loads(first.stdout)["status"] == "ok"
    same = run("batch", prompts, "-o", out, "--duration", "1.5", "--batch-size", "2", *models, *FAST, "--json")
    assert json.loads(same.stdout)["status"] == "skipped"
    other = run("batch", prompts, "-o", out, "--duration", "1.5", "--batch-size", "3", *models, *FAST, "--json")
    assert json.loads(other.stdout)["status"] == "ok"
    plan = json.loads((out / "001-rain-on-a-tin-roof.plan.json").read_text())
    assert plan["render"]["batch_size"] == plan["request"]["render"]["batch_size"] == 3


# --- batch's folder option, help texts, plain tables for logs ---------------------------------------------------


def test_batch_takes_its_folder_as_o_and_the_old_d_with_a_warning(run, models, tmp_path, no_model_loads):
    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\n")
    (tmp_path / "a-file").write_text("")
    result = run("batch", prompts, "-d", tmp_path / "a-file", *models, *FAST)
    _one_usage_error(result, "batch -d is deprecated, use -o/--outdir", f"{tmp_path / 'a-file'} is a file")
    result = run("batch", prompts, "-d", tmp_path / "x", "-o", tmp_path / "y", *models, *FAST)
    _one_usage_error(result, "give the folder once")
    result = run("batch", prompts, *models, *FAST)
    _one_usage_error(result, "'--outdir' / '-o'", "a folder for the audio files is needed")
    result = run("batch", prompts, "-o", tmp_path / "a-file" / "out", *models, *FAST)
    _one_usage_error(result, f"cannot create {tmp_path / 'a-file' / 'out'}: {tmp_path / 'a-file'} is a file")
    assert _files(tmp_path) == ["a-file", "p.txt"]


def test_help_texts_speak_of_their_own_command(run):
    helps = {command: " ".join(run(command, "--help").stdout.split()) for command in ("generate", "render", "batch")}
    for command in ("generate", "batch"):
        assert "render:" not in helps[command] and "the plan's saved value" not in helps[command]
    assert helps["render"].count("the plan's saved value, else") >= 10
    assert "-d, --duration" in helps["generate"] and "-o, --outdir" in helps["batch"] and " -d" not in helps["batch"]
    for text in helps.values():
        assert "bf16 on CUDA and on a CPU that computes bf16 natively" in text and "fp32 elsewhere" in text
        assert "one after another" not in text


def test_on_a_log_file_tables_are_plain_lines_with_nothing_cut(run, models, tmp_path):
    """CliRunner's stderr is not a terminal, as a log file or CI is not."""
    prompts = tmp_path / "p.jsonl"
    name = "a-story-whose-file-name-is-much-longer-than-a-table-column-would-ever-show-in-full.wav"
    prompts.write_text(json.dumps({"prompt": "rain on a tin roof " * 4, "output": name}) + "\n")
    out = tmp_path / "a-folder-with-a-long-name-as-real-paths-are" / "stories"
    out.parent.mkdir()
    result = run("batch", prompts, "-o", out, "--duration", "1.5", *models, *FAST)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    row = lines[lines.index("batch summary") + 2].split("\t")
    assert lines[lines.index("batch summary") + 1].split("\t") == ["line", "prompt", "status", "output or error",
                                                                   "seconds"]  # fmt: skip
    assert row[:4] == ["1", ("rain on a tin roof " * 4).strip(), "ok", str(out / name)]
    result = run("generate", PROMPT, "--dry-run", "--duration", "6", *models[:2], "--device", "cpu")
    lines = result.stderr.splitlines()
    plan_at = next(i for i, line in enumerate(lines) if line.startswith("plan: "))
    assert lines[plan_at + 1] == "#\tstart\tduration\tcaption\ttone\tlayer"
    assert all(len(line.split("\t")) == 6 for line in lines[plan_at + 2 : plan_at + 3])


def test_timeline_with_model_or_max_events_is_a_usage_error_before_any_model_loads(run, tmp_path, monkeypatch):
    """--model plans only prompts (it failed after loading the checkpoint); --max-events has nothing to choose when
    each cue is one event (it was silently ignored)."""
    monkeypatch.setattr("audiostory_cli.registry.load_models", lambda *a, **k: pytest.fail("loaded a model"))
    for extra, option, message in (
        (["--model", tmp_path / "audiostory"], "'--model'", "the AudioStory checkpoint plans only prompts"),
        (["--max-events", "2"], "'--max-events'", "with --timeline each cue is one event"),
    ):
        result = CliRunner().invoke(app, ["generate", "a cartoon", "--timeline", "examples/clip.srt", "-o",
                                          str(tmp_path / "s.wav"), *map(str, extra)])  # fmt: skip
        assert result.exit_code == 2, result.output
        assert option in result.stderr and message in " ".join(result.stderr.split())
    assert list(tmp_path.iterdir()) == []


# --- a first run: the defaults ------------------------------------------------------------------------------------


@pytest.fixture
def hub_calls(monkeypatch):
    """Every call that would reach the hub (its cache included), recorded; each answers "not there"."""
    import huggingface_hub

    calls = []

    def record(name):
        def call(*args, **kwargs):
            calls.append((name, args, kwargs.get("local_files_only")))
            raise FileNotFoundError(args[0])

        return call

    monkeypatch.setattr(huggingface_hub, "snapshot_download", record("snapshot_download"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", record("hf_hub_download"))
    return calls


def needs_llama():
    pytest.importorskip("llama_cpp", reason="the llama.cpp engine is not installed (the llama or server extra)")


def test_a_dry_run_with_the_default_decoder_plans_for_stable_audio_3_small_without_looking_for_it(
    run, tiny_planner, hub_calls
):  # fmt: skip
    """Two events for 200 s: only a decoder with SA3 Small's 120 s window takes that (TangoFlux's is 30 s)."""
    result = run("generate", PROMPT, "--dry-run", "--json", "--duration", "200", "--max-events", "2",
                 "--planner", tiny_planner, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    events = [e for e in json.loads(result.stdout)["events"] if e["layer"] == 0]
    assert sum(e["duration_s"] for e in events) == pytest.approx(200) and len(events) <= 2
    assert all(e["duration_s"] <= 120.0 - 1.0 for e in events)  # the window less the default crossfade
    assert hub_calls == []  # nothing looked for, nothing downloaded


def test_a_gated_default_decoder_stops_a_first_run_before_any_model_loads_naming_tangoflux(
    run, tmp_path, monkeypatch, gated_hub
):  # fmt: skip
    from audiostory_cli import registry

    loaded = []
    monkeypatch.setattr(registry, "load_decoder", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(registry, "load_planner", lambda *a, **k: loaded.append(a))
    result = run("generate", PROMPT, "-o", tmp_path / "story.wav", "--device", "cpu")  # no --planner, no --decoder
    assert result.exit_code == 1 and loaded == []
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert "'stabilityai/stable-audio-3-small-sfx' is gated on the Hugging Face hub" in message
    assert "https://huggingface.co/stabilityai/stable-audio-3-small-sfx" in message and "hf auth login" in message
    assert "--decoder declare-lab/TangoFlux" in message
    assert _files(tmp_path) == []


def test_the_default_planner_on_a_cpu_is_the_gguf_through_llama_cpp_and_the_plan_names_it(
    run, tiny_planner_gguf, tiny_decoder, tmp_path, hub_calls
):  # fmt: skip
    from audiostory_cli.checkpoints import LLAMA_PLANNER

    needs_llama()
    result = run("generate", PROMPT, "--dry-run", "--decoder", tiny_decoder, "--device", "cpu")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())  # offline, not in checkpoints/: the command that fetches it
    assert f"planner '{LLAMA_PLANNER}' not found" in message
    assert (f"hf download Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF qwen2.5-coder-1.5b-instruct-q4_k_m.gguf "
            f"--local-dir {tmp_path / 'checkpoints'}") in message  # fmt: skip
    assert [call[2] for call in hub_calls] == [True]  # the cache only: HF_HUB_OFFLINE=1
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(tiny_planner_gguf, tmp_path / "checkpoints" / LLAMA_PLANNER.rsplit("/", 1)[1])
    out = tmp_path / "story.wav"
    result = run("generate", PROMPT, "-o", out, "--duration", "3", "--decoder", tiny_decoder, *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "story.plan.json").read_text())["render"]["planner"] == LLAMA_PLANNER


def test_without_llama_cpp_the_default_planner_is_qwen_1_5b_through_transformers(
    run, tiny_planner, tiny_decoder, tmp_path, monkeypatch
):  # fmt: skip
    import importlib.util

    from audiostory_cli.checkpoints import TRANSFORMERS_PLANNER

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    shutil.copytree(tiny_planner, tmp_path / "checkpoints" / "Qwen2.5-1.5B-Instruct")
    out = tmp_path / "story.wav"
    result = run("generate", PROMPT, "-o", out, "--duration", "3", "--decoder", tiny_decoder, *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "story.plan.json").read_text())["render"]["planner"] == TRANSFORMERS_PLANNER


def test_a_batch_names_the_default_planner_its_device_picks(monkeypatch):
    import importlib.util

    from audiostory_cli.batch.local import with_default_refs
    from audiostory_cli.checkpoints import DEFAULT_DECODER, LLAMA_PLANNER, TRANSFORMERS_PLANNER
    from audiostory_cli.settings import RenderOptions

    real = importlib.util.find_spec
    installed = lambda name, *a: object() if name == "llama_cpp" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", installed)
    on_cpu = with_default_refs(RenderOptions(), device="cpu")
    assert (on_cpu.planner, on_cpu.decoder) == (LLAMA_PLANNER, DEFAULT_DECODER)
    assert with_default_refs(RenderOptions(), device="cuda").planner == TRANSFORMERS_PLANNER  # a GPU (on Ray's actors)
    transformers = with_default_refs(RenderOptions(), device="cpu", planner_engine="transformers")
    assert transformers.planner == TRANSFORMERS_PLANNER
    assert with_default_refs(RenderOptions(bridge="bridges/b"), device="cpu").planner == TRANSFORMERS_PLANNER  # states
    assert with_default_refs(RenderOptions(planner="./mine.gguf"), device="cuda").planner == "./mine.gguf"


def test_help_says_the_defaults_and_why(run):
    result = run("generate", "--help")
    text = "".join(result.stdout.split())  # rich wraps long names at their hyphens
    for said in ("[default: stabilityai/stable-audio-3-small-sfx: 8 steps, fast on a CPU; gated",
                 "on a CPU with the llama extra installed Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/"
                 "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf through llama.cpp (a plan in seconds), else "
                 "Qwen/Qwen2.5-1.5B-Instruct; both Apache-2.0"):  # fmt: skip
        assert "".join(said.split()) in text
