"""Timeline files -> ``Timeline``: timed descriptions of what a video shows, each cue a slot with fixed times.

    .srt          SubRip, parsed by ``srt`` (strict: a block that does not parse is an error, not skipped)
    .vtt          WebVTT, parsed by ``webvtt-py`` in strict mode
    .json         a shot list: ``[{"start": 0, "end": 2.5, "description": "..."}, ...]`` (or ``{"shots": [...]}``)
    .csv          a shot list with a header row: ``start,end,description``

Times in shot lists are seconds (``2.5``) or clock times (``"00:01:02.500"``, ``"1:02.5"``). Every problem is
one ``InputError`` naming the file and the line (the entry for JSON), e.g.
``cues.srt line 9: cue 3 ends at 00:00:04.000, before it starts (00:00:05.000)``. Cues may not overlap (a slot
is one sound moment on the foreground; shift one cue so it starts where the other ends).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..story import MAX_PLAN_BYTES, MIN_EVENT_S, parse_json, read_user_file, shown

EXTENSIONS = (".srt", ".vtt", ".json", ".csv")  # the timeline formats, by file extension
VIDEO_EXTRA = 'pip install "audiostory-cli[video]"'  # srt, webvtt-py and pillow
MAX_CUES = 64  # most cues one timeline may hold (story.MAX_EVENTS: each cue becomes one event)
MAX_DESCRIPTION_CHARS = 500  # a cue describes one shot in a sentence or two
MAX_TIMELINE_S = 600.0  # story.MAX_TOTAL_S: the longest story a plan may describe
MAX_TIMELINE_BYTES = MAX_PLAN_BYTES  # story.MAX_PLAN_BYTES: a bigger file (or /dev/zero) is refused, not read whole
_OVERLAP_TOLERANCE_S = 0.0005  # cue times are whole milliseconds: less than half of one is rounding
_MARKUP = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # <i>, <b>, <c.yellow>, <00:01.000>, {\an8}: formatting, not words
_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)$")  # [h:]mm:ss[.fff]
_KEYS = {"start": ("start", "start_s"), "end": ("end", "end_s"), "description": ("description", "text", "caption")}


@dataclass(frozen=True)
class Cue:
    """One slot of the timeline: what is seen from ``start_s`` to ``end_s``."""

    index: int  # position in the timeline, 0-based, in time order
    start_s: float  # when the slot starts, seconds from the start of the video
    end_s: float  # when it ends, seconds (> start_s)
    text: str  # what is seen (or heard, for `render`), one line, markup removed
    line: int  # where the cue is written in its file, 1-based (0 when it came from no file: detected shots)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Timeline:
    """Cues in time order, none overlapping."""

    cues: tuple[Cue, ...]  # in time order
    source: str  # the file name errors name ("cues.srt"), or what the cues came from ("shots of clip.mp4")

    @property
    def end_s(self) -> float:
        """Where the last cue ends."""
        return max(cue.end_s for cue in self.cues)

    def check_within(self, total_s: float, what: str) -> None:
        """Every cue ends by ``total_s`` (the video's length); ``what`` names it in the error."""
        for cue in self.cues:
            if cue.end_s > total_s + _OVERLAP_TOLERANCE_S:
                raise InputError(
                    f"{_where(self.source, cue.line)}: cue {cue.index + 1} ends at {clock(cue.end_s)}, after the end "
                    f"of {what} ({clock(total_s)})",
                    hint="fix its times, or check that the timeline belongs to this video",
                )


def is_timeline_file(path: str | Path) -> bool:
    """Whether ``path`` names a timeline by its extension (.json counts when it holds a shot list, not a plan)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".json":
        return suffix in EXTENSIONS
    try:
        raw = read_user_file(path, "plan or shot list", MAX_TIMELINE_BYTES, "give a file")
        data = parse_json(raw.decode("utf-8-sig")) if len(raw) <= MAX_TIMELINE_BYTES else None
    except (InputError, UnicodeDecodeError, ValueError):  # not JSON at all: the plan reader says what is wrong
        return False
    if isinstance(data, dict):  # a plan has events; a shot list holds its shots under one of these keys
        return "events" not in data and bool({"shots", "cues"} & data.keys())
    return isinstance(data, list)


def read_timeline(path: str | Path) -> Timeline:
    """Read and check a timeline file; the format follows its extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise InputError(f"timeline file {path} has an unknown extension: use one of {', '.join(EXTENSIONS)}")
    raw = read_user_file(path, "timeline file", MAX_TIMELINE_BYTES, "give a .srt, .vtt, .json or .csv file")
    if len(raw) > MAX_TIMELINE_BYTES:
        raise InputError(f"timeline file {path} has more than {MAX_TIMELINE_BYTES // 2**20} MiB: not a timeline "
                         "(a timeline of 64 cues is a few kB)")  # fmt: skip
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"{path.name} line {line}: not UTF-8 text", hint="save the file as UTF-8") from None
    return parse_timeline(text, suffix.lstrip("."), source=path.name)


