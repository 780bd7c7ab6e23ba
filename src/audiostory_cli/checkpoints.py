"""Resolve a model reference (local folder, file, hub id) to files on disk.

Order: an explicit local path, ``checkpoints/<name>/`` (``$AUDIOSTORY_CHECKPOINTS`` overrides the folder),
the Hugging Face hub cache, then the hub itself unless ``HF_HUB_OFFLINE=1``. Every miss ends in one
``ModelNotFoundError`` that lists what was looked for and how to get the model.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_PLANNER = "Qwen/Qwen2.5-3B-Instruct"  # the LLM AudioStory builds on, until its own checkpoint loads
DEFAULT_DECODER = "declare-lab/TangoFlux"  # TangoFlux: FluxTransformer2DModel + Oobleck VAE + T5
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the hub spells repository ids


@dataclass(frozen=True)
class ModelKind:
    """What a component needs on disk, used to check a folder and to explain a miss."""

    role: str  # "planner", "decoder": how the error names it
    required: tuple[str, ...]  # files a folder must hold to be this model
    layout: str  # one line saying the folder layout, shown when files are missing


def checkpoints_dir() -> Path:
    """The local weights folder: ``$AUDIOSTORY_CHECKPOINTS`` or ``./checkpoints``."""
    return Path(os.environ.get("AUDIOSTORY_CHECKPOINTS", "checkpoints")).expanduser()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_path(ref: str) -> bool:
    """A reference is a path when it is written as one: absolute, ./ or ~, or a model file's name."""
    return ref.startswith((".", "/", "~")) or ref.endswith((".gguf", ".safetensors", ".json"))


def canonical_ref(ref: str) -> str:
    """A local path as an absolute one (so a saved plan or a resumed run finds it from any folder); a hub id or
    a URL as given."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def resolve(ref: str, kind: ModelKind) -> Path:
    """Return the local folder (or file) holding model ``ref``; raise ``ModelNotFoundError`` on a miss."""
    if not ref or not ref.strip():
        raise ModelNotFoundError(f"the {kind.role} reference is empty", hint="give a folder, a file or a hub id")
    looked: list[str] = []

    # 1. An explicit local path.
    local = Path(ref).expanduser()
    if local.exists():
        return _checked(local, kind)
    looked.append(f"a local path '{ref}'")
    if looks_like_path(ref):
        raise ModelNotFoundError(
            f"{kind.role} '{ref}' not found: no such file or folder", hint=f"expected layout: {kind.layout}"
        )

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
        raise ModelNotFoundError(
            f"'{repo_id}' is gated on the Hugging Face hub and this machine has no access to it",
            hint=f"open https://huggingface.co/{repo_id} logged in, accept its terms, then run `hf auth login` with a "
            f"token of that account (or set HF_TOKEN) and run again; or download it elsewhere and pass its folder",
        ) from None
    except Exception:  # noqa: BLE001 - every other hub failure means "not there"; the caller explains the miss
        return None


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
