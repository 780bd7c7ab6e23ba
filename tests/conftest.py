"""Shared fixtures: tiny random checkpoints built once per session, isolated state per test."""

from __future__ import annotations

import pytest
import torch

from audiostory_cli.testing import build_tiny_decoder, build_tiny_planner


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may reach the hub, and ``checkpoints/`` lookups land in an empty folder of the test's own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AUDIOSTORY_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.delenv("AUDIOSTORY_DEBUG", raising=False)


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny models are all overhead: extra threads only wait on each other (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    if not request.node.get_closest_marker("slow"):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_planner(tmp_path_factory):
    return build_tiny_planner(tmp_path_factory.mktemp("models") / "planner")


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory):
    return build_tiny_decoder(tmp_path_factory.mktemp("models") / "decoder")