def parse_timeline(text: str, kind: str, *, source: str = "<timeline>") -> Timeline:
    """Parse ``text`` as ``kind`` ("srt", "vtt", "json" or "csv") and check the cues."""
    readers = {"srt": _read_srt, "vtt": _read_vtt, "json": _read_json, "csv": _read_csv}
    if kind not in readers:
        raise ValueError(f"unknown timeline kind {kind!r}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    raw_cues = readers[kind](text, source)  # (start_s, end_s, text, line, number as the user counts it)
    return _checked(raw_cues, source)


# --- the formats ---------------------------------------------------------------------------------------


def _read_srt(text: str, source: str) -> list[tuple[float, float, str, int, int]]:
    srt = _extra("srt", source)

    try:
        subtitles = list(srt.parse(text))
    except srt.SRTParseError as err:
        line = text.count("\n", 0, err.expected_start) + 1
        snippet = err.unmatched_content.strip().splitlines()[0][:60] if err.unmatched_content.strip() else ""
        raise InputError(f"{_where(source, line)}: not an SRT cue: {snippet!r}",
                         hint="each cue is a number, a line 'HH:MM:SS,mmm --> HH:MM:SS,mmm' and its text") from None
    except (ValueError, OverflowError) as err:
        raise InputError(f"{source}: not a valid SRT file: {err}") from None
    lines = _timing_lines(text)
    return [
        (sub.start.total_seconds(), sub.end.total_seconds(), sub.content, lines[i] if i < len(lines) else 0, i + 1)
        for i, sub in enumerate(subtitles)
    ]


def _read_vtt(text: str, source: str) -> list[tuple[float, float, str, int, int]]:
    webvtt = _extra("webvtt", source)
    from webvtt.errors import MalformedCaptionError, MalformedFileError

    try:
        captions = list(webvtt.from_buffer(io.StringIO(text), strict=True))
    except MalformedCaptionError as err:
        line = _block_line(text, str(err))
        raise InputError(f"{_where(source, line)}: not a WebVTT cue ({err})",
                         hint="each cue is a line 'HH:MM:SS.mmm --> HH:MM:SS.mmm' and its text") from None
    except MalformedFileError as err:
        raise InputError(f"{source} line 1: not a WebVTT file ({err})", hint="it must start with WEBVTT") from None
    except (ValueError, OverflowError, IndexError) as err:
        raise InputError(f"{source}: not a valid WebVTT file: {err}") from None
    lines = _timing_lines(text)
    if len(lines) != len(captions):  # webvtt-py left a timing line out: name the first it did not read
        read = {round(_timestamp_s(c.start_time), 3) for c in captions}
        for line in lines:
            start = text.splitlines()[line - 1].split("-->")[0].strip()
            seconds = _clock_s(start.replace(",", "."))
            if seconds is None or round(seconds, 3) not in read:
                raise InputError(f"{_where(source, line)}: not a WebVTT cue timing: {start[:40]!r}")
    return [
        (_timestamp_s(c.start_time), _timestamp_s(c.end_time), c.text, lines[i] if i < len(lines) else 0, i + 1)
        for i, c in enumerate(captions)
    ]


def _extra(module: str, source: str):
    """The parser module, or one clear error naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"reading {source} needs the {module} package, which is not installed",
                         hint=f'install it with `{VIDEO_EXTRA}`') from None


def _read_json(text: str, source: str) -> list[tuple[float, float, str, int, int]]:
    try:
        data = parse_json(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{_where(source, err.lineno)}: not valid JSON: {err.msg} (column {err.colno})") from None
    except ValueError as err:  # a number of too many digits, nesting too deep
        raise InputError(f"{source}: not a shot list Python can read: {err}") from None
    shots = data
    if isinstance(data, dict):
        keys = [key for key in ("shots", "cues") if key in data]
        if len(keys) != 1 or set(data) - {keys[0]}:
            raise InputError(f"{source}: a JSON shot list is a list of shots, or an object with one key "
                             f"'shots' (or 'cues') holding that list; found keys {sorted(data)[:5]}")
        shots = data[keys[0]]
    if not isinstance(shots, list):
        raise InputError(f"{source}: a JSON shot list must be a list of {{start, end, description}} objects")
    lines = _object_lines(text)
    cues = []
    for i, shot in enumerate(shots):
        line = lines[i] if i < len(lines) else 0
        where = f"{_where(source, line)} (shot {i + 1})"
        if not isinstance(shot, dict):
            raise InputError(f"{where}: must be an object with start, end and description")
        cues.append((*_shot_fields(shot, where), line, i + 1))
    return cues


def _read_csv(text: str, source: str) -> list[tuple[float, float, str, int, int]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        names = [name.strip().lower() for name in header]
        columns = {field: next((names.index(a) for a in aliases if a in names), None)
                   for field, aliases in _KEYS.items()}  # fmt: skip
        missing = [field for field, column in columns.items() if column is None]
        if missing:
            raise InputError(f"{source} line 1: the header row must name the columns start, end and description; "
                             f"missing {', '.join(missing)}", hint="e.g. 'start,end,description'")
        cues = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            where = f"{_where(source, line)}"
            if len(row) != len(header):
                raise InputError(f"{where}: {len(row)} columns, the header has {len(header)}",
                                 hint="quote a description that holds a comma")
            shot = {field: row[column] for field, column in columns.items()}
            cues.append((*_shot_fields(shot, where), line, len(cues) + 1))
    except csv.Error as err:
        raise InputError(f"{_where(source, reader.line_num)}: not valid CSV: {err}") from None
    return cues


def _shot_fields(shot: dict[str, Any], where: str) -> tuple[float, float, str]:
    """(start_s, end_s, description) of one shot-list entry; its keys may use the aliases in ``_KEYS``."""
    known = {alias for aliases in _KEYS.values() for alias in aliases}
    unknown = sorted(str(key) for key in shot if key not in known)
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r} (allowed: start, end, description)")
    values = {}
    for field, aliases in _KEYS.items():
        given = [alias for alias in aliases if alias in shot]
        if not given:
            raise InputError(f"{where}: {field} is missing")
        values[field] = shot[given[0]]
    description = values["description"]
    if not isinstance(description, str):
        raise InputError(f"{where}: description must be text, got {shown(description, 40)}")
    return _seconds(values["start"], "start", where), _seconds(values["end"], "end", where), description


def _seconds(value: Any, name: str, where: str) -> float:
    """Seconds from a number or a clock string ("1:02.5")."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, (int, float)):
        try:
            seconds: float | None = float(value)
        except OverflowError:  # an integer of hundreds of digits
            seconds = None
    elif isinstance(value, str):
        seconds = _clock_s(value.strip())
        if seconds is None:
            try:
                seconds = float(value.strip())
            except (ValueError, OverflowError):
                seconds = None
    else:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise InputError(f"{where}: {name} = {shown(value, 40)}: must be seconds (2.5) or a clock time "
                         "(00:00:02.500)")
    return seconds


def _clock_s(text: str) -> float | None:
    """Seconds of ``[h:]mm:ss[.fff]``, or None."""
    match = _CLOCK.match(text)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds.replace(",", "."))


