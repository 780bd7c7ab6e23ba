"""What makes a batch resumable: which stories are finished, the folder lock, and a killed run's leftovers.

A story is finished when its audio and its plan are both in the output folder and the plan's recorded
``request`` (prompt, duration, seed, tone, max events, every render setting, the model references) equals
what the line asks for now. ``audio_io.write_story_files`` commits audio and plan as a pair, the audio last, so
an audio file always has its own plan beside it. No torch here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

# audio_io.atomic_write's temporary names: ".NAME.XXXXXXXX.partial.EXT"
_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{8}\.partial(\.[^.]+)?$")


def check_unique_outputs(outputs: Sequence[tuple[int, str]]) -> None:
    """(line, output name) for every line; two lines writing one file is an error before any work."""
    first: dict[str, int] = {}
    clashes = []
    for line, name in outputs:
        key = name.casefold()  # story.wav and Story.WAV are one file on macOS and Windows
        if key in first:
            clashes.append(f"lines {first[key]} and {line} both write {name}")
        else:
            first[key] = line
    if clashes:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise InputError(
            f"duplicate output names: {'; '.join(clashes[:3])}{more}",
            hint="give each line its own \"output\", or leave it out to derive one from the prompt",
        )


def request_record(**fields: Any) -> dict[str, Any]:
    """A request as it is saved in a plan and compared on resume: plain JSON values, keys in a fixed order."""
    return json.loads(json.dumps(dict(sorted(fields.items()))))


def story_is_finished(audio_path: Path, plan_path: Path, request: dict[str, Any]) -> bool:
    """Audio and plan both there, and the plan was made for exactly ``request``."""
    try:
        if audio_path.stat().st_size == 0:
            return False
        saved = json.loads(plan_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(saved, dict) and saved.get("request") == request


def clean_partials(outdir: Path) -> list[Path]:
    """Remove the temporary files a killed run left (``.NAME.XXXXXXXX.partial.EXT``); return what went.

    Call it under ``folder_lock``: no other run is writing into the folder then."""
    removed = []
    for path in sorted(Path(outdir).iterdir()):
        if _PARTIAL.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def folder_lock(outdir: Path) -> Iterator[None]:
    """Hold the folder for one run: a second batch into the same folder is refused, not interleaved.

    The lock is ``flock`` on the folder itself (no lock file to leave behind); the kernel drops it when the
    process dies, SIGKILL included, so a killed run never leaves the folder locked. Where ``fcntl`` is missing
    (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    descriptor = os.open(outdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"another batch is writing into {outdir}",
                hint="wait for it to finish, or give this one another --outdir",
            ) from None
        yield
    finally:
        os.close(descriptor)
