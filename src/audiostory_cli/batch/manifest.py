"""The results manifest of a batch: ``manifest.jsonl`` in the output folder, one JSON record per story.

Each record says how one line of the prompts file ended in one run (``ok``, ``failed`` or ``skipped``) and is
appended the moment the story ends: one ``write()`` of the whole line on a descriptor opened with
``O_APPEND``, then ``fsync``, so a crash loses no finished record and two records never interleave. A run
killed in the middle of a ``write()`` can leave a torn last line; the reader skips it and the next run starts
its first record on a fresh line. Runs append to one file; ``run`` tells them apart, and the last record of a
line is its current state. No torch here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..errors import AudioIOError

MANIFEST_NAME = "manifest.jsonl"  # in the output folder
STATUSES = ("ok", "failed", "skipped")  # ok: rendered now; failed: see error; skipped: already finished


@dataclass(frozen=True)
class Record:
    """How one line of the prompts file ended in one run."""

    line: int  # 1-based line number in the prompts file
    prompt: str  # the story prompt of that line
    output: str | None  # audio file name inside the output folder; None when the line had no usable name
    status: str  # one of STATUSES
    seconds: float  # wall time this run spent on the line (planning + rendering + writing)
    error: str | None = None  # the one-line message when status is "failed"
    run: str = ""  # id of the run that wrote the record (its start time and process id)
    ended: str = ""  # when the story ended, UTC, ISO 8601 to the millisecond (``now_utc``)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")  # a bug, not a user error

    def to_json(self) -> str:
        """The record as one line of JSON, no newline."""
        return json.dumps(asdict(self), ensure_ascii=False, separators=(", ", ": "))

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__ if name in data})


def now_utc() -> str:
    """The time now as a record's ``ended``: ``2026-12-01T09:23:02.518Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def manifest_path(outdir: Path) -> Path:
    return Path(outdir) / MANIFEST_NAME


class ManifestWriter:
    """Appends records to a manifest, each durable before ``append`` returns. Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> ManifestWriter:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise AudioIOError(f"could not open the manifest {self.path}: {err.strerror or err}") from err
        if _ends_mid_line(self.path):  # a killed run's torn record: end it, so ours starts on its own line
            self._write(b"\n")
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def append(self, record: Record) -> None:
        """One ``write()`` of the whole line, then ``fsync``."""
        self._write((record.to_json() + "\n").encode("utf-8"))

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise RuntimeError("ManifestWriter used outside its `with` block")
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk; what was written is a torn line the reader skips
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError as err:
            raise AudioIOError(f"could not append to the manifest {self.path}: {err}") from err


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            if file.tell() == 0:
                return False
            file.seek(-1, os.SEEK_END)
            return file.read(1) != b"\n"
    except OSError:
        return False


def read_manifest(path: Path) -> list[Record]:
    """Every whole record of a manifest, oldest first; a torn or foreign line is skipped, a missing file is []."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise AudioIOError(f"could not read the manifest {path}: {err.strerror or err}") from err
    records = []
    for line in raw.split(b"\n"):
        try:
            data = json.loads(line.decode("utf-8"))
            records.append(Record.from_dict(data))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, AttributeError):
            continue  # a torn line (a run killed mid-write) or one that is not ours
    return records


def latest_by_line(records: Iterable[Record]) -> dict[int, Record]:
    """The current state of each line: its last record."""
    return {record.line: record for record in records}
