"""The prompts file of a batch: one prompt per line, or JSON Lines with prompt, duration, seed, output, tone.

``read_prompts_file`` gives one ``BatchItem`` per prompt line; a line it cannot use (not UTF-8, not JSON, not
an object, a value out of range) becomes an item with ``problem`` set, reported as failed before any model
loads, and the rest go on. ``safe_output_name`` gives each its file name in the output folder, checked against
the file system's name length (the hidden partial names ``audio_io`` writes included).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError
from ..settings import MAX_SEED
from ..story import MAX_CAPTION_CHARS, MAX_TOTAL_S, _json_kind, check_prompt, check_seed, check_text, check_total_s
from ..story import parse_json, read_user_file, shown
from ..paths import expand_user

MAX_SLUG_CHARS = 48  # file names derived from prompts keep whole words up to this length
MAX_PROMPTS_FILE_BYTES = 256 * 2**20  # a million stories of 200 characters; /dev/zero is refused, not read whole
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")  # a file so named is JSON Lines throughout
DEFAULT_NAME_MAX = 255  # bytes in one file name, where the file system does not say (os.pathconf)
PARTIAL_EXTRA_BYTES = len(".") + len(".12345678.partial")  # audio_io's ".NAME.XXXXXXXX.partial.EXT" adds these


@dataclass(frozen=True)
class BatchItem:
    """One line of a prompts file."""

    line: int  # 1-based line number in the prompts file, for messages
    prompt: str  # the story prompt
    duration_s: float | None = None  # per-prompt duration; None: the command's --duration
    seed: int | None = None  # per-prompt seed; None: the command's --seed
    output: str | None = None  # file name inside the output folder; None: derived from the prompt
    tone: str | None = None  # per-prompt tone
    problem: str | None = None  # why the line cannot be used (no "line N: " in front); reported as failed
    continue_from: str | None = None  # a recording the story continues (relative: to the prompts file's folder)
    include_input: bool = True  # with continue_from: the output starts with the recording


_ITEM_FIELDS = {"prompt", "duration", "seed", "output", "tone", "continue_from", "include_input"}


def read_prompts_file(path: Path) -> list[BatchItem]:
    """One prompt per line, or JSON Lines with ``prompt``, ``duration``, ``seed``, ``output``, ``tone``.

    Blank lines and lines starting with ``#`` are skipped; a UTF-8 BOM and CRLF line ends are fine. The file is
    JSON Lines when it is named ``*.jsonl``/``*.ndjson`` or its first prompt line starts with ``{``: then every
    line must be a JSON object; in a plain file a line starting with ``{`` is read as JSON too. A line that
    cannot be used becomes an item with ``problem`` set, so the batch reports it and goes on. Raises
    ``InputError`` only for the file as a whole: missing, a folder, unreadable, or without any prompt."""
    path = Path(path)
    raw = read_user_file(path, "prompts file", MAX_PROMPTS_FILE_BYTES, "give a text or .jsonl file")
    if len(raw) > MAX_PROMPTS_FILE_BYTES:
        raise InputError(
            f"prompts file {path} has more than {MAX_PROMPTS_FILE_BYTES // 2**20} MiB", hint="split it into several batches"
        )
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    json_lines = path.suffix.lower() in JSON_LINES_SUFFIXES
    items = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            prompt = line.decode("utf-8", "replace").strip()
            problem = f"not UTF-8 text (byte 0x{line[err.start]:02x} at column {err.start + 1}): save the file as UTF-8"
            items.append(BatchItem(line=number, prompt=prompt, problem=problem))
            continue
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        json_lines = json_lines or (not items and text.startswith("{"))
        item = _parse_prompt_line(text, number, json_lines)
        if item.continue_from is not None and item.problem is None:
            item = replace(item, continue_from=str(path.parent / expand_user(item.continue_from)))
        items.append(item)
    if not items:
        raise InputError(f"prompts file {path} has no prompts", hint="write one prompt per line")
    return items


def _parse_prompt_line(text: str, number: int, json_lines: bool = False) -> BatchItem:
    if not json_lines and not text.startswith("{"):
        return _checked(BatchItem(line=number, prompt=text))
    try:
        data = parse_json(text)
    except json.JSONDecodeError as err:
        return BatchItem(line=number, prompt=text[:200], problem=f"not valid JSON: {err.msg} at column {err.colno}")
    except ValueError as err:  # too many digits, too deep
        return BatchItem(line=number, prompt=text[:200], problem=f"not valid JSON: {err}")
    if not isinstance(data, dict):
        problem = f"must be a JSON object with a \"prompt\", got {_json_kind(data)}"
        return BatchItem(line=number, prompt=text[:200], problem=problem)
    problem = _json_item_problem(data)
    if problem:
        prompt = data.get("prompt")
        return BatchItem(line=number, prompt=_printable(prompt if isinstance(prompt, str) else ""), problem=problem)
    return _checked(
        BatchItem(
            line=number,
            prompt=data["prompt"],
            duration_s=data.get("duration"),
            seed=data.get("seed"),
            output=data.get("output"),
            tone=data.get("tone"),
            continue_from=data.get("continue_from"),
            include_input=data.get("include_input", True),
        )
    )


def _json_item_problem(data: dict) -> str | None:
    """What is wrong with the types of a JSON line's fields, or None."""
    unknown = sorted(set(data) - _ITEM_FIELDS)
    if unknown:
        return f"unknown field {shown(unknown[0])} (allowed: {', '.join(sorted(_ITEM_FIELDS))})"
    checks = {
        "prompt": lambda v: isinstance(v, str),
        "duration": lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        "seed": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "output": lambda v: v is None or isinstance(v, str),
        "tone": lambda v: v is None or isinstance(v, str),
        "continue_from": lambda v: v is None or isinstance(v, str),
        "include_input": lambda v: isinstance(v, bool),
    }
    if "prompt" not in data:
        return "prompt is missing"
    for name, ok in checks.items():
        if name in data and not ok(data[name]):
            kind = {
                "duration": f"a number of seconds > 0 and <= {MAX_TOTAL_S:g}",
                "seed": f"an integer between 0 and {MAX_SEED}",
                "include_input": "true or false",
            }.get(name, "a string")
            return f"{name} = {shown(data[name])}: must be {kind}"
    return None


def _checked(item: BatchItem) -> BatchItem:
    """``item``, or ``item`` with ``problem`` set when a value is out of range (the checks a story request makes
    after the models load, made here, before)."""
    try:
        check_prompt(item.prompt)
        if item.duration_s is not None:
            check_total_s(item.duration_s)
        if item.seed is not None:
            check_seed(item.seed)
        if item.tone is not None:
            check_text(item.tone, "tone")
            if len(item.tone) > MAX_CAPTION_CHARS:
                raise InputError(f"tone has {len(item.tone)} characters: must have at most {MAX_CAPTION_CHARS}")
        if item.output is not None:
            check_text(item.output, "output")
        if item.continue_from is not None:
            check_text(item.continue_from, "continue_from")
    except InputError as err:
        return BatchItem(line=item.line, prompt=_printable(item.prompt), problem=str(err))
    duration = None if item.duration_s is None else float(item.duration_s)
    return replace(item, duration_s=duration)


def _printable(prompt: str) -> str:
    """A bad line's prompt as its failed record keeps it: at most 200 characters, a lone surrogate (JSON's
    ``"\\ud800"``) written out, so the manifest line encodes as UTF-8."""
    return prompt[:200].encode("utf-8", "backslashreplace").decode("utf-8")


def name_max(folder: Path) -> int:
    """Bytes one file name may have in ``folder`` (or the nearest folder above it that exists)."""
    for candidate in (Path(folder), *Path(folder).parents):
        try:
            if candidate.is_dir():
                return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError):
            return DEFAULT_NAME_MAX
    return DEFAULT_NAME_MAX


def partial_name_bytes(name: str) -> int:
    """Bytes of the hidden ``.NAME.XXXXXXXX.partial.EXT`` file ``audio_io`` writes before ``name``."""
    return len(os.fsencode(f".{name}.12345678.partial{Path(name).suffix}"))


def check_name_length(name: str, limit: int) -> None:
    """The audio file ``name``, its plan ``STEM.plan.json``, its latents ``STEM.latents.safetensors`` and the hidden
    partial files written before them all fit in ``limit`` bytes (a longer name fails only when the story is
    written, its work lost)."""
    stem_bytes = len(os.fsencode(Path(name).stem))
    suffix_bytes = len(os.fsencode(Path(name).suffix))
    beside = (Path(name).suffix, ".plan.json", ".latents.safetensors")
    longest = max(partial_name_bytes(Path(name).stem + suffix) for suffix in beside)
    if longest > limit:
        overhead = max(partial_name_bytes("x" + suffix) for suffix in beside) - 1
        raise InputError(
            f"output = {_quoted(name)}: {stem_bytes + suffix_bytes} bytes is too long: this file system takes "
            f"names of at most {limit} bytes, so an output (whose plan, latents and temporary files add to its "
            f"name) may have {limit - overhead + suffix_bytes} bytes here"
        )


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def safe_output_name(item: BatchItem, index: int, extension: str, folder: Path | None = None) -> str:
    """A file name inside the output folder: the item's ``output`` checked, or a slug of its prompt. With
    ``folder``, the name (and its plan's, and their temporary files') must fit the folder's file system."""
    if item.output is not None:
        name = item.output.strip()
        if (
            not name or name != Path(name).name or name in {".", ".."} or name.startswith(".")
            or "/" in name or "\\" in name or "\0" in name or not name.isprintable()
        ):  # fmt: skip
            raise InputError(f"output = {_quoted(item.output)}: must be a plain file name, no folders")
        name = name if Path(name).suffix else name + extension
    else:
        slug = ""
        for word in re.findall(r"[a-z0-9]+", item.prompt.lower()):
            if len(slug) + len(word) + 1 > MAX_SLUG_CHARS:
                break
            slug = f"{slug}-{word}" if slug else word
        name = f"{index + 1:03d}-{slug or 'story'}{extension}"
    if folder is not None:
        check_name_length(name, name_max(folder))
    return name
