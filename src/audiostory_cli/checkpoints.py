"""Resolve a model reference (local folder, file, hub id, hub file) to files on disk, and name the models a
run uses when none is given.

Order: an explicit local path, ``checkpoints/<name>/`` (``$AUDIOSTORY_CHECKPOINTS`` overrides the folder),
the Hugging Face hub cache, then the hub itself unless ``HF_HUB_OFFLINE=1``. A hub file
(``owner/repo/file.gguf``: one file of a repository) is looked for as ``checkpoints/<file>`` and
``checkpoints/<repo>/<file>``, then in the hub cache and on the hub. Every miss ends in one
``ModelNotFoundError`` that lists what was looked for and how to get the model.

The defaults, chosen from measurements and licenses (README, "Defaults"): the decoder Stable Audio 3
Small-SFX; the planner by device and installed engine only (``default_planner``), never by the machine's
load, so a saved plan names the same model on a rerun.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelNotFoundError
from .paths import expand_user

if TYPE_CHECKING:
    import torch

DEFAULT_DECODER = "stabilityai/stable-audio-3-small-sfx"  # SA3 Small-SFX: 8 steps, no CFG; gated (accept its terms)
LLAMA_PLANNER = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"  # the CPU default
#   with llama.cpp installed: 1.1 GB, a 60 s plan in 7-9 s on 2 cores (benchmarks/planner_speed.md), Apache-2.0
TRANSFORMERS_PLANNER = "Qwen/Qwen2.5-1.5B-Instruct"  # the default elsewhere (a GPU, no llama.cpp, a bridge): Apache-2.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells repository ids
_HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/((?:[\w.-]+/)*[\w.-]+\.gguf)$")  # owner/name/file.gguf


@dataclass(frozen=True)
class ModelKind:
    """What a component needs on disk, used to check a folder and to explain a miss."""

    role: str  # "planner", "decoder": how the error names it
    required: tuple[str, ...]  # files a folder must hold to be this model
    layout: str  # one line saying the folder layout, shown when files are missing


def checkpoints_dir() -> Path:
    """The local weights folder: ``$AUDIOSTORY_CHECKPOINTS`` or ``./checkpoints``."""
    return expand_user(os.environ.get("AUDIOSTORY_CHECKPOINTS", "checkpoints"))


def cache_dir() -> Path:
    """Where audiostory keeps what it measured or built once (prompt caches, the CPU batching choice):
    ``$AUDIOSTORY_CACHE``, else ``$XDG_CACHE_HOME/audiostory`` (``~/.cache/audiostory``)."""
    root = os.environ.get("AUDIOSTORY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "audiostory"
    return expand_user(root)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def default_planner(device: torch.device | str, engine: str | None = None) -> str:
    """The planner a run uses when none is named, decided by the device and the installed engine alone: on a
    CPU, with llama-cpp-python installed (the ``llama`` extra), the 1.5B Q4_K_M GGUF through llama.cpp; else
    (a GPU, no llama.cpp, or ``engine`` "transformers", which a trained bridge needs) Qwen2.5-1.5B-Instruct
    through transformers. ``device``: a torch device or its type ("cpu", "cuda", "mps")."""
    if engine == "llama_cpp":
        return LLAMA_PLANNER
    on_cpu = getattr(device, "type", device) == "cpu"
    if engine is None and on_cpu and importlib.util.find_spec("llama_cpp") is not None:
        return LLAMA_PLANNER
    return TRANSFORMERS_PLANNER


def hub_file(ref: str) -> tuple[str, str] | None:
    """``(repo id, file in it)`` for a hub file reference ``owner/repo/file.gguf``, else None."""
    match = _HUB_FILE.match(ref)
    return (match[1], match[2]) if match else None


def looks_like_path(ref: str) -> bool:
    """A reference is a path when it is written as one: absolute, ./ or ~, or a model file's name (but not a
    hub file, ``owner/repo/file.gguf``)."""
    if hub_file(ref) is not None:
        return False
    return ref.startswith((".", "/", "~")) or ref.endswith((".gguf", ".safetensors", ".json"))


def canonical_ref(ref: str) -> str:
    """A local path as an absolute one (so a saved plan or a resumed run finds it from any folder); a hub id or
    a URL as given."""
    path = expand_user(ref)
    return str(path.resolve()) if path.exists() else ref


def resolve(ref: str, kind: ModelKind) -> Path:
    """Return the local folder (or file) holding model ``ref``; raise ``ModelNotFoundError`` on a miss."""
    if not ref or not ref.strip():
        raise ModelNotFoundError(f"the {kind.role} reference is empty", hint="give a folder, a file or a hub id")
    looked: list[str] = []

    # 1. An explicit local path.
    local = expand_user(ref)
    if local.exists():
        return _checked(local, kind)
    looked.append(f"a local path '{ref}'")
    if looks_like_path(ref):
        raise ModelNotFoundError(
            f"{kind.role} '{ref}' not found: no such file or folder", hint=f"expected layout: {kind.layout}"
        )
    if hub_file(ref) is not None:
        return _resolve_hub_file(ref, kind, looked)

    # 2. checkpoints/<name>/ (the name is the hub id's last part).
    name = ref.rsplit("/", 1)[-1]
    folder = checkpoints_dir() / name
    if folder.is_dir():
        return _checked(folder, kind)
    looked.append(f"{folder}/")

    # 3. The hub cache, then 4. the hub (only for owner/name ids).
    if _HUB_ID.match(ref):
        cached = _from_hub(ref, local_files_only=True)
        if cached is not None:
            return _checked(cached, kind)
        looked.append("the Hugging Face hub cache")
        if hub_offline():
            looked.append("not the hub itself (HF_HUB_OFFLINE=1)")
        else:
            downloaded = _from_hub(ref, local_files_only=False)
            if downloaded is not None:
                return _checked(downloaded, kind)
            looked.append(f"the hub id '{ref}' (not reachable or no such repository)")
    raise ModelNotFoundError(
        f"{kind.role} '{ref}' not found; looked for {', '.join(looked)}",
        hint=f"download it with `hf download {ref}` or put it in {folder}/ ({kind.layout})",
    )


def _resolve_hub_file(ref: str, kind: ModelKind, looked: list[str]) -> Path:
    """One file of a hub repository (``owner/repo/file.gguf``): ``checkpoints/<file>``,
    ``checkpoints/<repo>/<file>``, the hub cache, then the hub unless offline."""
    repo_id, filename = hub_file(ref)
    # 2. checkpoints/<file>, checkpoints/<repo name>/<file> (where `hf download ... --local-dir` puts it).
    for local in (checkpoints_dir() / filename, checkpoints_dir() / repo_id.rsplit("/", 1)[-1] / filename):
        if local.is_file():
            return local
        looked.append(str(local))
    # 3. The hub cache, then 4. the hub.
    cached = _file_from_hub(repo_id, filename, local_files_only=True)
    if cached is not None:
        return cached
    looked.append("the Hugging Face hub cache")
    if hub_offline():
        looked.append("not the hub itself (HF_HUB_OFFLINE=1)")
    else:
        downloaded = _file_from_hub(repo_id, filename, local_files_only=False)
        if downloaded is not None:
            return downloaded
        looked.append(f"the hub repository '{repo_id}' (not reachable, or no such repository or file)")
    raise ModelNotFoundError(
        f"{kind.role} '{ref}' not found; looked for {', '.join(looked)}",
        hint=f"download it with `hf download {repo_id} {filename} --local-dir {checkpoints_dir()}`",
    )


def _from_hub(repo_id: str, *, local_files_only: bool) -> Path | None:
    """The repository's snapshot folder, or None; a gated repository this account may not read is its own
    error, saying how to get access (Stable Audio 3's checkpoints are gated)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=local_files_only))
    except GatedRepoError:
        raise _gated(repo_id) from None
    except Exception:  # noqa: BLE001 - every other hub failure means "not there"; the caller explains the miss
        return None


def _file_from_hub(repo_id: str, filename: str, *, local_files_only: bool) -> Path | None:
    """One file of the repository (in the hub cache), or None; a gated repository is ``_gated``'s error."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import GatedRepoError
    except ImportError:
        return None
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_files_only))
    except GatedRepoError:
        raise _gated(repo_id) from None
    except Exception:  # noqa: BLE001 - every other hub failure means "not there"; the caller explains the miss
        return None


def _gated(repo_id: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"'{repo_id}' is gated on the Hugging Face hub and this machine has no access to it",
        hint=f"open https://huggingface.co/{repo_id} logged in, accept its terms, then run `hf auth login` with a "
        f"token of that account (or set HF_TOKEN) and run again; or download it elsewhere and pass its folder",
    )


def _checked(path: Path, kind: ModelKind) -> Path:
    if path.is_file():
        return path
    missing = [name for name in kind.required if not (path / name).exists()]
    if missing:
        raise ModelNotFoundError(
            f"{kind.role} folder {path} lacks {', '.join(missing)}", hint=f"expected layout: {kind.layout}"
        )
    return path


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' and diffusers' logs, progress bars and warnings while a model loads; the CLI
    draws its own progress. Settings are restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), _no_gguf_bar():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def _no_gguf_bar() -> Iterator[None]:
    """The GGUF de-quantization bar is a bare ``tqdm`` that ``disable_progress_bar`` misses (transformers
    5.x): disable it for the load only, rather than hide all of stderr (the CLI's own progress lives there)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
