"""`audiostory dub` end to end on tiny models (the tiny planner, the tiny Stable Audio 3 decoder, the tiny
Qwen2-VL describer), the server describer against a local OpenAI-compatible stub, the slots mode on every
planner engine, `generate --timeline` and `render` of a timeline, and every error as one line with no file left."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_planner_engines import KEY, MODELS, _chat, planners, server_url, stub_server  # noqa: F401 - fixtures
from test_video import FRAME_S, SHOTS, make_video, stream_durations, stream_md5
from typer.testing import CliRunner

from audiostory_cli.cli import app
from audiostory_cli.inputs.describers import HttpDescriber
from audiostory_cli.inputs.dub import describe_shots
from audiostory_cli.inputs.timelines import parse_timeline
from audiostory_cli.inputs.video import detect_shots, probe
from audiostory_cli.planners.slots import SlotRequest, plan_slots
from audiostory_cli.story import load_plan

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg is not installed (apt-get install ffmpeg)")  # fmt: skip

CAPTIONS = """\
1
00:00:00,000 --> 00:00:02,000
A red wall; a cat sneaks along it

2
00:00:02,000 --> 00:00:03,600
A blue sky; a plate falls

3
00:00:04,000 --> 00:00:06,800
A test card flickers on a television
"""
CUES = [(0.0, 2.0), (2.0, 3.6), (4.0, 6.8)]


def _flat(pairs):
    """(start, end) pairs as one list of times: pytest.approx compares flat sequences only (pytest 9.2)."""
    return [time for pair in pairs for time in pair]



@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "two.mp4", (SHOTS[0], SHOTS[2]))


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("captions") / "clip.srt"
    path.write_text(CAPTIONS)
    return path


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    from audiostory_cli.testing import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "vlm")


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dubbed(clip, captions, tiny_planner, tiny_sa3, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dubbed") / "out.mp4"
    result = run("dub", clip, "--captions", captions, "--planner", tiny_planner, "--decoder", tiny_sa3, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    return out


def test_dub_copies_the_video_stream_and_puts_every_event_at_its_cue(dubbed, clip):
    assert stream_md5(dubbed) == stream_md5(clip)
    durations = stream_durations(dubbed)
    assert durations["audio"] == pytest.approx(durations["video"], abs=FRAME_S)
    plan = load_plan(dubbed.with_name("out.plan.json"))
    assert plan.total_s == probe(clip).duration_s
    assert _flat((e.start_s, e.end_s) for e in plan.foreground()) == pytest.approx(_flat(CUES), abs=1e-9)
    assert all(e.start_s >= 0 and e.end_s <= plan.total_s + 1e-9 for e in plan.events)
    assert not [e for e in plan.events if e.layer == 1 and 3.6 < e.start_s + 1e-9 < 4.0]  # --gaps silence
    assert plan.render.decoder.endswith("stable-audio-3") and plan.render.planner.endswith("planner")
    assert sorted(p.name for p in dubbed.parent.iterdir()) == ["out.mp4", "out.plan.json"]


def test_an_edited_plan_renders_onto_the_video_and_to_the_same_audio(dubbed, clip, tmp_path):
    plan = json.loads(dubbed.with_name("out.plan.json").read_text())
    result = run("dub", clip, "--plan", dubbed.with_name("out.plan.json"), "--audio-only", "-o", tmp_path / "a.wav")
    assert result.exit_code == 0, result.output
    again = run("render", dubbed.with_name("out.plan.json"), "-o", tmp_path / "b.wav")
    assert again.exit_code == 0, again.output
    import soundfile as sf

    a, rate = sf.read(tmp_path / "a.wav")
    assert np.array_equal(a, sf.read(tmp_path / "b.wav")[0]) and len(a) == round(plan["total_s"] * rate)
    plan["events"][0]["caption"] = "a door slams"
    edited = tmp_path / "edited.plan.json"
    edited.write_text(json.dumps(plan))
    result = run("dub", clip, "--plan", edited, "-o", tmp_path / "edited.mp4")
    assert result.exit_code == 0, result.output
    assert stream_md5(tmp_path / "edited.mp4") == stream_md5(clip)
    assert load_plan(tmp_path / "edited.plan.json").events[0].caption == "a door slams"
    plan["total_s"] = 5.0
    kept = [e for e in plan["events"] if e["start_s"] + e["duration_s"] <= 5.0]
    plan["events"] = [{**e, "index": i} for i, e in enumerate(kept)]
    edited.write_text(json.dumps(plan))
    result = run("dub", clip, "--plan", edited, "-o", tmp_path / "short.mp4")
    assert result.exit_code == 1 and "lasts 5 s, the video clip.mp4 6.8 s" in result.output
    assert not (tmp_path / "short.mp4").exists()


def test_describer_dry_run_prints_one_row_per_detected_shot(two_shots, tiny_vlm, tiny_planner, tmp_path):
    result = run("dub", two_shots, "--describer", tiny_vlm, "--planner", tiny_planner, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    shots = detect_shots(probe(two_shots))
    assert len(shots) == 2
    rows = [line for line in result.stderr.splitlines() if line.startswith("│ ") and "00:00:0" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["1", "2"]
    plan = json.loads(result.stdout)
    assert _flat((e["start_s"], e["start_s"] + e["duration_s"]) for e in plan["events"] if e["layer"] == 0) == \
        pytest.approx(_flat((s.start_s, s.end_s) for s in shots), abs=1e-9)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_server_describer_sends_each_shot_as_base64_jpeg_image_urls(clip):
    """Our own stdlib server speaking the OpenAI chat-completions API (no vision model runs offline here): what
    crosses the wire is checked, and the answer becomes the shot's description."""
    from PIL import Image

    def replies(path, body):
        if path.endswith("/models"):
            return 200, "application/json", MODELS
        return 200, "application/json", _chat(json.dumps({"description": "A red wall fills the frame."}))

    info = probe(clip)
    with stub_server(replies) as (url, seen):
        timeline = describe_shots(info, detect_shots(info, min_shot_s=0.5)[:2], HttpDescriber.load(url))
    assert [c.text for c in timeline.cues] == ["A red wall fills the frame."] * 2
    posts = [body for body in seen if body["path"].endswith("/chat/completions")]
    assert len(posts) == 2 and posts[0]["model"] == "stub"
    parts = posts[0]["messages"][0]["content"]
    assert parts[0]["type"] == "text" and [p["type"] for p in parts[1:]] == ["image_url"] * 3
    header, data = parts[1]["image_url"]["url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    frame = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=float)
    assert frame[..., 0].mean() > 150 and frame[..., 2].mean() < 90  # the first shot is the red one
    assert posts[0]["response_format"]["json_schema"]["schema"]["required"] == ["description"]


@pytest.mark.parametrize("engine", ["transformers", "llama_cpp", "openai_http"])
def test_slots_mode_keeps_the_cue_times_on_every_engine(planners, engine, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AUDIOSTORY_PLANNER_API_KEY", KEY)
    cues = parse_timeline(CAPTIONS, "srt").cues
    plan = plan_slots(planners(engine), SlotRequest(slots=cues, total_s=6.8, prompt="a cartoon", gaps="bed"))
    assert _flat((e.start_s, e.end_s) for e in plan.foreground()) == pytest.approx(_flat(CUES), abs=1e-9)
    bed = [e for e in plan.events if e.layer == 1]
    assert bed and bed[0].start_s == 0.0 and bed[-1].end_s == pytest.approx(6.8)  # --gaps bed: under everything


def test_generate_with_a_timeline_and_render_of_a_timeline(captions, tiny_planner, tiny_sa3, tmp_path):
    result = run("generate", "a cartoon", "--timeline", captions, "--planner", tiny_planner, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["total_s"] == 6.8  # the end of the last cue
    assert _flat((e["start_s"], e["start_s"] + e["duration_s"]) for e in plan["events"] if e["layer"] == 0) == \
        pytest.approx(_flat(CUES), abs=1e-9)  # fmt: skip
    past = run("generate", "a cartoon", "--timeline", captions, "--duration", "5", "--planner", tiny_planner,
               "--dry-run")  # fmt: skip
    assert past.exit_code == 1 and "line 10: cue 3 ends at 00:00:06.800, after the end of the story" in past.output
    result = run("render", captions, "--decoder", tiny_sa3, "-o", tmp_path / "heard.wav")
    assert result.exit_code == 0, result.output
    saved = load_plan(tmp_path / "heard.plan.json")
    assert [e.caption for e in saved.events] == [c.text for c in parse_timeline(CAPTIONS, "srt").cues]


# --- errors: one line, exit 1 or 2, no file ------------------------------------------------------------------


def test_dub_without_captions_or_describer_says_what_is_needed(clip, tmp_path):
    result = run("dub", clip, "-o", tmp_path / "out.mp4")
    assert result.exit_code == 2
    assert "dub needs to know what each shot shows: give a captions file (--captions" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_dub_errors_are_one_line_and_leave_no_file(clip, captions, tiny_planner, tmp_path, monkeypatch):
    bad = tmp_path / "bad.srt"
    bad.write_text(CAPTIONS.replace("00:00:02,000 --> 00:00:03,600", "00:00:02,000 -> 00:00:03,600"))
    late = tmp_path / "late.srt"
    late.write_text(CAPTIONS.replace("00:00:06,800", "00:00:09,000"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    tone = tmp_path / "tone.mp4"
    make_video(tmp_path / "src.mp4", SHOTS[:1])
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "src.mp4"), "-vn", "-c:a", "copy", str(tone)], check=True)
    out = tmp_path / "out" / "dubbed.mp4"
    out.parent.mkdir()
    cases = [
        ((tmp_path / "missing.mp4", "--captions", captions), "video file not found"),
        ((empty, "--captions", captions), "is empty (0 bytes)"),
        ((tone, "--captions", captions), "has no video stream"),
        ((clip, "--captions", bad), "bad.srt line 5: not an SRT cue"),
        ((clip, "--captions", late), "late.srt line 10: cue 3 ends at 00:00:09.000, after the end of the video clip.mp4"),
    ]  # fmt: skip
    for args, message in cases:
        result = run("dub", *args, "--planner", tiny_planner, "-o", out)
        assert result.exit_code == 1, (message, result.output)
        assert message in " ".join(result.stderr.split()) and result.stderr.startswith("error: ")
        assert list(out.parent.iterdir()) == []
    monkeypatch.setenv("PATH", str(tmp_path / "out"))
    result = run("dub", clip, "--captions", captions, "-o", out)
    assert result.exit_code == 1 and "ffmpeg and ffprobe are not on PATH" in result.stderr
    assert "apt-get install ffmpeg" in " ".join(result.stderr.split())
    assert list(out.parent.iterdir()) == []


def test_dub_usage_errors_exit_2(clip, captions, tmp_path):
    both = run("dub", clip, "--captions", captions, "--describer", "http://127.0.0.1:9/v1", "-o", tmp_path / "o.mp4")
    assert both.exit_code == 2 and "--captions and --describer both say" in both.output
    assert run("dub", clip, "--captions", captions).exit_code == 2  # no -o and no --dry-run
    wrong = run("dub", clip, "--captions", captions, "-o", tmp_path / "o.wav")
    assert wrong.exit_code == 2 and "--audio-only" in wrong.stderr
    nowhere = run("dub", clip, "--captions", captions, "-o", tmp_path / "missing" / "o.mp4")
    assert nowhere.exit_code == 2 and "does not exist" in nowhere.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seconds", [FRAME_S, 3 * FRAME_S])
def test_a_video_of_one_frame_or_a_few_gives_every_shot_its_frames(seconds, tmp_path):
    """An exact seek past a video's last frame decodes nothing: a 1-frame or 0.12 s video must still give the
    describer its frames (they were refused as 'no frame decoded')."""
    from PIL import Image

    from audiostory_cli.inputs.dub import FRAMES_PER_SHOT
    from audiostory_cli.inputs.video import frame_times, frames

    info = probe(make_video(tmp_path / "short.mp4", (("color=c=red", seconds),), audio=False))
    shots = detect_shots(info, min_shot_s=1.0)
    assert [(s.start_s, s.end_s) for s in shots] == [(0.0, info.duration_s)]
    jpegs = frames(info, frame_times(shots[0], FRAMES_PER_SHOT), width=64)
    assert len(jpegs) == FRAMES_PER_SHOT
    for jpeg in jpegs:
        red, green, blue = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=float).mean(axis=(0, 1))
        assert red > 200 and green < 60 and blue < 60


def test_an_output_that_cannot_be_written_is_a_usage_error_before_anything_runs(clip, captions, tmp_path,
                                                                                 monkeypatch):  # fmt: skip
    """-o too long for the file system (itself, or its plan's and partial files' names), with a NUL byte, in a
    folder this user cannot write into, or with its plan's path a folder: exit 2, one line, nothing probed or
    loaded, no file left (a 250-byte name rendered the whole story, then died in a traceback)."""
    monkeypatch.setattr("audiostory_cli.inputs.video.probe", lambda *a, **k: pytest.fail("probed the video"))
    monkeypatch.setattr("audiostory_cli.registry.load_models", lambda *a, **k: pytest.fail("loaded a model"))
    (tmp_path / "taken.plan.json").mkdir()
    cases = [
        (["-o", tmp_path / ("a" * 300 + ".mp4")], "is 304 bytes: too long for this file system"),
        (["-o", tmp_path / ("a" * 240 + ".mp4")], "is 244 bytes: too long for this file system once the plan"),
        (["--audio-only", "-o", tmp_path / ("a" * 240 + ".wav")], "is 244 bytes: too long"),
        (["-o", f"{tmp_path}/a\x00b.mp4"], "null byte"),
        (["-o", tmp_path / "taken.mp4"], "taken.plan.json is a folder"),
    ]  # fmt: skip
    readable = os.access
    for args, message in [*cases, (["-o", tmp_path / "ok.mp4"], f"cannot write into {tmp_path}: permission denied")]:
        if "ok.mp4" in str(args[-1]):
            monkeypatch.setattr("audiostory_cli.audio_io.os.access", lambda path, mode, **k: not mode & os.W_OK and
                                readable(path, mode, **k))  # fmt: skip
        result = run("dub", clip, "--captions", captions, *args)
        assert result.exit_code == 2, (message, result.output)
        assert message in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.plan.json"]


def test_a_describer_server_that_is_not_running_names_the_describer_option():
    import socket

    from audiostory_cli.errors import ModelLoadError

    with socket.socket() as probe_socket:  # a port nothing listens on
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    with pytest.raises(ModelLoadError) as caught:
        HttpDescriber.load(f"http://127.0.0.1:{port}/v1")
    assert f"describer server http://127.0.0.1:{port}/v1: cannot connect" in str(caught.value)
    assert "check --describer" in str(caught.value) and "--planner" not in str(caught.value)


def test_frames_of_a_video_that_starts_late_are_the_shots_own(clip, tmp_path):
    """An MPEG-TS starts at 1.4 s: ffmpeg counts its scene times and input seeks from the file's start itself, so
    the start time taken off again put the cuts 1.4 s early, and added again showed the describer a frame 1.4 s
    later (another shot), and near the end no frame at all."""
    import subprocess

    from PIL import Image

    from audiostory_cli.inputs.video import frames

    ts = tmp_path / "clip.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-map", "0:v", "-c:v", "mpeg2video", "-q:v", "3", "-f",
                    "mpegts", str(ts)], check=True)  # fmt: skip
    info = probe(ts)
    assert info.start_s > 1.0
    cuts = [shot.start_s for shot in detect_shots(info)[1:]]
    assert cuts == pytest.approx([2.0, 3.6, 5.6], abs=2 * FRAME_S)  # were found 1.44 s early
    colours = [np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=float).mean(axis=(0, 1))
               for jpeg in frames(info, [1.0, 2.8, info.duration_s - FRAME_S / 2], width=64)]  # fmt: skip
    red, blue, green = colours
    assert red[0] > 200 and red[2] < 60  # shot 1 (0-2 s), not shot 2
    assert blue[2] > 200 and blue[0] < 60  # shot 2 (2-3.6 s)
    assert green[1] > 100 and green[0] < 60 and green[2] < 60  # the last frame of shot 4


def test_a_video_stream_the_container_cannot_take_is_refused_before_any_model_loads(captions, tmp_path, monkeypatch):
    """A GIF's video stream goes into no .mp4: refused with ffmpeg's reason before planning and rendering (it
    failed at the mux, after the whole render, with a cut line: 'Error initializing output stream 0:1 --')."""
    import subprocess

    gif = tmp_path / "anim.gif"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=64x64:r=10:d=7", str(gif)], check=True)
    monkeypatch.setattr("audiostory_cli.registry.load_models", lambda *a, **k: pytest.fail("loaded a model"))
    result = run("dub", gif, "--captions", captions, "-o", tmp_path / "out.mp4")
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())
    assert "the video stream of anim.gif (gif) cannot be copied into out.mp4: Could not find tag for codec gif" in message
    assert ".mkv takes most codecs" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]
