"""Editing a rendered story, on every decoder backend (contract style): ``edit --event/--vary/--inpaint``,
``extend`` and ``--continue-from``. What a user would check: the samples outside the change are the old file's,
the joins have no click, ``render`` of the edited plan gives the same file, a failed edit leaves the old story."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from audiostory_cli import audio_io, mix
from audiostory_cli.editing import EventEdit, Extend, Inpaint, Vary, apply_edit, load_story
from audiostory_cli.editing.latents import latents_path_for
from audiostory_cli.errors import InputError, PlanError
from audiostory_cli.pipeline import render_to_file
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import Event, Plan, load_plan, plan_from_dict, plan_to_dict

CPU = torch.device("cpu")
EVENT_S = 2.0  # six events of 2 s: a 12 s story
CAPTIONS = ("rain on a tin roof", "a dog barks twice", "waves break on pebbles", "a ship's bell rings",
            "gulls cry over the harbor", "wind in the rigging")  # fmt: skip


@dataclass(frozen=True)
class Backend:
    name: str
    fixture: str
    audiostory: bool = False  # the AudioStory checkpoint: its own decoder and conditioner


BACKENDS = [
    Backend("tangoflux", "tiny_decoder"),
    Backend("stable-audio-3", "tiny_sa3"),
    Backend("stable-audio-3-small", "tiny_sa3_small"),
    Backend("audiostory", "tiny_audiostory_model", audiostory=True),
]


@pytest.fixture(scope="module", params=BACKENDS, ids=lambda b: b.name)
def models(request):
    from audiostory_cli.registry import load_models

    backend = request.param
    folder = str(request.getfixturevalue(backend.fixture))
    options = RenderOptions(model=folder) if backend.audiostory else RenderOptions(decoder=folder)
    loaded = load_models(options, device=CPU, dtype=torch.float32, need_planner=backend.audiostory)
    return backend, options, loaded


def six_events(total_events: int = 6) -> Plan:
    events = tuple(Event(i, CAPTIONS[i % len(CAPTIONS)], i * EVENT_S, EVENT_S) for i in range(total_events))
    return Plan(prompt="a harbor through a storm", total_s=total_events * EVENT_S, events=events)


@pytest.fixture(scope="module")
def story(models, tmp_path_factory):
    """A rendered 6-event story: (its folder, the plan path, its samples)."""
    _, options, loaded = models
    folder = tmp_path_factory.mktemp("story")
    options = replace(options, steps=4, crossfade_s=0.3, seed=11)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test runs (conftest): float sums depend on the thread count
    try:
        result = render_to_file(loaded.decoder, six_events(), options, loaded.conditioner, folder / "story.wav")
    finally:
        torch.set_num_threads(threads)
    return folder, result.plan_path, audio_io.read_audio(result.audio_path)[0]


def _samples(path: Path) -> np.ndarray:
    return audio_io.read_audio(path)[0]


def _span(plan: Plan, index: int, sample_rate: int) -> tuple[int, int]:
    return mix.event_spans(plan, sample_rate)[index]


def _no_click(wave: np.ndarray, at: int, sample_rate: int) -> None:
    """The largest step between samples near ``at`` is no bigger than the story's usual largest ones."""
    steps = np.abs(np.diff(wave, axis=1)).max(axis=0)
    near = steps[max(0, at - sample_rate // 10) : at + sample_rate // 10]
    assert near.max() <= 3 * np.quantile(steps, 0.999) + 1e-6


def _replayed(models, plan_path: Path, out: Path) -> np.ndarray:
    """``render`` of a plan from nothing (no latents beside the new output), as the CLI does."""
    _, _, loaded = models
    plan = load_plan(plan_path)
    render_to_file(loaded.decoder, plan, plan.render, loaded.conditioner, out)
    return _samples(out)


def test_a_render_saves_every_clips_latents_beside_the_pair(story):
    folder, plan_path, _ = story
    loaded = load_story(plan_path)
    assert latents_path_for(plan_path).is_file() and loaded.state is not None, loaded.why_not
    assert sorted(loaded.state.latents) == list(range(6))
    assert latents_path_for(plan_path).stat().st_size < 2_000_000


def test_reroll_one_event_changes_only_its_span_and_joins_and_replays(models, story, tmp_path):
    _, _, loaded = models
    _, plan_path, old = story
    before = load_story(plan_path)
    result = apply_edit(loaded.decoder, loaded.conditioner, before, EventEdit(event=2, seed=4242), tmp_path / "e.wav")
    new = _samples(result.audio_path)
    sr = loaded.decoder.caps.sample_rate
    start2, _ = _span(before.plan, 2, sr)
    start4, _ = _span(before.plan, 4, sr)
    assert new.shape == old.shape
    assert np.array_equal(new[:, :start2], old[:, :start2])  # everything before event 3 (numbered from 1)
    assert np.array_equal(new[:, start4:], old[:, start4:])  # everything from event 5 on
    assert not np.allclose(new[:, start2 : start2 + sr], old[:, start2 : start2 + sr])
    for join in (start2, _span(before.plan, 3, sr)[0]):
        _no_click(new, join, sr)
    plan = load_plan(result.plan_path)
    assert plan.events[2].seed == 4242 and plan.history.edits == (EventEdit(event=2, seed=4242),)
    assert np.array_equal(_replayed(models, result.plan_path, tmp_path / "replay.wav"), new)


def test_caption_and_duration_edit_moves_what_follows_unchanged(models, story, tmp_path):
    _, _, loaded = models
    _, plan_path, old = story
    before = load_story(plan_path)
    sr, hop = loaded.decoder.caps.sample_rate, loaded.decoder.caps.hop_samples
    edit = EventEdit(event=1, caption="a foghorn sounds", duration_s=EVENT_S + 0.5)
    result = apply_edit(loaded.decoder, loaded.conditioner, before, edit, tmp_path / "d.wav")
    new, plan = _samples(result.audio_path), load_plan(result.plan_path)
    delta = new.shape[1] - old.shape[1]
    assert delta > 0 and delta % hop == 0  # whole latent frames: what follows keeps its grid
    assert plan.events[1].caption == "a foghorn sounds"
    assert plan.total_s == pytest.approx(before.plan.total_s + delta / sr)
    start1 = _span(before.plan, 1, sr)[0]
    start3_old = _span(before.plan, 3, sr)[0]
    assert np.array_equal(new[:, :start1], old[:, :start1])
    assert np.array_equal(new[:, start3_old + delta :], old[:, start3_old:])  # event 4 on: the old samples, moved
    assert np.array_equal(_replayed(models, result.plan_path, tmp_path / "replay.wav"), new)


def test_a_duration_edit_stretches_a_bed_under_it(models, tmp_path):
    _, options, loaded = models
    sr, hop = loaded.decoder.caps.sample_rate, loaded.decoder.caps.hop_samples
    plan = six_events(4)
    plan = replace(plan, events=plan.events + (Event(4, "low steady sea ambience", 0.0, plan.total_s, layer=1),))
    options = replace(options, steps=2, crossfade_s=0.3, seed=2)
    story = render_to_file(loaded.decoder, plan, options, loaded.conditioner, tmp_path / "s.wav")
    old = _samples(story.audio_path)
    edit = EventEdit(event=1, duration_s=EVENT_S + 0.6)
    result = apply_edit(loaded.decoder, loaded.conditioner, load_story(story.plan_path), edit, tmp_path / "d.wav")
    new, edited = _samples(result.audio_path), load_plan(result.plan_path)
    delta = new.shape[1] - old.shape[1]
    assert delta > 0 and edited.events[4].duration_s == pytest.approx(edited.total_s)  # the bed still spans it all
    start1, start3 = _span(plan, 1, sr)[0], _span(plan, 3, sr)[0]
    assert np.array_equal(new[:, :start1], old[:, :start1])
    assert np.array_equal(new[:, start3 + delta + sr :], old[:, start3 + sr :])  # the last event, moved, bed too
    assert np.array_equal(_replayed(models, result.plan_path, tmp_path / "replay.wav"), new)


def test_vary_keeps_the_rest_and_depends_on_strength(models, story, tmp_path):
    _, _, loaded = models
    _, plan_path, old = story
    before = load_story(plan_path)
    sr = loaded.decoder.caps.sample_rate
    start3, _ = _span(before.plan, 3, sr)
    start5, _ = _span(before.plan, 5, sr)
    waves, latents = {}, {}
    for strength in (0.3, 1.0):
        result = apply_edit(loaded.decoder, loaded.conditioner, before, Vary(event=3, strength=strength, seed=9),
                            tmp_path / f"v{strength}.wav")  # fmt: skip
        waves[strength] = _samples(result.audio_path)
        latents[strength] = load_story(result.plan_path).state.latents[3]
        assert np.array_equal(waves[strength][:, :start3], old[:, :start3])
        assert np.array_equal(waves[strength][:, start5:], old[:, start5:])
    known = before.state.latents[3]
    near, far = (np.linalg.norm(latents[s] - known) for s in (0.3, 1.0))
    assert 0 < near < far  # a light variation stays closer to the original than a new clip
    assert np.array_equal(_replayed(models, result.plan_path, tmp_path / "replay.wav"), waves[1.0])


def test_inpaint_changes_only_the_range_and_replays(models, story, tmp_path):
    _, _, loaded = models
    _, plan_path, old = story
    before = load_story(plan_path)
    sr = loaded.decoder.caps.sample_rate
    result = apply_edit(loaded.decoder, loaded.conditioner, before, Inpaint(5.0, 6.5, caption="thunder", seed=3),
                        tmp_path / "i.wav")  # fmt: skip
    new = _samples(result.audio_path)
    # Outside the range and the frames and decoder context around it, nothing moved.
    margin = 2 * sr
    assert np.array_equal(new[:, : 5 * sr - margin], old[:, : 5 * sr - margin])
    assert np.array_equal(new[:, int(6.5 * sr) + margin :], old[:, int(6.5 * sr) + margin :])
    assert not np.array_equal(new[:, 5 * sr : int(6.5 * sr)], old[:, 5 * sr : int(6.5 * sr)])
    assert np.array_equal(_replayed(models, result.plan_path, tmp_path / "replay.wav"), new)


def test_extend_keeps_the_old_part_to_the_sample(models, story, tmp_path):
    _, _, loaded = models
    _, plan_path, old = story
    before = load_story(plan_path)
    added = (Event(6, "the gulls return", 12.0, 2.0), Event(7, "a calm sea", 14.0, 2.0))
    result = apply_edit(loaded.decoder, loaded.conditioner, before, Extend("then calm", added, 16.0),
                        tmp_path / "x.wav")  # fmt: skip
    new = _samples(result.audio_path)
    sr = loaded.decoder.caps.sample_rate
    assert new.shape[1] == 16 * sr
    assert np.array_equal(new[:, : old.shape[1]], old)
    _no_click(new, old.shape[1], sr)
    assert np.array_equal(_replayed(models, result.plan_path, tmp_path / "replay.wav"), new)


def test_continue_from_a_recording(models, tmp_path):
    from audiostory_cli.editing.continuation import continue_from

    _, options, loaded = models
    sr = loaded.decoder.caps.sample_rate
    t = np.arange(3 * 22050) / 22050
    recording = (0.3 * np.sin(2 * np.pi * 330 * t))[None].astype(np.float32)  # mono, another rate
    audio_io.write_audio(tmp_path / "in.wav", recording, 22050)
    options = replace(options, steps=2, crossfade_s=0.3, seed=5)
    for include in (True, False):
        plan = replace(six_events(3), continue_from=continue_from(tmp_path / "in.wav", include))
        out = tmp_path / f"c{include}.wav"
        result = render_to_file(loaded.decoder, plan, options, loaded.conditioner, out)
        wave = _samples(out)
        fade = round(0.3 * sr)
        lead = 3 * sr - fade if include else 0
        assert wave.shape == (2, lead + 6 * sr)
        if include:  # the recording itself, resampled, comes first, at the story's gain (the tiny decoder is loud)
            expected = audio_io.resample(recording, 22050, sr) * load_story(result.plan_path).state.gain
            assert np.allclose(wave[0, : lead - 100], expected[0, : lead - 100], atol=2e-4)
        assert np.array_equal(_replayed(models, result.plan_path, tmp_path / f"r{include}.wav"), wave)


# --- no models needed ------------------------------------------------------------------------------------


def test_history_must_match_the_events():
    plan = six_events()
    edited = replace(plan, events=tuple(replace(e, seed=7) if e.index == 2 else e for e in plan.events))
    from audiostory_cli.editing.records import History

    data = plan_to_dict(replace(edited, history=History(plan.events, plan.total_s, (EventEdit(2, seed=7),))))
    assert plan_from_dict(json.loads(json.dumps(data))).history.edits == (EventEdit(2, seed=7),)
    data["events"][2]["caption"] = "changed by hand"
    with pytest.raises(PlanError, match="changed by hand"):
        plan_from_dict(data)


def test_version_1_plans_still_load_and_per_event_seeds_need_version_2():
    data = plan_to_dict(six_events())
    data["schema_version"] = 1
    assert plan_from_dict(data).events[0].seed is None
    data["events"][0]["seed"] = 5
    with pytest.raises(PlanError, match="seed"):
        plan_from_dict(data)
    data["schema_version"] = 2
    assert plan_from_dict(data).events[0].seed == 5


@pytest.mark.parametrize(
    "change, message",
    [
        (EventEdit(event=6, seed=1), "event 6: the story has events 0 to 5"),
        (EventEdit(event=1), "nothing to change"),
        (Vary(event=1, strength=0.0), "strength"),
        (Vary(event=1, strength=1.5), "strength"),
        (Inpaint(5.0, 4.0), "START:END"),
        (Inpaint(5.0, 99.0), "START:END"),
    ],
)
def test_bad_changes_are_refused_by_name(change, message):
    from audiostory_cli.editing.records import check_event_edit, check_event_number, check_inpaint, check_strength

    plan = six_events()
    with pytest.raises(InputError, match=message):
        if isinstance(change, Inpaint):
            check_inpaint(change, plan.total_s)
        elif isinstance(change, Vary):
            check_event_number(change.event, plan.events)
            check_strength(change.strength)
        else:
            check_event_edit(change, plan.events, plan.total_s)


def test_splice_keeps_untouched_samples_and_ramps_a_loud_range():
    from audiostory_cli.editing.splice import Shift, splice

    rng = np.random.default_rng(0)
    old = (0.1 * rng.standard_normal((2, 1000))).astype(np.float32)
    loud = np.full((2, 100), 3.0, dtype=np.float32)
    placed = {0: (400, np.ones(100))}
    new = splice(old, 1000, [(400, 500)], placed, {0: loud}, gain=1.0, peak_dbfs=-1.0, sample_rate=1000)
    assert np.array_equal(new[:, :400], old[:, :400]) and np.array_equal(new[:, 500:], old[:, 500:])
    assert np.abs(new).max() <= 10 ** (-1 / 20) + 1e-6
    moved = splice(old, 1100, [(400, 600)], {0: (400, np.ones(200))}, {0: np.zeros((2, 200), np.float32)},
                   gain=1.0, peak_dbfs=-1.0, sample_rate=1000, shift=Shift(at=600, delta=100))  # fmt: skip
    assert np.array_equal(moved[:, 600:], old[:, 500:])


def test_a_latents_file_of_another_plan_is_not_used(story, tmp_path):
    folder, plan_path, _ = story
    copy = tmp_path / "story.plan.json"
    copy.write_text(plan_path.read_text().replace('"reasoning": ""', '"reasoning": "edited"'))
    for name in ("story.wav", "story.latents.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    loaded = load_story(copy)
    assert loaded.state is None and "another version of the plan" in loaded.why_not


def test_a_killed_edit_leaves_the_old_story_and_no_new_files(models, story, tmp_path, monkeypatch):
    _, _, loaded = models
    folder, plan_path, _ = story
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    from audiostory_cli.editing import operations

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(operations, "splice", killed)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        apply_edit(loaded.decoder, loaded.conditioner, load_story(plan_path), EventEdit(1, seed=3), out / "k.wav")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert list(out.iterdir()) == []
