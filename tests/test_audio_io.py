"""Audio files: round trips per format, atomic writes that leave nothing behind, path errors, resampling."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audiostory_cli.audio_io import (
    SUPPORTED_EXTENSIONS,
    check_output_path,
    read_audio,
    resample,
    write_audio,
    write_text_atomic,
)
from audiostory_cli.errors import AudioIOError, AudiostoryError, InputError

HAS_FFMPEG = shutil.which("ffmpeg") is not None


def _sine(sample_rate: int, seconds: float, channels: int = 2, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.stack([0.5 * np.sin(2 * np.pi * hz * (c + 1) * t) for c in range(channels)]).astype(np.float32)


# --- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", [".wav", ".flac"])
@pytest.mark.parametrize(("sample_rate", "channels"), [(44100, 2), (16000, 1)])
def test_lossless_round_trip_is_exact_in_length_and_close_in_value(tmp_path, extension, sample_rate, channels):
    wave = _sine(sample_rate, 0.3, channels)
    path = write_audio(tmp_path / f"story{extension}", wave, sample_rate)
    back, back_rate = read_audio(path)
    assert back_rate == sample_rate
    assert back.shape == wave.shape
    np.testing.assert_allclose(back, wave, atol=1e-6)  # 24-bit PCM


@pytest.mark.parametrize("extension", [".ogg", ".mp3"])
def test_lossy_round_trip_keeps_rate_channels_and_length(tmp_path, extension):
    wave = _sine(44100, 0.5)
    back, back_rate = read_audio(write_audio(tmp_path / f"story{extension}", wave, 44100))
    assert back_rate == 44100
    assert back.shape[0] == 2
    assert abs(back.shape[1] - wave.shape[1]) <= 2048  # encoder padding at most


@pytest.mark.skipif(not HAS_FFMPEG, reason="ffmpeg is not on PATH: the .m4a/.aac writer needs it")
@pytest.mark.parametrize("extension", [".m4a", ".aac"])
def test_ffmpeg_round_trip_keeps_rate_and_channels(tmp_path, extension):
    wave = _sine(44100, 0.5)
    back, back_rate = read_audio(write_audio(tmp_path / f"story{extension}", wave, 44100))
    assert back_rate == 44100
    assert back.shape[0] == 2
    assert abs(back.shape[1] - wave.shape[1]) <= 2048  # AAC priming and frame padding at most
    assert [p.name for p in tmp_path.iterdir()] == [f"story{extension}"]


def test_samples_beyond_full_scale_are_clipped_not_wrapped(tmp_path):
    wave = np.array([[1.5, -1.5, 0.25]], np.float32)
    back, _ = read_audio(write_audio(tmp_path / "loud.wav", wave, 8000))
    np.testing.assert_allclose(back, [[1.0, -1.0, 0.25]], atol=1e-6)


# --- atomic writes ------------------------------------------------------------------------------------


def _half_write_then(error: BaseException):
    def write(file, data, *args, **kwargs):
        file.write(b"RIFF half a header")
        raise error

    return write


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_no_file_and_no_partial(tmp_path, monkeypatch, error):
    monkeypatch.setattr(soundfile, "write", _half_write_then(error))
    with pytest.raises((AudioIOError, KeyboardInterrupt)) as raised:
        write_audio(tmp_path / "story.wav", _sine(8000, 0.1), 8000)
    assert isinstance(raised.value, type(error) if isinstance(error, KeyboardInterrupt) else AudioIOError)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_an_existing_target_unchanged(tmp_path, monkeypatch):
    target = tmp_path / "story.flac"
    write_audio(target, _sine(8000, 0.1), 8000)
    before = target.read_bytes()
    monkeypatch.setattr(soundfile, "write", _half_write_then(OSError(5, "Input/output error")))
    with pytest.raises(AudioIOError, match="could not write .*story.flac"):
        write_audio(target, _sine(8000, 0.2), 8000)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["story.flac"]


def test_write_replaces_an_existing_file(tmp_path):
    target = tmp_path / "story.wav"
    write_audio(target, _sine(8000, 0.1), 8000)
    write_audio(target, _sine(8000, 0.2), 8000)
    assert read_audio(target)[0].shape == (2, 1600)
    assert [p.name for p in tmp_path.iterdir()] == ["story.wav"]


def test_write_text_atomic_writes_utf8_and_nothing_else(tmp_path):
    path = write_text_atomic(tmp_path / "story.plan.json", '{"prompt": "pluie ☂"}\n')
    assert path.read_text(encoding="utf-8") == '{"prompt": "pluie ☂"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["story.plan.json"]
    with pytest.raises(InputError, match="does not exist"):
        write_text_atomic(tmp_path / "missing" / "plan.json", "{}")


# --- paths --------------------------------------------------------------------------------------------


def test_the_readme_lists_exactly_the_supported_extensions():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `-o, --output PATH` | generate, render |"))
    documented = set(re.findall(r"`(\.[a-z0-9]+)`", row.split("|")[3]))
    assert documented == set(SUPPORTED_EXTENSIONS)


def test_unsupported_or_missing_extension_lists_the_supported_ones(tmp_path):
    with pytest.raises(InputError, match=r"\.xyz is not supported: use one of \.wav, \.flac"):
        check_output_path(tmp_path / "story.xyz")
    with pytest.raises(InputError, match=r"has no extension: add one of \.wav"):
        check_output_path(tmp_path / "story")


def test_missing_folder_is_named_with_how_to_create_it(tmp_path):
    missing = tmp_path / "not" / "there"
    with pytest.raises(InputError, match=f"output folder {missing} does not exist.*mkdir -p"):
        check_output_path(missing / "story.wav")


def test_a_folder_is_not_an_output_file(tmp_path):
    (tmp_path / "out.wav").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path / "out.wav")


def test_m4a_without_ffmpeg_on_path_names_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AudioIOError, match="ffmpeg.*apt-get install ffmpeg"):
        check_output_path(tmp_path / "x.m4a")


def test_check_output_path_returns_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_output_path("story.flac") == tmp_path.resolve() / "story.flac"


# --- wave validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wave", "message"),
    [
        (np.zeros(100, np.float32), r"\[channels, samples\], got float32 array of shape \(100,\)"),
        (np.zeros((1, 100), np.int16), "must be a float array"),
        (np.zeros((100, 2), np.float32), "100 channels.*not \\[samples, channels\\]"),
        (np.full((1, 100), np.nan, np.float32), "non-finite"),
    ],
)
def test_invalid_waves_are_refused_before_any_file_appears(tmp_path, wave, message):
    with pytest.raises(AudiostoryError, match=message):
        write_audio(tmp_path / "story.wav", wave, 8000)
    assert list(tmp_path.iterdir()) == []


# --- resampling ---------------------------------------------------------------------------------------


def test_resample_changes_length_and_keeps_pitch():
    wave = _sine(44100, 1.0, channels=2, hz=1000.0)
    out = resample(wave, 44100, 16000)
    assert out.dtype == np.float32
    assert out.shape[0] == 2
    assert abs(out.shape[1] - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out[0]))
    assert np.argmax(spectrum) * 16000 / out.shape[1] == pytest.approx(1000.0, abs=2.0)


def test_resample_to_the_same_rate_is_the_identity():
    wave = _sine(16000, 0.1)
    assert resample(wave, 16000, 16000) is wave


# --- what the file system refuses, found before the work ---------------------------------------------------


def test_a_name_whose_partial_file_the_file_system_cannot_take_is_refused(tmp_path):
    import os

    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    room = name_max - len("..12345678.partial.wav") - len(".wav")  # the hidden partial name must fit too
    assert check_output_path(tmp_path / ("a" * room + ".wav")).name == "a" * room + ".wav"
    with pytest.raises(InputError, match=f"too long for this file system.*use a name of at most {room + 4} bytes"):
        check_output_path(tmp_path / ("a" * (room + 1) + ".wav"))
    with pytest.raises(InputError, match="too long"):  # counted in bytes, as the file system counts
        check_output_path(tmp_path / ("ü" * (room // 2 + 1) + ".wav"))


def test_a_nul_byte_in_a_path_is_refused(tmp_path):
    with pytest.raises(InputError, match="holds a NUL byte"):
        check_output_path(f"{tmp_path}/a\x00b.wav")
    with pytest.raises(InputError, match="holds a NUL byte"):
        write_text_atomic(f"{tmp_path}/a\x00b.plan.json", "{}")


def test_a_folder_the_process_cannot_write_into_is_refused(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as EACCES would (root passes for real)
    with pytest.raises(InputError, match=f"cannot write into {tmp_path}: permission denied"):
        check_output_path(tmp_path / "story.wav")


@pytest.mark.parametrize("extension", [".wav", ".flac", ".ogg"])
def test_a_full_disk_is_one_error_not_a_traceback_per_callback(tmp_path, extension, capfd):
    """/dev/full: every write fails with ENOSPC, inside libsndfile's callbacks; one AudioIOError comes out."""
    from audiostory_cli.audio_io import _audio_writer

    write = _audio_writer(tmp_path / f"story{extension}", _sine(44100, 2.0), 44100)
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError, match="No space left on device"):
        write(full)
    assert "Traceback" not in capfd.readouterr().err


def test_a_full_disk_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    from audiostory_cli import audio_io

    def full_disk(path, mode):  # the partial file is created, then nothing more fits
        return open("/dev/full", "wb", buffering=0) if mode == "xb" and path.touch() is None else None

    monkeypatch.setattr(audio_io, "open", full_disk, raising=False)
    written = tmp_path / "story.wav"
    with pytest.raises(AudioIOError, match=f"could not write {written}: .Errno {errno.ENOSPC}. No space"):
        write_audio(tmp_path / "story.wav", _sine(44100, 1.0), 44100)
    assert list(tmp_path.iterdir()) == []
