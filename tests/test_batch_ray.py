"""``audiostory batch --ray``: a real local Ray cluster on the tiny models, against a local run, sample for sample."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audiostory_cli.batch.manifest import read_manifest
from audiostory_cli.batch.ray import actor_plan
from audiostory_cli.cli import app
from audiostory_cli.errors import InputError

FAST = ["--duration", "1.5", "--steps", "2", "--device", "cpu"]
PROMPTS = (
    "a storm reaches a quiet harbor, a ship's bell rings",
    "a campfire at night, wood crackles, an owl calls",
    "a morning train journey, doors close, wheels on rails",
)


@pytest.fixture
def models(tiny_planner, tiny_decoder):
    return ["--planner", str(tiny_planner), "--decoder", str(tiny_decoder)]


def _batch(prompts, outdir, models, *extra, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "audiostory_cli", "batch", str(prompts), "-o", str(outdir), *models, *FAST,
               "--json", *extra]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)


def _audio_names(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.wav") if not p.name.startswith("."))


def _same_samples(a_folder, b_folder) -> None:
    names = _audio_names(a_folder)
    assert names == _audio_names(b_folder) and names
    for name in names:
        a, rate_a = sf.read(a_folder / name, dtype="float32")
        b, rate_b = sf.read(b_folder / name, dtype="float32")
        assert rate_a == rate_b and np.array_equal(a, b), name


def test_ray_local_writes_the_same_files_and_samples_as_a_local_run(models, tmp_path):
    pytest.importorskip("ray.data", reason='the ray extra is not installed: pip install -e ".[ray]"')
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": PROMPTS[0]}, {"prompt": PROMPTS[1], "seed": 9, "output": "campfire.flac"}, {"prompt": ""},
             {"prompt": PROMPTS[2], "duration": 2.5}]  # fmt: skip
    prompts.write_text("\n".join(map(json.dumps, lines)) + "\n")
    local = _batch(prompts, tmp_path / "local", models)
    on_ray = _batch(prompts, tmp_path / "ray", models, "--ray", "local")
    assert local.returncode == on_ray.returncode == 1  # line 3 fails the same way on both
    assert "ray: 1 story actor(s) on cpu" in on_ray.stderr
    _same_samples(tmp_path / "local", tmp_path / "ray")
    flac = [sf.read(tmp_path / folder / "campfire.flac", dtype="float32")[0] for folder in ("local", "ray")]
    assert np.array_equal(*flac)
    plans = [json.loads((tmp_path / f / "campfire.plan.json").read_text()) for f in ("local", "ray")]
    assert plans[0] == plans[1]  # same plan, same recorded request and settings
    manifests = [read_manifest(tmp_path / folder / "manifest.jsonl") for folder in ("local", "ray")]
    assert sorted((r.line, r.output, r.status, r.error) for r in manifests[0]) == sorted(
        (r.line, r.output, r.status, r.error) for r in manifests[1]
    )  # line 3 (an empty prompt) is recorded first, before any model loads
    # The resume rules are the local ones: a local run over the Ray run's folder renders nothing.
    again = _batch(prompts, tmp_path / "ray", models)
    assert {json.loads(line)["status"] for line in again.stdout.splitlines()} == {"skipped", "failed"}


# A cluster of its own for one test: started by a helper process, ended with it (`ray stop` would end every
# Ray process on the machine, other users' included). Prints the address, then holds until stdin closes.
_CLUSTER = """
import sys, ray
ray.init(address="local", num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


@pytest.mark.slow
def test_a_running_cluster_by_address_and_a_resumed_ray_run(models, tmp_path):
    """A cluster already running (2 CPUs), `--ray ADDRESS`, and a Ray run that finishes a local one."""
    pytest.importorskip("ray.data", reason='the ray extra is not installed: pip install -e ".[ray]"')
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    assert _batch(prompts, tmp_path / "local", models).returncode == 0
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in _audio_names(tmp_path / "local")[:1]:  # a folder with the first story already finished
        for path in (tmp_path / "local").glob(name.removesuffix(".wav") + ".*"):
            shutil.copy2(path, partial / path.name)
    env = {"RAY_AUTH_MODE": "disabled"}  # a throwaway cluster on localhost; Ray 2.60's token auth refused us by address
    cluster = subprocess.Popen([sys.executable, "-c", _CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env={**os.environ, **env})  # fmt: skip
    try:
        address = cluster.stdout.readline().strip()
        assert address, "the helper did not start a cluster"
        result = _batch(prompts, partial, models, "--ray", address, env=env)
    finally:
        cluster.communicate(input="", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = [json.loads(line)["status"] for line in result.stdout.splitlines()]
    assert statuses == ["skipped", "ok", "ok"]
    _same_samples(tmp_path / "local", partial)


def test_without_ray_installed_the_error_is_one_line_naming_the_extra(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where the extra is not installed
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    result = CliRunner().invoke(app, ["batch", str(prompts), "-o", str(tmp_path / "out"), *models, *FAST, "--ray",
                                      "auto"])  # fmt: skip
    assert result.exit_code == 1
    assert 'pip install "audiostory-cli[ray]"' in result.stderr
    assert not (tmp_path / "out").exists()


def test_one_actor_per_gpu_else_one_cpu_actor_per_node():
    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 8.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]  # fmt: skip
    gpu = actor_plan({"CPU": 24.0, "GPU": 4.0}, nodes, "auto", stories=100)
    assert (gpu.actors, gpu.num_gpus, gpu.device) == (4, 1, "cuda")
    assert actor_plan({"CPU": 24.0, "GPU": 4.0}, nodes, "auto", stories=2).actors == 2  # no idle actors
    cpu = actor_plan({"CPU": 24.0}, nodes, "auto", stories=100)
    assert (cpu.actors, cpu.num_gpus, cpu.num_cpus, cpu.device) == (2, 0, 8.0, "cpu")
    assert actor_plan({"CPU": 24.0, "GPU": 4.0}, nodes, "cpu", stories=100).device == "cpu"
    with pytest.raises(InputError, match="no GPU"):
        actor_plan({"CPU": 24.0}, nodes, "cuda", stories=1)
