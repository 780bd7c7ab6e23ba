"""A video in and out, through the ffmpeg and ffprobe programs: its streams and length, its shots, frames of
them, and the finished story muxed in as its audio track.

    probe(path) -> VideoInfo            ffprobe: streams, length; refuses a file with no video stream
    detect_shots(info) -> [Cue]         ffmpeg's scene score (``select='gt(scene,T)'``) at the cuts
    frames(info, times) -> [JPEG]       one decoded frame per time, scaled down
    mux(info, wave, rate, out)          the video stream copied (no re-encode), the story as its audio

Shot detection: ffmpeg's scene score was picked over PySceneDetect (README "Sound for a video"): it needs no
Python package (ffmpeg is already needed to mux) and finds hard cuts on the frame.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import audio_io
from ..errors import AudioIOError, InputError
from .timelines import Cue, clock
from ..paths import expand_user

FFMPEG_HINT = "install ffmpeg (it brings ffprobe): `apt-get install ffmpeg`, `brew install ffmpeg` or ffmpeg.org"
VIDEO_EXTENSIONS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}  # outputs that take AAC audio
SCENE_THRESHOLD = 0.3  # ffmpeg scene score (0..1) above which a frame starts a new shot; hard cuts score > 0.5
DETECT_WIDTH = 160  # frames are scaled to this width before scoring: the cuts stay, the decoding is cheaper
FRAME_WIDTH = 448  # width of the frames a describer sees (a multiple of 28, Qwen2-VL's patch grid)
AUDIO_BITRATE = "192k"  # AAC bitrate of the muxed story
_PROBE_TIMEOUT_S = 60  # ffprobe reads only headers: a minute is a hung file
_FFMPEG_TIMEOUT_S = 3600  # decoding a 10-minute video on a slow CPU


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a video file."""

    path: Path  # the file, resolved
    duration_s: float  # length of its (first) video stream, seconds; the story is made this long
    start_s: float  # presentation time of its first video frame (scene times are relative to it)
    fps: float  # frames per second (average), 0 when unknown
    width: int  # pixels
    height: int  # pixels
    codec: str  # the video codec ("h264")
    audio_streams: int  # how many audio streams it has (--mix-original needs one)


def require_ffmpeg() -> None:
    """ffmpeg and ffprobe on PATH, or one clear error with the install hint."""
    missing = [name for name in ("ffmpeg", "ffprobe") if shutil.which(name) is None]
    if missing:
        raise AudioIOError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH: dub reads "
                           "and writes videos with ffmpeg", hint=FFMPEG_HINT)  # fmt: skip


def probe(path: str | Path) -> VideoInfo:
    """Streams and length of the video at ``path``; a missing, empty or unreadable file, one without a video
    stream or without a length is an ``InputError``."""
    require_ffmpeg()
    path = expand_user(path)
    if not path.exists():
        raise InputError(f"video file not found: {path}")
    if path.is_dir():
        raise InputError(f"video path {path} is a folder: give a video file")
    if path.stat().st_size == 0:
        raise InputError(f"video file {path} is empty (0 bytes)")
    command = ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)]
    result = _run(command, _PROBE_TIMEOUT_S, f"reading {path}")
    if result.returncode != 0:
        raise InputError(f"cannot read video {path}: {_first_line(result.stderr) or 'ffprobe failed'}",
                         hint="is it a video file ffmpeg can open?")  # fmt: skip
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise InputError(f"cannot read video {path}: ffprobe wrote no stream list") from None
    streams = data.get("streams", [])
    videos = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    if not videos:
        raise InputError(f"{path} has no video stream", hint="dub needs a video; render a plan or a timeline to "
                         "audio with `audiostory render`")  # fmt: skip
    video = videos[0]
    duration_s = _number(video.get("duration")) or _number(data.get("format", {}).get("duration"))
    if not duration_s or duration_s <= 0:
        raise InputError(f"video {path} has no length (a zero-length or damaged file)")
    return VideoInfo(
        path=path.resolve(),
        duration_s=round(duration_s, 6),
        start_s=_number(video.get("start_time")) or 0.0,
        fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        codec=str(video.get("codec_name", "")),
        audio_streams=sum(s.get("codec_type") == "audio" for s in streams),
    )


# --- shots -----------------------------------------------------------------------------------------------


