"""The prompts file of a batch: one prompt per line, or JSON Lines with prompt, duration, seed, output, tone.

``read_prompts_file`` gives one ``BatchItem`` per prompt line (a line it cannot read becomes an item with
``problem`` set, reported as failed); ``safe_output_name`` gives each its file name in the output folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

MAX_SLUG_CHARS = 48  # file names derived from prompts keep whole words up to this length


@dataclass(frozen=True)
class BatchItem:
    """One line of a prompts file."""

    line: int  # 1-based line number in the prompts file, for messages
    prompt: str  # the story prompt
    duration_s: float | None = None  # per-prompt duration; None: the command's --duration
    seed: int | None = None  # per-prompt seed; None: the command's --seed
    output: str | None = None  # file name inside the output folder; None: derived from the prompt
    tone: str | None = None  # per-prompt tone
    problem: str | None = None  # why the line could not be read; such an item is reported as failed


_ITEM_FIELDS = {"prompt", "duration", "seed", "output", "tone"}


def read_prompts_file(path: Path) -> list[BatchItem]:
    """One prompt per line, or JSON Lines with ``prompt``, ``duration``, ``seed``, ``output``, ``tone``.

    Blank lines and lines starting with ``#`` are skipped. A line that cannot be read becomes an item with
    ``problem`` set, so the batch reports it and goes on.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read prompts file {path}: {err}") from None
    items = [
        _parse_prompt_line(text.strip(), number)
        for number, text in enumerate(lines, start=1)
        if text.strip() and not text.lstrip().startswith("#")
    ]
    if not items:
        raise InputError(f"prompts file {path} has no prompts", hint="write one prompt per line")
    return items


def _parse_prompt_line(text: str, number: int) -> BatchItem:
    if not text.startswith("{"):
        return BatchItem(line=number, prompt=text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return BatchItem(line=number, prompt=text, problem=f"line {number}: not valid JSON: {err.msg}")
    problem = _json_item_problem(data, number)
    if problem:
        return BatchItem(line=number, prompt=str(data.get("prompt", "")), problem=problem)
    return BatchItem(
        line=number,
        prompt=data["prompt"],
        duration_s=data.get("duration"),
        seed=data.get("seed"),
        output=data.get("output"),
        tone=data.get("tone"),
    )


def _json_item_problem(data: object, number: int) -> str | None:
    if not isinstance(data, dict):
        return f"line {number}: must be a JSON object"
    unknown = sorted(set(data) - _ITEM_FIELDS)
    if unknown:
        return f"line {number}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(_ITEM_FIELDS))})"
    checks = {
        "prompt": lambda v: isinstance(v, str),
        "duration": lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        "seed": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "output": lambda v: v is None or isinstance(v, str),
        "tone": lambda v: v is None or isinstance(v, str),
    }
    if "prompt" not in data:
        return f"line {number}: prompt is missing"
    for name, ok in checks.items():
        if name in data and not ok(data[name]):
            kind = {"prompt": "a string", "duration": "a number", "seed": "an integer"}.get(name, "a string")
            return f"line {number}: {name} = {json.dumps(data[name])}: must be {kind}"
    return None


def safe_output_name(item: BatchItem, index: int, extension: str) -> str:
    """A file name inside the output folder: the item's ``output`` checked, or a slug of its prompt."""
    if item.output is not None:
        name = item.output.strip()
        if not name or name != Path(name).name or name in {".", ".."} or name.startswith("."):
            raise InputError(f"line {item.line}: output = {item.output!r}: must be a plain file name, no folders")
        return name if Path(name).suffix else name + extension
    slug = ""
    for word in re.findall(r"[a-z0-9]+", item.prompt.lower()):
        if len(slug) + len(word) + 1 > MAX_SLUG_CHARS:
            break
        slug = f"{slug}-{word}" if slug else word
    return f"{index + 1:03d}-{slug or 'story'}{extension}"



# --- resumable runs (to merge into batch/local.py below read_prompts_file / safe_output_name) -------------
