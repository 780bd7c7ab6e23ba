"""Audio files in and out: atomic writes (never a half-written file), reads, resampling.

WAV, FLAC, OGG (Vorbis) and MP3 are written by soundfile (libsndfile); M4A and AAC by pydub through
ffmpeg. Every write goes to a hidden ``.NAME.XXXX.partial.EXT`` file in the target folder, is fsynced,
then renamed onto the target with ``os.replace``; on any failure, Ctrl-C included, the partial file
is removed and an existing target is left as it was.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile

from .errors import AudioIOError, InputError
from .paths import expand_user

# extension -> (libsndfile format, subtype); integer subtypes are clipped to [-1, 1] like every format
_SOUNDFILE_FORMATS = {
    ".wav": ("WAV", "PCM_24"),
    ".flac": ("FLAC", "PCM_24"),  # FLAC stores at most 24 bits
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),  # needs libsndfile >= 1.1
}
# extension -> (ffmpeg muxer, ffmpeg codec), encoded through pydub
_FFMPEG_FORMATS = {
    ".m4a": ("ipod", "aac"),
    ".aac": ("adts", "aac"),
}
SUPPORTED_EXTENSIONS = tuple(_SOUNDFILE_FORMATS) + tuple(_FFMPEG_FORMATS)  # output formats, lower case
MAX_CHANNELS = 8  # more than this is almost surely a [samples, channels] array passed the wrong way round
_PCM16_SCALE = 32767  # full scale of 16-bit PCM, the sample format handed to ffmpeg
_FFMPEG_HINT = "install it with `apt-get install ffmpeg` or `brew install ffmpeg`, or write .wav/.flac/.ogg/.mp3"


# --- paths --------------------------------------------------------------------------------------------


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` can take an audio file, before any heavy work; return it resolved.

    Raises ``InputError`` for a NUL byte, a name too long for the file system, a missing or unsupported
    extension, a missing or unwritable folder or a path that is a folder, and ``AudioIOError`` when the
    encoder the extension needs is not available.
    """
    path = check_target(path)
    if not path.suffix:
        raise InputError(f"output path {path} has no extension: add one of {', '.join(SUPPORTED_EXTENSIONS)}")
    check_extension(path.suffix)
    return path


def check_extension(extension: str) -> None:
    """Check that files ending in ``extension`` (".wav") can be written here: supported, encoder available."""
    extension = extension.lower()
    if extension not in SUPPORTED_EXTENSIONS:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise InputError(f"output format {extension} is not supported: use one of {supported}")
    if extension in _FFMPEG_FORMATS and shutil.which("ffmpeg") is None:
        raise AudioIOError(f"writing {extension} needs ffmpeg, which is not on PATH", hint=_FFMPEG_HINT)
    if extension == ".mp3" and "MP3" not in soundfile.available_formats():
        raise AudioIOError(
            f"this libsndfile ({soundfile.__libsndfile_version__}) cannot write MP3",
            hint="upgrade to libsndfile >= 1.1 (pip install -U soundfile), or write .wav/.flac/.ogg",
        )


DEFAULT_NAME_MAX = 255  # bytes in one file name where the file system does not say (ext4, APFS, NTFS: 255)


def check_target(path: str | os.PathLike[str], what: str = "output path") -> Path:
    """The resolved path of a file to (over)write: no NUL byte, a name (and the hidden partial name written
    first) that the file system takes, its folder exists and can be written into, and it is not a folder."""
    if "\x00" in os.fspath(path):
        raise InputError(f"{what} {os.fspath(path)!r} holds a NUL byte", hint="give a plain file name")
    path = expand_user(path)
    over = name_overflow(path)
    if over:
        size = len(os.fsencode(path.name))
        extra = len(os.fsencode(_partial_path(path).name)) - size
        raise InputError(
            f"{what} name {path.name[:40]!r}... is {size} bytes: too long for this file system (a name may have "
            f"{size - over + extra} bytes, and the hidden partial file written first adds {extra})",
            hint=f"use a name of at most {size - over} bytes",
        )
    try:
        path = path.resolve()
        is_folder, folder_is_folder = path.is_dir(), path.parent.is_dir()
    except OSError as err:  # a path past PATH_MAX, a loop of links, a folder in the way that is a file
        raise InputError(f"{what} {os.fspath(path)[:80]!r}: {err.strerror or err}") from None
    if is_folder:
        raise InputError(f"{what} {path} is a folder: give a file name such as {path / 'story.wav'}")
    if not folder_is_folder:
        hint = f"create it with `mkdir -p {path.parent}`"
        raise InputError(f"output folder {path.parent} does not exist", hint=hint)
    check_writable_folder(path.parent)
    return path