def scene_cuts(info: VideoInfo, threshold: float = SCENE_THRESHOLD) -> list[float]:
    """Times (seconds from the start) of the frames whose ffmpeg scene score exceeds ``threshold``."""
    if not 0 < threshold < 1:
        raise InputError(f"scene threshold = {threshold:g}: must be between 0 and 1")
    graph = f"scale={DETECT_WIDTH}:-2,select='gt(scene\\,{threshold:g})',metadata=print:file=-"
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-i", str(info.path), "-map", "0:v:0", "-an",
               "-vf", graph, "-f", "null", "-"]  # fmt: skip
    result = _run(command, _FFMPEG_TIMEOUT_S, f"finding the shots of {info.path}")
    if result.returncode != 0:
        raise InputError(f"cannot decode video {info.path}: {_first_line(result.stderr) or 'ffmpeg failed'}")
    cuts = []
    for line in result.stdout.splitlines():
        if "pts_time:" in line:
            value = _number(line.split("pts_time:")[1].split()[0])
            if value is not None:
                cuts.append(round(value, 6))  # from the file's start: ffmpeg shifts the first frame to 0 itself
    return sorted(cut for cut in cuts if 0 < cut < info.duration_s)


def shots_from_cuts(cuts: list[float], duration_s: float, min_shot_s: float) -> list[tuple[float, float]]:
    """(start_s, end_s) of each shot between the cuts; a cut that would leave a shot shorter than
    ``min_shot_s`` is dropped (the short shot joins the one before it; a short last one joins the one before)."""
    if min_shot_s < 0:
        raise InputError(f"--min-shot = {min_shot_s:g}: must be >= 0")
    kept: list[float] = []
    for cut in sorted(cuts):
        if cut - (kept[-1] if kept else 0.0) >= min_shot_s and 0 < cut < duration_s:
            kept.append(cut)
    while kept and duration_s - kept[-1] < min_shot_s:
        kept.pop()
    bounds = [0.0, *kept, duration_s]
    return list(zip(bounds, bounds[1:]))


def detect_shots(info: VideoInfo, *, min_shot_s: float = 1.0, threshold: float = SCENE_THRESHOLD) -> list[Cue]:
    """The video's shots as cues (no text yet), at least ``min_shot_s`` long where the video allows."""
    spans = shots_from_cuts(scene_cuts(info, threshold), info.duration_s, min_shot_s)
    return [Cue(index=i, start_s=a, end_s=b, text="", line=0) for i, (a, b) in enumerate(spans)]


def frame_times(cue: Cue, count: int) -> list[float]:
    """``count`` times spread evenly inside a shot (at the middles of ``count`` equal parts)."""
    return [round(cue.start_s + (k + 0.5) * cue.duration_s / count, 3) for k in range(count)]


def frames(info: VideoInfo, times: list[float], *, width: int = FRAME_WIDTH) -> list[bytes]:
    """One JPEG per time (seconds from the start), ``width`` pixels wide: one ffmpeg run seeking to each time."""
    if not times:
        return []
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error"]
    for time_s in times:
        command += ["-ss", _seek(info, time_s), "-i", str(info.path)]
    with tempfile.TemporaryDirectory(prefix="audiostory-frames-") as folder:
        names = [Path(folder) / f"{k}.jpg" for k in range(len(times))]
        for k, name in enumerate(names):
            command += ["-map", f"{k}:v:0", "-frames:v", "1", "-vf", f"scale={width}:-2", "-q:v", "3", str(name)]
        result = _run(command, _PROBE_TIMEOUT_S * len(times), f"reading frames of {info.path}")
        for time_s, name in zip(times, names):  # a fast seek can miss (near an MPEG-TS's end): decode up to it
            if result.returncode == 0 and (not name.exists() or name.stat().st_size == 0):
                _run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(info.path), "-ss",
                      _seek(info, time_s), "-map", "0:v:0", "-frames:v", "1", "-vf", f"scale={width}:-2", "-q:v", "3",
                      str(name)], _FFMPEG_TIMEOUT_S, f"reading frames of {info.path}")  # fmt: skip
        missing = [t for t, name in zip(times, names) if not name.exists() or name.stat().st_size == 0]
        if result.returncode != 0 or missing:
            where = clock(missing[0]) if missing else clock(times[0])
            raise InputError(f"cannot read the frame at {where} of {info.path}: "
                             f"{_first_line(result.stderr) or 'no frame decoded'}")  # fmt: skip
        return [name.read_bytes() for name in names]


def _seek(info: VideoInfo, time_s: float) -> str:
    """``-ss`` for the frame shown at ``time_s``: an exact seek decodes the first frame at or after the time it
    is given, so the time is floored to the frame grid (the frame on screen then) and to the last frame's (a
    time in the last frame's span, or a 1-frame video, would otherwise find no frame)."""
    if info.fps > 0:
        frame_s = 1.0 / info.fps
        last_s = max(0.0, info.duration_s - frame_s)
        time_s = min(math.floor(time_s / frame_s + 1e-6) * frame_s, last_s)
    # an input -ss is from the file's start: ffmpeg adds its start time itself (an MPEG-TS starts at 1.4 s)
    return f"{math.floor(max(0.0, time_s) * 1000) / 1000:.3f}"  # floored: never past the frame


# --- the output ------------------------------------------------------------------------------------------