def _timestamp_s(stamp: Any) -> float:
    """Seconds of a webvtt-py ``Timestamp``."""
    return stamp.hours * 3600 + stamp.minutes * 60 + stamp.seconds + stamp.milliseconds / 1000


# --- line numbers ----------------------------------------------------------------------------------------


def _timing_lines(text: str) -> list[int]:
    """1-based numbers of the lines holding a cue timing ``-->``, in file order (SRT's number line is one up)."""
    return [n for n, line in enumerate(text.split("\n"), start=1) if "-->" in line]


def _block_line(text: str, message: str) -> int:
    """The line where the cue block quoted in webvtt-py's error message starts, or the timing line holding the
    timestamp it quotes ("Invalid timestamp '99:99.000'"); 1 when not found."""
    quoted = re.search(r"\[['\"](.*?)['\"][,\]]", message)
    if quoted:
        first = quoted.group(1)
        for n, line in enumerate(text.split("\n"), start=1):
            if line.strip() == first.strip():
                return n
    stamp = re.search(r"timestamp ['\"](.+?)['\"]", message)
    if stamp:
        lines = text.split("\n")
        for n in _timing_lines(text):
            if stamp.group(1) in lines[n - 1]:
                return n
    return 1


def _object_lines(text: str) -> list[int]:
    """Lines where each top-level shot object of a JSON shot list starts: the '{' at list depth."""
    lines, depth, line, in_string, escaped = [], 0, 1, False, False
    list_depth = None
    for char in text:
        if char == "\n":
            line += 1
        if in_string:
            escaped = not escaped and char == "\\"
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string, escaped = True, False
        elif char in "[{":
            if char == "[" and list_depth is None:
                list_depth = depth + 1
            elif char == "{" and list_depth is not None and depth == list_depth:
                lines.append(line)
            depth += 1
        elif char in "]}":
            depth -= 1
    return lines


