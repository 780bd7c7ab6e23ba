"""``audiostory plot`` and ``--plot``: the picture of a story, alone or over its audio; errors; the extra."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import soundfile as sf

from audiostory_cli.story import load_plan, plan_from_dict

pytest.importorskip("matplotlib", reason='the plot extra: pip install -e ".[plot]"')

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"
FOREGROUND = [
    "a lighthouse foghorn sounds twice across a calm bay at dawn", "gentle waves lap against a wooden pier",
    "a fishing boat's diesel engine starts and idles", "ropes creak and a gull cries overhead",
    "wind picks up, rigging rattles against metal masts", "first heavy raindrops hit a tin roof",
    "thunder rumbles far out at sea", "a downpour roars on the harbor, gutters overflow",
    "a ship's brass bell rings several times through the rain", "a close lightning strike cracks, then a long roll",
    "men shout orders on deck, boots splash through puddles", "a heavy chain rattles as an anchor drops",
    "the storm slowly passes, rain thins to a drizzle", "water drips from eaves into puddles",
    "gulls return, crying and circling over the boats", "a church bell rings the hour as the sun comes out",
]  # fmt: skip
BEDS = [  # caption, start_s, duration_s, layer
    ("low steady sea ambience with soft wind", 0.0, 50.0, 1), ("storm wind howling through the harbor", 50.0, 100.0, 1),
    ("calm open sea ambience after the storm", 150.0, 30.0, 1), ("rain hiss on water, $5 worth of drops", 45.0, 95.0, 2),
]  # fmt: skip


def story(n_events: int, total_s: float) -> dict:
    """A plan as JSON: with 20 events, 16 foreground events of uneven lengths tiling ``total_s`` and 4 beds on
    layers 1 and 2; with fewer, foreground events only."""
    n_foreground = min(n_events, len(FOREGROUND))
    weights = np.array([12, 11, 9, 8, 10, 9, 12, 14, 7, 10, 11, 8, 13, 12, 14, 20][:n_foreground], dtype=float)
    edges = np.concatenate([[0.0], np.cumsum(weights / weights.sum() * total_s)])
    events = [{"caption": FOREGROUND[i], "start_s": round(edges[i], 3), "duration_s": round(edges[i + 1], 3) -
               round(edges[i], 3), "tone": "calm", "layer": 0} for i in range(n_foreground)]  # fmt: skip
    events += [{"caption": c, "start_s": s, "duration_s": d, "layer": layer} for c, s, d, layer in BEDS][: n_events - n_foreground]
    for i, event in enumerate(events):
        event["index"] = i
    return {"prompt": "a storm reaches a quiet harbor, a ship's bell rings, the rain stops and gulls return",
            "total_s": total_s, "tone": "calm, then tense", "events": events}  # fmt: skip


def write_plan(folder, n_events: int, total_s: float, name: str = "story.plan.json"):
    path = folder / name
    path.write_text(json.dumps(story(n_events, total_s)))
    return path


def tone_then_silence(total_s: float, sample_rate: int = 16000, hz: float = 1000.0) -> np.ndarray:
    """[1, samples]: a sine at ``hz`` over the first half, silence after."""
    t = np.arange(round(total_s * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * hz * t) * (t < total_s / 2))[None].astype(np.float32)


def svg_texts(path) -> dict[str, str]:
    """Every text group of an SVG by its id, its lines joined by spaces; parsing it checks it is XML."""
    root = ET.parse(path).getroot()
    return {g.get("id"): " ".join("".join(t.itertext()) for t in g.iter(f"{SVG}text"))
            for g in root.iter(f"{SVG}g") if g.get("id")}  # fmt: skip


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# --- the picture ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_events", "total_s"), [(1, 8.0), (20, 180.0)])
def test_plot_of_a_plan_alone_writes_a_png_beside_it(run, tmp_path, n_events, total_s):
    plan = write_plan(tmp_path, n_events, total_s)
    result = run("plot", plan)
    assert result.exit_code == 0, result.output
    picture = tmp_path / "story.png"
    assert result.stdout.strip() == str(picture)
    assert "the plan alone: no audio beside it" in result.stderr
    assert picture.read_bytes()[:8] == PNG_MAGIC
    assert _files(tmp_path) == ["story.plan.json", "story.png"]  # nothing half-written left


@pytest.mark.parametrize(("n_events", "total_s"), [(1, 8.0), (20, 180.0)])
def test_svg_holds_every_caption_and_every_layer_as_text(run, tmp_path, n_events, total_s):
    plan = write_plan(tmp_path, n_events, total_s)
    out = tmp_path / "timeline.svg"
    result = run("plot", plan, "-o", out)
    assert result.exit_code == 0, result.output
    texts = svg_texts(out)
    all_text = " ".join(texts.values())
    for event in story(n_events, total_s)["events"]:
        # the key gives every caption in full; the block on its lane starts with it
        assert texts[f"event-{event['index']}-key"].startswith(event["caption"]), event
        block = " ".join(texts.get(f"event-{event['index']}-block{more}", "") for more in ("", "-more"))
        assert event["caption"].startswith(block.rstrip("…").strip()[:10])
    lanes = ["foreground", "bed 1", "bed 2"] if n_events == 20 else ["foreground"]
    assert all(lane in all_text for lane in lanes)
    assert ("bed 1" in all_text) == (n_events == 20)
    assert "$5 worth of drops" in all_text or n_events == 1  # a "$" is text, not math


def test_the_picture_over_audio_has_its_spectrogram(run, tmp_path):
    plan = write_plan(tmp_path, 3, 6.0)
    sf.write(tmp_path / "story.flac", tone_then_silence(6.0).T, 16000)  # any format audio_io reads
    alone = tmp_path / "alone.png"
    assert run("plot", plan, "--no-audio", "-o", alone).exit_code == 0
    result = run("plot", plan)
    assert result.exit_code == 0, result.output
    assert "over story.flac" in result.stderr
    over = tmp_path / "story.png"
    assert over.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    assert Image.open(over).size[1] > Image.open(alone).size[1]  # the spectrogram panel above the lanes


def test_spectrogram_shows_the_tone_where_and_at_the_pitch_it_sounds():
    from audiostory_cli.plot import log_spectrogram

    image, low_hz, high_hz = log_spectrogram(tone_then_silence(6.0), 16000, columns=60)
    bands = np.geomspace(low_hz, high_hz, image.shape[0] + 1)
    loudest = bands[image[:, 5:25].argmax(axis=0)]  # the first half, columns away from the edge
    assert np.all((loudest > 900) & (loudest < 1100))
    assert image[:, 35:].max() < image[:, 5:25].max() - 60  # the silent half is dark


@pytest.mark.parametrize("long_captions", [False, True])
def test_20_event_captions_are_readable_none_overlaps_none_leaves_the_picture(long_captions):
    from audiostory_cli.plot import draw_story

    data = story(20, 180.0)
    if long_captions:  # near the 200-character limit: the key wraps them, the blocks cut them
        for event in data["events"]:
            event["caption"] = (event["caption"] + ", " + " then ".join(FOREGROUND))[:199]
    plan = plan_from_dict(data)
    figure = draw_story(plan)
    renderer = figure.canvas.get_renderer()
    page = figure.bbox
    key = [t for t in figure.texts if t.get_text()]
    boxes = [t.get_window_extent(renderer) for t in key]
    for text, box in zip(key, boxes):
        assert text.get_fontsize() >= 8
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, text.get_text()
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:  # lines may touch, not cover each other
            overlap_px = max(0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0, min(a.y1, b.y1) - max(a.y0, b.y0))
            assert overlap_px < 1, (key[i].get_text(), a, b)
    # each block's text stays inside its block
    lanes = figure.axes[-1]
    blocks = {p.get_gid(): p.get_window_extent(renderer) for p in lanes.patches if p.get_gid()}
    for text in lanes.texts:
        gid = text.get_gid() or ""
        if gid.startswith("event-"):
            block = blocks[gid.split("-block")[0]]
            box = text.get_window_extent(renderer)
            assert block.x0 <= box.x0 + 0.5 and box.x1 <= block.x1 + 0.5, gid
            assert block.y0 <= box.y0 + 0.5 and box.y1 <= block.y1 + 0.5, gid
    assert sorted({label.get_text() for label in lanes.get_yticklabels()}) == ["bed 1", "bed 2", "foreground"]
    assert len(blocks) == 20


def test_the_same_plan_draws_the_same_file_and_leaves_matplotlib_as_it_was(tmp_path):
    import matplotlib

    from audiostory_cli.plot import write_plot

    def settings():  # read as a plain dict: rcParams["backend"] would pick a backend (importing pyplot)
        return {key: dict.__getitem__(matplotlib.rcParams, key) for key in dict.keys(matplotlib.rcParams)}

    pyplot_before = "matplotlib.pyplot" in sys.modules
    rc_before = settings()
    plan = plan_from_dict(story(5, 30.0))
    for name in ("a.svg", "b.svg", "a.png", "b.png"):
        write_plot(plan, tmp_path / name)
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert settings() == rc_before  # the backend setting included
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{tmp}/none.plan.json"], 1, "plan file not found"),
        (["{tmp}/invalid.plan.json"], 1, "events[0].duration_s = -2: must be > 0"),
        (["{tmp}/story.plan.json", "-o", "{tmp}/story.jpg"], 2, "use one of .png, .svg"),
        (["{tmp}/story.plan.json", "-o", "{tmp}/nowhere/story.png"], 2, "does not exist"),
        (["{tmp}/story.plan.json", "-o", "{tmp}/" + "a" * 300 + ".png"], 2, "is 304 bytes: too long for this file system"),
        (["{tmp}/story.plan.json", "-o", "{tmp}/" + "a" * 250 + ".svg"], 2, "is 254 bytes: too long"),  # its partial
        (["{tmp}/story.plan.json", "-o", "{tmp}/st\x00ory.png"], 2, "embedded null byte"),
        (["{tmp}/story.plan.json", "-o", "{tmp}"], 2, "has no extension"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, args, code, message):
    write_plan(tmp_path, 2, 10.0)
    (tmp_path / "invalid.plan.json").write_text(json.dumps({"total_s": 5, "events": [
        {"caption": "rain", "start_s": 0, "duration_s": -2}]}))  # fmt: skip
    before = _files(tmp_path)
    result = run("plot", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.split())
    assert result.stdout == "" and _files(tmp_path) == before
    if code == 1:
        assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1


def test_a_folder_that_refuses_writes_is_one_line_before_drawing(run, tmp_path, monkeypatch):
    """A read-only folder (as an ordinary user sees it: os.access says no), for plot's picture and for --plot's
    picture beside the output, or a folder in the picture's place: one line, before any drawing or model load."""
    plan = write_plan(tmp_path, 2, 10.0)
    monkeypatch.setattr("audiostory_cli.plot.draw_story", lambda *a: pytest.fail("drew the picture"))
    monkeypatch.setattr("audiostory_cli.registry.load_models", lambda *a, **k: pytest.fail("loaded a model"))
    (tmp_path / "s.png").mkdir()  # for render --plot -o s.wav
    result = run("render", plan, "-o", tmp_path / "s.wav", "--plot")
    assert result.exit_code == 1 and "picture path" in result.stderr and "s.png is a folder" in result.stderr
    readable = os.access
    monkeypatch.setattr("audiostory_cli.audio_io.os.access", lambda path, mode, **k: not mode & os.W_OK and
                        readable(path, mode, **k))  # fmt: skip
    for args in (["plot", plan], ["plot", plan, "-o", tmp_path / "x.svg"]):
        result = run(*args)
        assert result.exit_code in (1, 2), result.output
        assert f"cannot write into {tmp_path}: permission denied" in " ".join(result.stderr.split())
    assert _files(tmp_path) == ["s.png", "story.plan.json"]