def name_overflow(path: Path) -> int:
    """How many bytes the hidden partial name of ``path`` (what a write creates first) is over the longest
    name its folder's file system takes; 0 when it fits (or ``path`` has no name: a folder, said next)."""
    if not path.name:
        return 0
    folder = Path(os.path.abspath(path.parent))
    return max(0, len(os.fsencode(_partial_path(path).name)) - _name_max(folder))


def check_writable_folder(folder: Path) -> None:
    """Refuse, before any work, a folder this process cannot create files in (EACCES, a read-only mount).
    ``os.access`` asks the kernel with the real user's rights; root passes (as it does when writing)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write into {folder}: permission denied", hint="choose another folder or fix its permissions"
        )


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, ``folder``'s file system takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # folder missing (reported next), or no pathconf (Windows)
        return DEFAULT_NAME_MAX


def _partial_path(path: Path) -> Path:
    """The hidden ``.NAME.XXXXXXXX.partial.EXT`` a write goes to before it is renamed onto ``path``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")


# --- writing ------------------------------------------------------------------------------------------


def write_audio(path: str | os.PathLike[str], wave: np.ndarray, sample_rate: int) -> Path:
    """Write ``wave`` [channels, samples] float to ``path`` atomically; the format follows the extension."""
    path = check_output_path(path)
    return atomic_write(path, _audio_writer(path, wave, sample_rate))


def _audio_writer(path: Path, wave: np.ndarray, sample_rate: int) -> Callable[[BinaryIO], object]:
    """What writes ``wave`` into an open file in the format ``path``'s extension names (checked first)."""
    _check_wave(wave)
    _check_sample_rate(sample_rate)
    samples = np.clip(wave, -1.0, 1.0).T  # [samples, channels], the layout both writers take
    extension = path.suffix.lower()
    if extension in _FFMPEG_FORMATS:
        muxer, codec = _FFMPEG_FORMATS[extension]
        return lambda file: _export_ffmpeg(file, samples, sample_rate, muxer, codec)
    file_format, subtype = _SOUNDFILE_FORMATS[extension]
    return lambda file: _soundfile_write(file, samples, sample_rate, file_format, subtype)


def _soundfile_write(file: BinaryIO, samples: np.ndarray, sample_rate: int, file_format: str, subtype: str) -> None:
    """``soundfile.write`` into ``file`` through ``_KeptErrors``: a failed write (ENOSPC) is one OSError,
    raised once libsndfile returns, not a traceback printed from each of its callbacks."""
    guarded = _KeptErrors(file)
    try:
        soundfile.write(guarded, samples, sample_rate, format=file_format, subtype=subtype)
    except Exception:  # what the short writes led to (a LibsndfileError, soundfile's own assert on the count)
        if guarded.error is None:
            raise
    if guarded.error is not None:
        raise guarded.error


class _KeptErrors:
    """The file libsndfile writes through (its virtual I/O calls these from C). An exception there cannot
    reach Python's caller: cffi prints its traceback and returns 0, and libsndfile goes on. So the first
    OSError is kept, later calls do nothing, and ``_soundfile_write`` raises it once afterwards."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                return self.file.write(data)
            except OSError as err:
                self.error = err
        return 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self.error is None:
            try:
                return self.file.seek(offset, whence)
            except OSError as err:
                self.error = err
        return 0

    def tell(self) -> int:
        if self.error is None:
            try:
                return self.file.tell()
            except OSError as err:
                self.error = err
        return 0


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, e.g. the plan JSON beside the audio."""
    return atomic_write(check_target(path), lambda file: file.write(text.encode("utf-8")))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Run ``write`` on a hidden partial file in ``path``'s folder, fsync it, rename it onto ``path``."""
    partial = _write_partial(path, write)
    try:
        os.replace(partial, path)
    except BaseException as err:
        partial.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise AudioIOError(f"could not write {path}: {err}") from err
        raise
    _fsync_folder(path.parent)
    return path


