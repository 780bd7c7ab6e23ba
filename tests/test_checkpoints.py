"""Model references: local path, checkpoints/<name>/, hub cache, and one clear message on a miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiostory_cli.checkpoints import ModelKind, resolve
from audiostory_cli.errors import ModelNotFoundError

KIND = ModelKind(role="decoder", required=("config.json",), layout="config.json and weights")


def test_local_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve(str(tmp_path / "m"), KIND) == tmp_path / "m"


def test_local_file_is_returned_as_is(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert resolve(str(tmp_path / "model.gguf"), KIND) == tmp_path / "model.gguf"


def test_checkpoints_folder_by_hub_name(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints" / "TangoFlux"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert resolve("declare-lab/TangoFlux", KIND) == folder


def test_folder_lacking_files_names_them(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"lacks config.json .*expected layout: config.json and weights"):
        resolve(str(tmp_path / "m"), KIND)


def test_missing_path_names_it(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"decoder '.*/nowhere' not found: no such file or folder"):
        resolve(str(tmp_path / "nowhere"), KIND)


def test_missing_hub_id_offline_says_where_it_looked(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve("someone/no-such-model", KIND)
    message = str(err.value)
    assert "someone/no-such-model" in message
    assert "checkpoints/no-such-model/" in message
    assert "hub cache" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download someone/no-such-model" in message


def test_empty_reference():
    with pytest.raises(ModelNotFoundError, match="reference is empty"):
        resolve(" ", KIND)


def test_gated_hub_repository_says_how_to_get_access(tmp_path, monkeypatch, gated_hub):
    """A gated repository (Stable Audio 3's) is not "not found": the message says how to get access."""
    monkeypatch.setenv("AUDIOSTORY_CHECKPOINTS", str(tmp_path / "checkpoints"))
    with pytest.raises(ModelNotFoundError) as caught:
        resolve("stabilityai/stable-audio-3-small-sfx", KIND)
    assert "'stabilityai/stable-audio-3-small-sfx' is gated on the Hugging Face hub" in str(caught.value)
    assert "https://huggingface.co/stabilityai/stable-audio-3-small-sfx" in caught.value.hint
    assert "hf auth login" in caught.value.hint


# --- one file of a hub repository: owner/repo/file.gguf -------------------------------------------------------

REPO, FILE = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
HUB_FILE = f"{REPO}/{FILE}"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface_hub's ``hf_hub_download`` without a network: ``hub.cached`` / ``hub.remote`` (paths or
    exceptions) answer the cache-only and the downloading call; ``hub.calls`` records every call."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    class Hub:
        calls: list[tuple[str, str, bool]] = []
        cached: object = LocalEntryNotFoundError("not in the cache")
        remote: object = EntryNotFoundError("404: no such file")

    def download(repo_id, filename, *, local_files_only=False):
        Hub.calls.append((repo_id, filename, local_files_only))
        answer = Hub.cached if local_files_only else Hub.remote
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    Hub.calls = []
    return Hub


def _file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


@pytest.mark.parametrize("where", [FILE, f"Qwen2.5-Coder-1.5B-Instruct-GGUF/{FILE}"], ids=["file", "repo/file"])
def test_a_hub_file_in_checkpoints_is_used_without_asking_the_hub(hub, tmp_path, where):
    local = _file(tmp_path / "checkpoints" / where)
    assert resolve(HUB_FILE, KIND) == local
    assert hub.calls == []


def test_a_hub_file_comes_from_the_cache_before_the_hub(hub, tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    cached, downloaded = _file(tmp_path / "hub-cache" / FILE), _file(tmp_path / "downloaded" / FILE)
    hub.cached, hub.remote = cached, downloaded
    assert resolve(HUB_FILE, KIND) == cached
    assert hub.calls == [(REPO, FILE, True)]  # in the cache: the hub is not asked
    hub.cached, hub.calls = LocalEntryNotFoundError("not in the cache"), []
    assert resolve(HUB_FILE, KIND) == downloaded
    assert hub.calls == [(REPO, FILE, True), (REPO, FILE, False)]


def test_a_hub_file_offline_asks_only_the_cache_and_says_which_download_fetches_it(hub, tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve(HUB_FILE, KIND)
    assert hub.calls == [(REPO, FILE, True)]
    message = str(caught.value)
    assert message.startswith(f"decoder '{HUB_FILE}' not found; looked for")
    assert str(tmp_path / "checkpoints" / FILE) in message and "hub cache" in message and "HF_HUB_OFFLINE=1" in message
    assert caught.value.hint == f"download it with `hf download {REPO} {FILE} --local-dir {tmp_path / 'checkpoints'}`"


def test_a_hub_file_missing_on_the_hub_names_the_repository(hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotFoundError, match=rf"the hub repository '{REPO}' \(not reachable, or no such"):
        resolve(HUB_FILE, KIND)
    assert hub.calls == [(REPO, FILE, True), (REPO, FILE, False)]


def test_a_hub_file_of_a_gated_repository_says_how_to_get_access(hub, monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.remote = GatedRepoError.__new__(GatedRepoError)
    Exception.__init__(hub.remote, "403 Client Error: access to this model is restricted")
    with pytest.raises(ModelNotFoundError) as caught:
        resolve(HUB_FILE, KIND)
    assert str(caught.value).startswith(f"'{REPO}' is gated on the Hugging Face hub")
    assert f"https://huggingface.co/{REPO}" in caught.value.hint and "hf auth login" in caught.value.hint


@pytest.mark.parametrize("ref", ["x.gguf", "./x.gguf", "/nowhere/x.gguf", "models/x.gguf", "~/x.gguf"])
def test_a_gguf_path_stays_a_local_path(hub, ref):
    with pytest.raises(ModelNotFoundError, match=r"not found: no such file or folder"):
        resolve(ref, KIND)
    assert hub.calls == []


def test_an_existing_local_path_shaped_like_a_hub_file_is_the_local_file(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _file(tmp_path / REPO / FILE)
    assert resolve(HUB_FILE, KIND) == Path(HUB_FILE)
    assert hub.calls == []


# --- the default planner: by device and installed engine ---------------------------------------------------------


@pytest.fixture
def llama_installed(monkeypatch):
    """``llama_installed(bool)``: whether llama-cpp-python looks installed (``importlib.util.find_spec``)."""
    import importlib.util

    real = importlib.util.find_spec

    def set_installed(installed: bool) -> None:
        def find_spec(name, *args, **kwargs):
            if name == "llama_cpp" and not installed:
                return None
            return real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return set_installed


def test_the_default_planner_is_the_gguf_on_a_cpu_with_llama_cpp_and_transformers_elsewhere(llama_installed):
    import importlib.util

    import torch

    from audiostory_cli.checkpoints import LLAMA_PLANNER, TRANSFORMERS_PLANNER, default_planner

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    llama_installed(True)
    assert default_planner(torch.device("cpu")) == default_planner("cpu") == LLAMA_PLANNER == HUB_FILE
    assert default_planner("cuda") == default_planner("mps") == TRANSFORMERS_PLANNER == "Qwen/Qwen2.5-1.5B-Instruct"
    assert default_planner("cpu", "transformers") == TRANSFORMERS_PLANNER  # a trained bridge reads hidden states
    assert default_planner("cuda", "llama_cpp") == LLAMA_PLANNER
    llama_installed(False)
    assert default_planner("cpu") == TRANSFORMERS_PLANNER