def test_unreadable_or_foreign_audio_is_one_line_and_no_audio_draws_the_plan(run, tmp_path):
    plan = write_plan(tmp_path, 2, 10.0)
    (tmp_path / "story.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    result = run("plot", plan)
    assert result.exit_code == 1 and "could not read" in result.stderr and not (tmp_path / "story.png").exists()
    sf.write(tmp_path / "story.wav", tone_then_silence(4.0).T, 16000)  # another story's audio: 4 s, not 10
    result = run("plot", plan)
    assert result.exit_code == 1, result.output
    assert "story.wav is 4.00 s long but its plan is 10 s" in " ".join(result.stderr.split())
    result = run("plot", plan, "--no-audio")
    assert result.exit_code == 0 and (tmp_path / "story.png").read_bytes()[:8] == PNG_MAGIC


def test_missing_extra_is_one_line_naming_the_install_before_any_model_loads(run, tmp_path, monkeypatch):
    plan = write_plan(tmp_path, 2, 10.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("audiostory_cli.registry.load_models", no_loading)
    for args in (["plot", plan], ["render", plan, "-o", tmp_path / "story.wav", "--plot"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert 'pip install "audiostory-cli[plot]"' in " ".join(result.stderr.split())
    assert _files(tmp_path) == ["story.plan.json"]


# --- --plot on generate and render ----------------------------------------------------------------------------


def test_render_plot_draws_the_story_over_the_audio_it_wrote(run, tiny_decoder, tmp_path):
    plan = write_plan(tmp_path, 3, 4.0, name="hand.json")
    out = tmp_path / "story.wav"
    result = run("render", plan, "-o", out, "--decoder", tiny_decoder, "--steps", "1", "--device", "cpu", "--plot")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)  # stdout stays the audio path
    assert f"wrote {tmp_path / 'story.png'}" in " ".join(result.stderr.split())
    assert "plan alone" not in result.stderr
    assert (tmp_path / "story.png").read_bytes()[:8] == PNG_MAGIC
    assert _files(tmp_path) == ["hand.json", "story.latents.safetensors", "story.plan.json", "story.png", "story.wav"]


def test_generate_plot_and_dry_run_plot(run, tiny_planner, tiny_decoder, tmp_path):
    models = ["--planner", tiny_planner, "--decoder", tiny_decoder, "--steps", "1", "--device", "cpu"]
    prompt = "rain on a tin roof, then thunder"
    result = run("generate", prompt, "-o", tmp_path / "s.wav", "--duration", "3", "--plot", *models)
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) == ["s.latents.safetensors", "s.plan.json", "s.png", "s.wav"]
    # with --dry-run: the plan alone, beside -o, and no audio or plan file
    dry = tmp_path / "dry"
    dry.mkdir()
    result = run("generate", prompt, "--dry-run", "-o", dry / "d.wav", "--duration", "3", "--plot", *models)
    assert result.exit_code == 0, result.output
    assert "(the plan alone)" in result.stderr and _files(dry) == ["d.png"]
    result = run("generate", prompt, "--dry-run", "--plot", *models)
    assert result.exit_code == 2 and "--plot needs -o" in " ".join(result.stderr.split())


def test_example_plan_draws(run, tmp_path):
    out = tmp_path / "example.svg"
    assert run("plot", "examples/plan.json", "-o", out).exit_code == 0
    plan = load_plan("examples/plan.json")
    texts = svg_texts(out)
    assert all(texts[f"event-{e.index}-key"].startswith(e.caption) for e in plan.events)
