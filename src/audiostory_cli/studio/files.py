"""The studio's output folder: every file the page reads, writes or serves lies inside it.

A name that comes from the page (a plan to load, a version to go back to) goes through ``StudioFolder.inside``:
resolved (symlinks followed) and refused unless it stays in the folder; absolute paths, ``..`` that climbs out,
links pointing elsewhere and NUL bytes are one ``InputError`` each. Versions made on the page are numbered
files ``story-NNN.wav`` with ``story-NNN.plan.json`` (and the picture ``story-NNN.png``) beside them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..story import shown

PLAN_SUFFIX = ".plan.json"  # what a plan beside its audio is called (pipeline.plan_path_for)
VERSION_STEM = "story-"  # versions made on the page: story-001.wav, story-001.plan.json, story-001.png
VERSION_DIGITS = 3  # story-001 .. story-999, then story-1000 (names still sort by their number)
_VERSION = re.compile(rf"^{re.escape(VERSION_STEM)}(\d+)(?:\.plan\.json|\.[A-Za-z0-9]+)$")
SERVER_FOLDER = ".studio"  # inside the output folder: Gradio's own cache (what it serves) lives here


@dataclass(frozen=True)
class Version:
    """The files of one version of a story made on the page."""

    number: int  # 1, 2, ... in the order they were made in the folder
    audio_path: Path  # story-NNN.wav
    plan_path: Path  # story-NNN.plan.json, beside it
    picture_path: Path  # story-NNN.png, beside it


class StudioFolder:
    """The output folder (resolved, created) and the one check every page-given name goes through."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"StudioFolder({str(self.root)!r})"

    def inside(self, name: str | os.PathLike[str] | None, what: str = "file") -> Path:
        """``name`` (relative to the folder, or an absolute path already inside it) resolved; an
        ``InputError`` unless it stays inside the folder once every link is followed."""
        text = "" if name is None else os.fspath(name)
        if not text.strip():
            raise InputError(f"no {what} given", hint=f"choose a file in {self.root}")
        if "\x00" in text:
            raise InputError(f"{what} {shown(text)} holds a NUL byte: refused")
        path = Path(text)
        if path.is_absolute() or text.startswith("~"):
            if not path.is_absolute() or not _within(Path(os.path.abspath(path)), self.root):
                raise InputError(f"{what} {shown(text)} is an absolute path outside the studio's folder: refused",
                                 hint=f"name a file inside {self.root}")  # fmt: skip
        else:
            path = self.root / path
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as err:  # a loop of links, a name too long
            raise InputError(f"{what} {shown(text)}: {getattr(err, 'strerror', None) or err}") from None
        if not _within(real, self.root):
            how = "leads" if path.is_symlink() or any(p.is_symlink() for p in path.parents) else "is"
            raise InputError(f"{what} {shown(text)} {how} outside the studio's folder {self.root}: refused",
                             hint="the page reads and writes only inside its --outdir")  # fmt: skip
        return real

    def plan_files(self) -> list[str]:
        """The plans in the folder (``*.plan.json``, not in subfolders, none that links out), by name."""
        names = []
        for path in sorted(self.root.glob(f"*{PLAN_SUFFIX}")):
            if path.is_file() and _within(path.resolve(), self.root):
                names.append(path.name)
        return names

    def version(self, number: int) -> Version:
        stem = f"{VERSION_STEM}{number:0{VERSION_DIGITS}d}"
        return Version(number, self.root / f"{stem}.wav", self.root / f"{stem}{PLAN_SUFFIX}", self.root / f"{stem}.png")

    def next_version(self) -> Version:
        """The first number after every ``story-NNN.*`` already in the folder (another session's included)."""
        numbers = [int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION.match(p.name))]
        return self.version(max(numbers, default=0) + 1)

    def server_folder(self) -> Path:
        """Where Gradio keeps the files it serves (its cache), inside the output folder."""
        return self.root / SERVER_FOLDER


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