def _where(source: str, line: int) -> str:
    return f"{source} line {line}" if line else source


# --- checks ----------------------------------------------------------------------------------------------


def _checked(raw_cues: list[tuple[float, float, str, int, int]], source: str) -> Timeline:
    """Cues with clean text and sane times, sorted by start; none overlap."""
    if not raw_cues:
        raise InputError(f"{source} holds no cues", hint="a timeline needs at least one timed description")
    if len(raw_cues) > MAX_CUES:
        raise InputError(f"{source} holds {len(raw_cues)} cues: at most {MAX_CUES}",
                         hint="merge short cues, or split the video")
    checked = []
    for start_s, end_s, text, line, number in raw_cues:
        where = f"{_where(source, line)}: cue {number}"
        if not 0 <= start_s <= MAX_TIMELINE_S:
            raise InputError(f"{where} starts at {start_s:g} s: must be between 0 and {MAX_TIMELINE_S:g} s")
        if not end_s > start_s:
            raise InputError(f"{where} ends at {clock(end_s)}, not after it starts ({clock(start_s)})")
        if end_s - start_s < MIN_EVENT_S - 1e-9:  # float noise: 0.009 - 0.008 is 0.00099999...
            raise InputError(f"{where} lasts {end_s - start_s:.2g} s: a cue lasts at least {MIN_EVENT_S * 1000:g} ms")
        if end_s > MAX_TIMELINE_S:
            raise InputError(f"{where} ends at {clock(end_s)}: a story lasts at most {MAX_TIMELINE_S:g} s")
        words = " ".join(_MARKUP.sub(" ", text).split())
        if not words:
            raise InputError(f"{where} has no text", hint="describe what is seen in that cue")
        if len(words) > MAX_DESCRIPTION_CHARS:
            raise InputError(f"{where} has {len(words)} characters of text: at most {MAX_DESCRIPTION_CHARS}")
        checked.append((round(start_s, 6), round(end_s, 6), words, line, number))
    checked.sort(key=lambda cue: (cue[0], cue[1]))
    for before, after in zip(checked, checked[1:]):
        if after[0] < before[1] - _OVERLAP_TOLERANCE_S:
            raise InputError(
                f"{_where(source, after[3])}: cue {after[4]} starts at {clock(after[0])}, before cue {before[4]} "
                f"({_where(source, before[3]).removeprefix(source + ' ')}) ends at {clock(before[1])}: cues may not "
                "overlap", hint="shift one so it starts where the other ends",
            )  # fmt: skip
    cues = []
    for i, (start_s, end_s, words, line, _) in enumerate(checked):
        if cues and abs(start_s - cues[-1].end_s) <= _OVERLAP_TOLERANCE_S:
            start_s = cues[-1].end_s  # touching cues share the boundary exactly
        cues.append(Cue(index=i, start_s=start_s, end_s=end_s, text=words, line=line))
    return Timeline(cues=tuple(cues), source=source)


def clock(seconds: float) -> str:
    """``HH:MM:SS.mmm``, as the error messages and the shot table write times (a time no clock holds, such as
    ``1e308`` from a hostile file, as plain seconds)."""
    if not math.isfinite(seconds) or abs(seconds) > 1e12:
        return f"{seconds:g} s"
    millis = int(round(abs(seconds) * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    sign = "-" if seconds < 0 and millis else ""
    return f"{sign}{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"