def _write_partial(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Run ``write`` on a new hidden ``.NAME.XXXXXXXX.partial.EXT`` beside ``path`` and fsync it; on any
    failure the partial file is removed."""
    partial = _partial_path(path)
    try:
        file = open(partial, "xb")  # created with the umask's permissions, as the target would be
    except OSError as err:
        raise AudioIOError(f"could not create a file in {path.parent}: {err.strerror or err}") from err
    try:
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException as err:
        partial.unlink(missing_ok=True)
        if isinstance(err, (OSError, soundfile.SoundFileError)):
            raise AudioIOError(f"could not write {path}: {err}") from err
        raise
    return partial


STORY_WRITE_STEPS = 4  # on_step reports of write_story_files, before its last rename


def write_story_files(
    audio_path: str | os.PathLike[str],
    wave: np.ndarray,
    sample_rate: int,
    plan_path: str | os.PathLike[str],
    plan_text: str,
    *,
    on_step: Callable[[int, str], None] = lambda done, what: None,
    sidecar: tuple[Path, Callable[[str], bytes]] | None = None,
) -> Path:
    """Write a story's audio and its plan as a pair: the audio file appears last, so an audio file always has
    its own plan beside it, whenever the process dies. Order: both to hidden partial files (fsynced); the old
    audio removed; the plan renamed into place; the audio renamed into place. A crash before the last rename
    leaves at most a plan with no audio (an unfinished story: a resumed batch renders it again) and partial
    files (a resumed batch removes them). ``on_step(done, what)`` after each of the first STORY_WRITE_STEPS.
    ``sidecar``: a third file (the story's latents) and a function of the audio file's sha256 giving its bytes;
    it is renamed into place after the plan, before the audio."""
    audio_path, plan_path = check_output_path(audio_path), check_target(plan_path, "plan path")
    write = _audio_writer(audio_path, wave, sample_rate)
    partials: list[Path] = []
    plan_placed = False
    try:
        partials.append(_write_partial(audio_path, write))
        on_step(1, f"{audio_path.name} written")
        partials.append(_write_partial(plan_path, lambda file: file.write(plan_text.encode("utf-8"))))
        on_step(2, f"{plan_path.name} written")
        if sidecar is not None:
            side_bytes = sidecar[1](hashlib.sha256(partials[0].read_bytes()).hexdigest())
            partials.append(_write_partial(check_target(sidecar[0], "latents path"), lambda f: f.write(side_bytes)))
        audio_path.unlink(missing_ok=True)  # until the new audio lands, the story reads as unfinished
        _fsync_folder(audio_path.parent)
        on_step(3, f"old {audio_path.name} removed")
        os.replace(partials[1], plan_path)
        plan_placed = True
        on_step(4, f"{plan_path.name} in place")
        if sidecar is not None:
            os.replace(partials[2], sidecar[0])
        os.replace(partials[0], audio_path)
    except BaseException as err:
        for partial in partials:
            partial.unlink(missing_ok=True)
        if plan_placed and not audio_path.exists():
            plan_path.unlink(missing_ok=True)  # a plan whose audio never came
            if sidecar is not None:
                sidecar[0].unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise AudioIOError(f"could not write {audio_path} and {plan_path.name}: {err}") from err
        raise
    _fsync_folder(audio_path.parent)
    return audio_path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable where the OS allows opening a folder (POSIX)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _export_ffmpeg(file: BinaryIO, samples: np.ndarray, sample_rate: int, muxer: str, codec: str) -> None:
    """Encode [samples, channels] in [-1, 1] through pydub + ffmpeg into ``file``."""
    from pydub import AudioSegment  # imported here: pydub warns at import when ffmpeg is missing

    from pydub.exceptions import CouldntEncodeError

    pcm16 = np.round(samples * _PCM16_SCALE).astype("<i2")
    segment = AudioSegment(pcm16.tobytes(), sample_width=2, frame_rate=sample_rate, channels=samples.shape[1])
    try:
        segment.export(file, format=muxer, codec=codec)
    except CouldntEncodeError as err:
        raise AudioIOError(f"ffmpeg could not encode {muxer}/{codec}: {str(err).strip()[-300:]}") from err


# --- a story's files ------------------------------------------------------------------------------


def story_stem(path: str | os.PathLike[str]) -> str:
    """The story's name in a plan or audio path: ``story`` for story.plan.json, story.json and story.wav."""
    name = Path(path).name
    for suffix in (".plan.json", ".json"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def find_audio(plan_path: str | os.PathLike[str]) -> Path | None:
    """The audio file beside a plan (story.wav, .flac, ... for story.plan.json, in SUPPORTED_EXTENSIONS's order:
    the lossless ones first), or None."""
    plan_path = Path(plan_path)
    for extension in SUPPORTED_EXTENSIONS:
        candidate = plan_path.with_name(story_stem(plan_path) + extension)
        if candidate.is_file():
            return candidate
    return None


# --- reading and resampling ---------------------------------------------------------------------------


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read an audio file as (float32 [channels, samples], sample_rate); .m4a/.aac go through ffmpeg."""
    path = expand_user(path)
    if not path.is_file():
        raise InputError(f"audio file not found: {path}")
    if path.suffix.lower() in _FFMPEG_FORMATS:
        return _read_ffmpeg(path)
    try:
        samples, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise AudioIOError(f"could not read {path}: {err}") from err
    return np.ascontiguousarray(samples.T), int(sample_rate)


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    if shutil.which("ffmpeg") is None:
        raise AudioIOError(f"reading {path.suffix} needs ffmpeg, which is not on PATH", hint=_FFMPEG_HINT)
    from pydub import AudioSegment

    try:
        segment = AudioSegment.from_file(path)
    except Exception as err:  # pydub raises CouldntDecodeError and bare Exceptions from ffmpeg
        raise AudioIOError(f"could not read {path}: {err}") from err
    scale = float(1 << (8 * segment.sample_width - 1))
    samples = np.array(segment.get_array_of_samples(), dtype=np.float32).reshape(-1, segment.channels) / scale
    return np.ascontiguousarray(samples.T), int(segment.frame_rate)


def resample(wave: np.ndarray, from_sample_rate: int, to_sample_rate: int) -> np.ndarray:
    """Resample ``wave`` [channels, samples]; torchaudio when importable, else soxr (HQ)."""
    _check_sample_rate(from_sample_rate)
    _check_sample_rate(to_sample_rate)
    if from_sample_rate == to_sample_rate:
        return wave
    _check_wave(wave)
    try:
        import torchaudio.functional  # imports torch; tried first so a missing torchaudio costs nothing
        import torch
    except ImportError:
        import soxr

        resampled = soxr.resample(np.ascontiguousarray(wave.T), from_sample_rate, to_sample_rate, quality="HQ")
        return np.ascontiguousarray(resampled.T, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(wave))
    resampled = torchaudio.functional.resample(tensor, from_sample_rate, to_sample_rate)
    return resampled.numpy().astype(np.float32, copy=False)


# --- checks -------------------------------------------------------------------------------------------


def _check_wave(wave: np.ndarray) -> None:
    if not isinstance(wave, np.ndarray) or wave.ndim != 2 or not np.issubdtype(wave.dtype, np.floating):
        got = f"{wave.dtype} array of shape {wave.shape}" if isinstance(wave, np.ndarray) else type(wave).__name__
        raise AudioIOError(f"audio must be a float array [channels, samples], got {got}")
    channels, samples = wave.shape
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioIOError(
            f"audio has {channels} channels: expected 1 to {MAX_CHANNELS} "
            "(pass [channels, samples], not [samples, channels])"
        )
    if samples == 0:
        raise AudioIOError("audio has no samples: nothing to write")
    if not np.isfinite(wave).all():
        raise AudioIOError("audio has non-finite samples (NaN or inf)")


def _check_sample_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioIOError(f"sample_rate = {sample_rate!r}: must be a positive integer (Hz)")
