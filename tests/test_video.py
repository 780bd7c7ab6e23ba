"""Videos made by ffmpeg's lavfi sources with hard cuts at known times: probing, shot detection, frames, and the
mux (the video stream copied bit for bit, the audio as long as the video, nothing left half-written)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from audiostory_cli.errors import AudioIOError, InputError
from audiostory_cli.inputs.video import detect_shots, frames, mux, probe, require_ffmpeg, shots_from_cuts

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg is not installed (apt-get install ffmpeg)")  # fmt: skip

FPS = 25
FRAME_S = 1 / FPS
SHOTS = (("color=c=red", 2.0), ("color=c=blue", 1.6), ("testsrc=", 2.0), ("color=c=green", 1.2))  # hard cuts
CUTS = (2.0, 3.6, 5.6)  # where each new shot starts
LENGTH_S = 6.8


def make_video(path: Path, shots=SHOTS, *, audio: bool = True, size: str = "160x120") -> Path:
    """Concatenated lavfi sources (MPEG-4 Part 2, in every ffmpeg build), with a sine tone as audio."""
    command = ["ffmpeg", "-v", "error", "-y"]
    for source, seconds in shots:
        separator = "" if source.endswith("=") else ":"  # testsrc= takes its options right after the =
        command += ["-f", "lavfi", "-i", f"{source}{separator}s={size}:r={FPS}:d={seconds}"]
    total = sum(seconds for _, seconds in shots)
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=f=440:d={total}"]
    inputs = "".join(f"[{i}:v]" for i in range(len(shots)))
    command += ["-filter_complex", f"{inputs}concat=n={len(shots)}:v=1:a=0[v]", "-map", "[v]"]
    if audio:
        command += ["-map", f"{len(shots)}:a", "-c:a", "aac"]
    command += ["-c:v", "mpeg4", "-q:v", "5", str(path)]
    subprocess.run(command, check=True)
    return path


def stream_md5(path: Path, stream: str = "v") -> str:
    """MD5 of a stream's packets, as ffmpeg copies them (the same when the stream was copied bit for bit)."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-c", "copy", "-f", "md5",
                          "-"], capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def stream_durations(path: Path) -> dict[str, float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,duration", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True)  # fmt: skip
    return {kind: float(seconds) for kind, seconds in (line.split(",") for line in out.stdout.split())}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_probe_reads_length_and_streams(clip):
    info = probe(clip)
    assert info.duration_s == pytest.approx(LENGTH_S, abs=FRAME_S)
    assert (info.width, info.height, info.fps, info.audio_streams) == (160, 120, FPS, 1)


def test_shots_are_found_at_the_known_cuts_within_a_frame(clip):
    shots = detect_shots(probe(clip), min_shot_s=0.5)
    starts = [shot.start_s for shot in shots]
    assert len(shots) == len(SHOTS) and starts[0] == 0.0
    assert np.allclose(starts[1:], CUTS, atol=FRAME_S + 1e-6)
    assert shots[-1].end_s == probe(clip).duration_s
    assert all(a.end_s == b.start_s for a, b in zip(shots, shots[1:]))


def test_min_shot_drops_cuts_that_would_leave_a_short_shot():
    assert shots_from_cuts([2.0, 3.6, 5.6], 6.8, 1.8) == [(0.0, 2.0), (2.0, 6.8)]  # 1.6 s and the last 1.2 s join
    assert shots_from_cuts([2.0, 3.6, 5.6], 6.8, 0.0) == [(0.0, 2.0), (2.0, 3.6), (3.6, 5.6), (5.6, 6.8)]
    assert shots_from_cuts([], 6.8, 1.0) == [(0.0, 6.8)]
    assert shots_from_cuts([0.3, 6.7], 6.8, 1.0) == [(0.0, 6.8)]


def test_frames_show_the_shot_they_were_taken_from(clip):
    from PIL import Image

    red, blue = frames(probe(clip), [1.0, 2.8], width=64)
    for jpeg, channel in ((red, 0), (blue, 2)):
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=float)
        assert pixels.shape == (48, 64, 3)
        assert pixels[..., channel].mean() > 150 and np.delete(pixels, channel, axis=2).mean() < 90


def test_mux_copies_the_video_stream_and_the_audio_lasts_as_long(clip, tmp_path):
    info = probe(clip)
    rate = 44100
    wave = np.sin(np.linspace(0, 880 * np.pi, round(info.duration_s * rate)))[None].repeat(2, 0).astype(np.float32) * 0.5
    out = mux(info, wave, rate, tmp_path / "dubbed.mp4")
    assert stream_md5(out) == stream_md5(clip)
    durations = stream_durations(out)
    assert durations["audio"] == pytest.approx(durations["video"], abs=FRAME_S)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dubbed.mp4"]  # no partial or temporary file left
    mixed = mux(info, wave * 0, rate, tmp_path / "mixed.mkv", mix_original_db=-6.0)
    assert stream_md5(mixed) == stream_md5(clip)
    level = subprocess.run(["ffmpeg", "-v", "info", "-i", str(mixed), "-map", "0:a", "-af", "volumedetect", "-f",
                            "null", "-"], capture_output=True, text=True).stderr  # fmt: skip
    assert "mean_volume: -inf" not in level and "max_volume" in level  # the original tone is heard under silence


def test_a_failed_mux_leaves_no_file(clip, tmp_path):
    info = probe(clip)
    (tmp_path / "keep.mp4").write_bytes(b"old")

    def fail():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mux(info, np.zeros((1, 44100), np.float32), 44100, tmp_path / "keep.mp4", before_rename=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]
    assert (tmp_path / "keep.mp4").read_bytes() == b"old"


def test_bad_videos_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="video file not found"):
        probe(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match=r"is empty \(0 bytes\)"):
        probe(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 20)
    with pytest.raises(InputError, match="cannot read video .*text.mp4"):
        probe(tmp_path / "text.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", str(tmp_path / "tone.m4a")], check=True)
    with pytest.raises(InputError, match="has no video stream"):
        probe(tmp_path / "tone.m4a")
    with pytest.raises(InputError, match="has no audio to keep"):
        silent = probe(make_video(tmp_path / "silent.mp4", SHOTS[:1], audio=False))
        mux(silent, np.zeros((1, 44100), np.float32), 44100, tmp_path / "x.mp4", mix_original_db=-12)


def test_no_ffmpeg_on_path_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AudioIOError, match="ffmpeg and ffprobe are not on PATH.*apt-get install ffmpeg"):
        require_ffmpeg()
