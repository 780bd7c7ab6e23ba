"""Paths as users write them: ``~`` expanded, never a crash on what cannot be expanded."""

from __future__ import annotations

import os
from pathlib import Path


def expand_user(path: str | os.PathLike) -> Path:
    """``Path(path).expanduser()``; where ``~name`` names no user (``~0``), the path as written, which then
    fails as any missing path does (``expanduser`` raises RuntimeError there)."""
    path = Path(path)
    try:
        return path.expanduser()
    except RuntimeError:
        return path
