"""Model references: local path, checkpoints/<name>/, hub cache, and one clear message on a miss."""

from __future__ import annotations

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


def test_gated_hub_repository_says_how_to_get_access(tmp_path, monkeypatch):
    """A gated repository (Stable Audio 3's) is not "not found": the message says how to get access."""
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
    monkeypatch.setenv("AUDIOSTORY_CHECKPOINTS", str(tmp_path / "checkpoints"))
    with pytest.raises(ModelNotFoundError) as caught:
        resolve("stabilityai/stable-audio-3-small-sfx", KIND)
    assert "'stabilityai/stable-audio-3-small-sfx' is gated on the Hugging Face hub" in str(caught.value)
    assert "https://huggingface.co/stabilityai/stable-audio-3-small-sfx" in caught.value.hint
    assert "hf auth login" in caught.value.hint