def check_video_output(path: str | Path) -> Path:
    """The resolved output path of a video: an extension that takes AAC audio, and what ``audio_io.check_target``
    checks of any file written (no NUL byte, a name that fits with its partial name, a writable folder that
    exists, not a folder)."""
    text = os.fspath(path)
    if "\x00" not in text and Path(text).suffix.lower() not in VIDEO_EXTENSIONS and not _is_folder(text):
        raise InputError(f"output {Path(text).name[:80]}: a dubbed video is written as {', '.join(VIDEO_EXTENSIONS)}",
                         hint="or write the audio alone with --audio-only and an audio extension")  # fmt: skip
    return audio_io.check_target(path)  # a folder is said there


def check_copyable(info: VideoInfo, output: Path) -> None:
    """The video stream can be copied into ``output``'s container (a GIF's or a raw video's codec goes into no
    .mp4), checked on its first frame before any work: else an ``InputError`` with ffmpeg's reason."""
    container = VIDEO_EXTENSIONS[Path(output).suffix.lower()]
    with tempfile.TemporaryDirectory(prefix="audiostory-copy-") as folder:
        command = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(info.path), "-map", "0:v:0",
                   "-c:v", "copy", "-frames:v", "1", "-f", container, str(Path(folder) / f"check{Path(output).suffix}")]
        result = _run(command, _PROBE_TIMEOUT_S, f"checking that {info.path} copies into {Path(output).name}")
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = re.sub(r"^\[[^]]*\]\s*", "", lines[0])[:200] if lines else "ffmpeg failed"
        raise InputError(f"the video stream of {info.path.name} ({info.codec}) cannot be copied into "
                         f"{Path(output).name}: {reason}", hint="write another container (.mkv takes most codecs), "
                         "or --audio-only")  # fmt: skip


def _is_folder(text: str) -> bool:
    try:
        return expand_user(text).is_dir()
    except OSError:  # a name too long for the file system: check_target says
        return False


def mux(
    info: VideoInfo,
    wave: np.ndarray,
    sample_rate: int,
    output: Path,
    *,
    mix_original_db: float | None = None,
    before_rename: Callable[[], object] = lambda: None,
) -> Path:
    """Write ``output``: the video's video streams copied bit for bit, ``wave`` [channels, samples] as its AAC
    audio track (with the original audio under it at ``mix_original_db`` dB when given). Atomic: ffmpeg writes
    a hidden partial file, ``before_rename()`` runs (the plan is written beside it), then it is renamed."""
    output = check_video_output(output)
    if mix_original_db is not None and info.audio_streams == 0:
        raise InputError(f"--mix-original: {info.path.name} has no audio to keep")
    partial = output.with_name(f".{output.name}.{secrets.token_hex(4)}.partial{output.suffix}")
    with tempfile.TemporaryDirectory(prefix=".audiostory-", dir=output.parent) as folder:
        import soundfile

        story_wav = Path(folder) / "story.wav"
        soundfile.write(story_wav, np.clip(wave, -1.0, 1.0).T, sample_rate, subtype="FLOAT")
        command = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(info.path),
                   "-i", str(story_wav), "-map", "0:v", "-c:v", "copy"]  # fmt: skip
        if mix_original_db is None:
            command += ["-map", "1:a"]
        else:  # the story at full level, the original under it; amix without its 1/n scaling
            graph = (f"[0:a:0]volume={mix_original_db:g}dB[original];"
                     "[1:a][original]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[mixed]")
            command += ["-filter_complex", graph, "-map", "[mixed]"]
        command += ["-c:a", "aac", "-b:a", AUDIO_BITRATE, "-map_metadata", "0", "-f",
                    VIDEO_EXTENSIONS[output.suffix.lower()], str(partial)]  # fmt: skip
        try:
            result = _run(command, _FFMPEG_TIMEOUT_S, f"writing {output}")
            if result.returncode != 0:
                raise AudioIOError(f"ffmpeg could not write {output}: {_first_line(result.stderr) or 'failed'}")
            with open(partial, "rb") as file:
                os.fsync(file.fileno())
            before_rename()
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    return output


# --- helpers ---------------------------------------------------------------------------------------------


def _run(command: list[str], timeout_s: float, what: str, *, binary: bool = False) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=not binary, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise AudioIOError(f"{command[0]} is not on PATH", hint=FFMPEG_HINT) from None
    except subprocess.TimeoutExpired:
        raise InputError(f"{command[0]} took more than {timeout_s:g} s {what}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _rate(value: object) -> float:
    """Frames per second of an ffprobe rate ("30000/1001"), 0 when unknown."""
    try:
        numerator, denominator = str(value).split("/")
        return float(numerator) / float(denominator) if float(denominator) else 0.0
    except (ValueError, TypeError):
        return 0.0
