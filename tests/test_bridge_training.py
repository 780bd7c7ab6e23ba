"""Semantic alignment (``audiostory train-bridge``) with the tiny planner and decoder: the loss falls, the
files round-trip, resume is exact, errors name what is wrong."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from audiostory_cli.cli import app
from audiostory_cli.conditioning.trained_bridge import (
    CONFIG_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    BridgeAdapter,
    BridgeConfig,
    TrainedBridge,
    query_states,
)
from audiostory_cli.errors import (
    InputError,
    ModelLoadError,
    ModelNotFoundError,
    PlanError,
)
from audiostory_cli.planners.transformers import TransformersPlanner as Planner
from audiostory_cli.registry import load_decoder
from audiostory_cli.testing import TinyPlannerConfig, build_tiny_planner
from audiostory_cli.training.bridge import alignment_loss, read_captions, train_bridge

CPU = torch.device("cpu")
CAPTIONS = [
    "rain on a tin roof",
    "a dog barks twice far away",
    "thunder rolls in the distance",
    "a kettle whistles on the stove",
    "footsteps on gravel come closer",
    "seagulls cry over the harbor",
]
SMALL = {"batch_size": 4, "lr": 3e-3, "n_queries": 8, "projector_hidden": 64, "save_every": 10}  # seconds on a CPU


@pytest.fixture(scope="module")
def planner(tiny_planner):
    return Planner.load(str(tiny_planner), device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def decoder(tiny_decoder):
    return load_decoder(str(tiny_decoder), device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def straight(planner, decoder, tmp_path_factory):
    """40 steps in one run: the reference for the loss and resume tests."""
    torch.set_num_threads(1)  # module fixtures run outside the per-test thread setting
    folder = tmp_path_factory.mktemp("bridge") / "straight"
    return train_bridge(planner, decoder, CAPTIONS, folder, steps=40, **SMALL)


# --- training ---------------------------------------------------------------------------------------------


def test_loss_goes_down(straight):
    assert straight.steps_done == 40 and len(straight.losses) == 40
    first, last = sum(straight.losses[:5]) / 5, sum(straight.losses[-5:]) / 5
    assert last < 0.6 * first, straight.losses
    for total, mse, cosine in zip(straight.losses, straight.mse, straight.cosine):
        assert total == pytest.approx(mse + cosine)
    assert straight.seconds_per_step > 0


def test_resume_20_plus_20_reproduces_40_straight_bit_for_bit(planner, decoder, straight, tmp_path):
    half = train_bridge(planner, decoder, CAPTIONS, tmp_path, steps=20, **SMALL)
    assert half.steps_done == 20 and half.losses == straight.losses[:20]
    resumed = train_bridge(planner, decoder, CAPTIONS, tmp_path, steps=40, resume=True, **SMALL)
    assert resumed.steps_done == 40
    assert resumed.losses == straight.losses
    ours, reference = load_file(str(tmp_path / WEIGHTS_FILE)), load_file(str(straight.out_dir / WEIGHTS_FILE))
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_progress_reports_every_step(planner, decoder, tmp_path):
    reports = []
    train_bridge(planner, decoder, CAPTIONS, tmp_path, steps=3, **SMALL, progress=reports.append)
    steps = [r for r in reports if r.stage == "train"]
    assert [(r.done, r.total) for r in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(r.message.startswith("loss ") for r in steps)


def test_interrupt_keeps_the_last_checkpoint(planner, decoder, tmp_path):
    def stop_at_step_7(report):
        if report.stage == "train" and report.done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        every_5 = {**SMALL, "save_every": 5}
        train_bridge(planner, decoder, CAPTIONS, tmp_path, steps=20, **every_5, progress=stop_at_step_7)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE, CONFIG_FILE, STATE_FILE]  # no partial files
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 5
    BridgeAdapter.load(tmp_path)
    resumed = train_bridge(planner, decoder, CAPTIONS, tmp_path, steps=8, resume=True, **SMALL)
    assert resumed.steps_done == 8 and len(resumed.losses) == 8


def test_a_folder_with_a_checkpoint_needs_resume(planner, decoder, straight):
    with pytest.raises(InputError, match="--resume"):
        train_bridge(planner, decoder, CAPTIONS, straight.out_dir, steps=50, **SMALL)


def test_resume_needs_a_checkpoint_and_the_same_config(planner, decoder, straight, tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        train_bridge(planner, decoder, CAPTIONS, tmp_path / "empty", steps=5, resume=True, **SMALL)
    with pytest.raises(InputError, match="n_queries: saved 8, now 4"):
        train_bridge(planner, decoder, CAPTIONS, straight.out_dir, steps=50, resume=True, **{**SMALL, "n_queries": 4})
    with pytest.raises(InputError, match="already holds 40 steps"):
        train_bridge(planner, decoder, CAPTIONS, straight.out_dir, steps=40, resume=True, **SMALL)


def test_the_planner_and_decoder_stay_frozen(planner, decoder, straight):
    assert not any(p.requires_grad for p in planner.model.parameters())
    assert not any(p.requires_grad for p in decoder.text_encoder.parameters())


def test_masked_rows_do_not_count_in_the_loss():
    target = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    pred = torch.where(mask[..., None], target, torch.full_like(target, 7.0))
    mse, cosine = alignment_loss(pred, target, mask)
    assert float(mse) == 0 and float(cosine) == pytest.approx(0, abs=1e-6)
    mse, cosine = alignment_loss(-target, target, mask)
    assert float(cosine) == pytest.approx(2.0)


# --- the trained bridge -----------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_encodings(planner, straight, tmp_path):
    adapter, _ = BridgeAdapter.load(straight.out_dir)
    adapter.save(tmp_path)
    assert (tmp_path / CONFIG_FILE).read_text() == (straight.out_dir / CONFIG_FILE).read_text()
    first, again = TrainedBridge.load(straight.out_dir, planner), TrainedBridge.load(tmp_path, planner)
    for caption in CAPTIONS[:3]:
        a, b = first.encode_text(caption), again.encode_text(caption)
        assert torch.equal(a.states, b.states) and torch.equal(a.pooled, b.pooled)
        assert torch.equal(a.states, first.encode_text(caption).states)  # deterministic
    with torch.no_grad():
        direct = query_states(adapter, planner, [CAPTIONS[0]])[0]
    assert torch.equal(direct, first.encode_text(CAPTIONS[0]).states)


def test_a_caption_encodes_the_same_alone_or_in_a_batch(planner, straight):
    adapter, _ = BridgeAdapter.load(straight.out_dir)
    with torch.no_grad():
        together = query_states(adapter, planner, CAPTIONS)
        alone = torch.stack([query_states(adapter, planner, [c])[0] for c in CAPTIONS])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_the_bridge_replaces_the_text_encoder_conditioning(planner, decoder, straight):
    bridge = TrainedBridge.load(straight.out_dir, planner)
    caption = CAPTIONS[0]
    ours, t5 = bridge.encode_text(caption), decoder.encode_text(caption)
    dim = decoder.caps.text_width
    assert ours.states.shape == (8, dim) and ours.states.dtype == torch.float32
    assert ours.pooled.shape == (dim,)
    assert t5.states.shape[1] == dim and t5.states.shape[0] != 8
    rows = min(8, t5.states.shape[0])
    assert not torch.allclose(ours.states[:rows], t5.states[:rows], atol=1e-3)
    assert torch.equal(bridge.encode_text(caption).states, ours.states)  # the bridge.TextEncoder protocol


def test_a_renamed_key_is_named_in_the_error(straight, tmp_path):
    shutil.copytree(straight.out_dir, tmp_path, dirs_exist_ok=True)
    state = load_file(str(tmp_path / WEIGHTS_FILE))
    state["projector.1.wieght"] = state.pop("projector.1.weight")
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    named = r"missing keys: projector\.1\.weight.*unexpected keys: projector\.1\.wieght"
    with pytest.raises(ModelLoadError, match=named):
        BridgeAdapter.load(tmp_path)


def test_missing_files_and_unknown_versions_are_clear_errors(straight, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        BridgeAdapter.load(tmp_path / "nowhere")
    shutil.copytree(straight.out_dir, tmp_path / "b")
    (tmp_path / "b" / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelNotFoundError, match=f"lacks {WEIGHTS_FILE}"):
        BridgeAdapter.load(tmp_path / "b")
    shutil.copytree(straight.out_dir, tmp_path / "c")
    config = json.loads((tmp_path / "c" / CONFIG_FILE).read_text())
    (tmp_path / "c" / CONFIG_FILE).write_text(json.dumps({**config, "format_version": 9}))
    with pytest.raises(ModelLoadError, match="format_version = 9"):
        BridgeAdapter.load(tmp_path / "c")


def test_a_planner_of_another_hidden_size_is_refused(straight, tmp_path):
    narrow = TinyPlannerConfig(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    other = Planner.load(str(build_tiny_planner(tmp_path / "narrow", config=narrow)), device=CPU, dtype=torch.float32)
    with pytest.raises(ModelLoadError, match="hidden size 64.*hidden size 32"):
        TrainedBridge.load(straight.out_dir, other)


def test_config_json_round_trip():
    config = BridgeConfig(llm_hidden=64, text_dim=32, planner="p", decoder="d")
    assert BridgeConfig.from_json(config.to_json()) == config
    with pytest.raises(ModelLoadError, match="unknown: colour"):
        BridgeConfig.from_dict({**json.loads(config.to_json()), "colour": "red"})
    with pytest.raises(InputError, match="n_queries = 0"):
        BridgeConfig(n_queries=0, llm_hidden=64, text_dim=32, planner="p", decoder="d")


# --- captions ---------------------------------------------------------------------------------------------


def test_read_captions_from_a_text_file(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("# sounds\nrain on a tin roof\n\n   \n  a dog barks  \n#done\n")
    assert read_captions(path) == ["rain on a tin roof", "a dog barks"]
    path.write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="no captions"):
        read_captions(path)
    with pytest.raises(InputError, match="not found"):
        read_captions(tmp_path / "missing.txt")


def test_read_captions_from_a_folder_of_plans(tmp_path):
    shutil.copy("examples/plan.json", tmp_path / "a.json")
    plan = json.loads(Path("examples/plan.json").read_text())
    expected = [e["caption"] for e in plan["events"]]
    (tmp_path / "b.json").write_text(json.dumps({**plan, "events": plan["events"][:1]}))
    assert read_captions(tmp_path) == expected + expected[:1]
    (tmp_path / "c.json").write_text('{"total_s": 5, "events": [')
    with pytest.raises(PlanError, match="c.json"):
        read_captions(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no captions"):
        read_captions(tmp_path / "empty")


# --- the command ------------------------------------------------------------------------------------------


def test_cli_trains_then_refuses_to_overwrite_without_resume(tiny_planner, tiny_decoder, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n")
    out = tmp_path / "bridge"
    args = ["train-bridge", str(captions), "-o", str(out), "--planner", str(tiny_planner), "--decoder",
            str(tiny_decoder), "--steps", "6", "--batch-size", "3", "--n-queries", "4", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, CONFIG_FILE, STATE_FILE]
    assert "trained 6 steps" in result.stderr and "s/step" in result.stderr
    assert json.loads((out / CONFIG_FILE).read_text())["n_queries"] == 4

    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 1
    assert again.stdout == ""
    errors = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--resume" in " ".join(again.stderr.split())

    more = [*args[:8], "--steps", "9", "--resume", "--device", "cpu"]  # --n-queries: the checkpoint's
    resumed = CliRunner().invoke(app, more, catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 9


# --- the real planner -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_planner_bridge_loss_decreases(tiny_decoder, tmp_path, real_planner_gguf):
    """Qwen2.5-Coder-1.5B-Instruct (Q4_K_M gguf, bf16 on CPU) against the tiny decoder's T5: 10 steps."""
    path = real_planner_gguf
    started = time.perf_counter()
    real = Planner.load(path, device=CPU, dtype=torch.bfloat16)
    decoder = load_decoder(str(tiny_decoder), device=CPU, dtype=torch.float32)
    loaded = time.perf_counter()
    captions = CAPTIONS + ["a wooden door creaks open", "fire crackles in a fireplace", "waves break on pebbles",
                           "a clock ticks in a quiet room", "a train horn blows"]  # fmt: skip
    result = train_bridge(real, decoder, captions, tmp_path, steps=10, batch_size=4, save_every=10)
    print(f"load {loaded - started:.1f} s, {result.seconds_per_step:.1f} s/step, losses {result.losses}")
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3, result.losses
    bridge = TrainedBridge.load(tmp_path, real)
    assert bridge.encode_text("rain on a tin roof").states.shape == (32, decoder.caps.text_width)
