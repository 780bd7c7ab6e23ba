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
