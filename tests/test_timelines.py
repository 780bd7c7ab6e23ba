"""Timeline files (SRT, WebVTT, JSON and CSV shot lists) -> cues, and every bad file -> one InputError naming
its line; the slots planner keeps every cue's times exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiostory_cli.errors import InputError, PlanError
from audiostory_cli.inputs import timelines
from audiostory_cli.inputs.timelines import is_timeline_file, parse_timeline, read_timeline
from audiostory_cli.planners.slots import SlotRequest, slot_plan, slot_plan_from_answer, slot_schema

SRT = """\
1
00:00:00,000 --> 00:00:02,500
Tom chases <i>Jerry</i> across the kitchen

2
00:00:02,500 --> 00:00:04,000
Plates fall
from a shelf

3
00:00:05,000 --> 00:00:07,250
Jerry hides in a hole
"""

VTT = """\
WEBVTT

NOTE made by hand

intro
00:00.000 --> 00:02.500 align:start
Tom chases <b>Jerry</b>

00:00:02.500 --> 00:00:04.000
Plates fall
"""


def test_srt_cues_keep_times_and_text_without_markup():
    timeline = parse_timeline(SRT, "srt", source="cues.srt")
    assert [(c.start_s, c.end_s) for c in timeline.cues] == [(0.0, 2.5), (2.5, 4.0), (5.0, 7.25)]
    assert [c.text for c in timeline.cues] == ["Tom chases Jerry across the kitchen", "Plates fall from a shelf",
                                              "Jerry hides in a hole"]  # fmt: skip
    assert [c.line for c in timeline.cues] == [2, 6, 11]
    assert timeline.end_s == 7.25


def test_webvtt_cues_with_identifiers_notes_and_settings():
    timeline = parse_timeline(VTT, "vtt", source="cues.vtt")
    assert [(c.start_s, c.end_s, c.text) for c in timeline.cues] == [(0.0, 2.5, "Tom chases Jerry"),
                                                                    (2.5, 4.0, "Plates fall")]  # fmt: skip
    assert [c.line for c in timeline.cues] == [6, 9]


def test_json_and_csv_shot_lists(tmp_path):
    shots = [{"start": 0, "end": "00:00:02.500", "description": "a cat sneaks"},
             {"start_s": "0:02.5", "end_s": 6, "text": "a mouse runs"}]  # fmt: skip
    (tmp_path / "shots.json").write_text(json.dumps(shots, indent=2))
    (tmp_path / "shots.csv").write_text('start,end,description\n0,2.5,a cat sneaks\n2.5,6,"a mouse runs, fast"\n')
    from_json = read_timeline(tmp_path / "shots.json")
    from_csv = read_timeline(tmp_path / "shots.csv")
    assert [(c.start_s, c.end_s, c.text) for c in from_json.cues] == [(0, 2.5, "a cat sneaks"), (2.5, 6, "a mouse runs")]
    assert [(c.start_s, c.end_s, c.text, c.line) for c in from_csv.cues] == [
        (0, 2.5, "a cat sneaks", 2), (2.5, 6, "a mouse runs, fast", 3)]  # fmt: skip
    assert [c.line for c in from_json.cues] == [2, 7]
    assert is_timeline_file(tmp_path / "shots.json") and is_timeline_file(tmp_path / "shots.csv")


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("srt", SRT.replace("00:00:02,500 --> 00:00:04,000", "00:00:0x,500 --> 00:00:04,000"), "cues.x line 5: not an SRT cue"),
        ("srt", SRT.replace("00:00:05,000 --> 00:00:07,250", "00:00:08,000 --> 00:00:07,250"), "line 11: cue 3 ends at 00:00:07.250, not after"),
        ("srt", SRT.replace("00:00:05,000", "00:00:03,000"), "line 11: cue 3 starts at 00:00:03.000, before cue 2 (line 6) ends at 00:00:04.000"),
        ("srt", "1\n00:00:01,000 --> 00:00:02,000\n<i></i>\n", "line 2: cue 1 has no text"),
        ("srt", "", "holds no cues"),
        ("vtt", VTT.replace("00:00:02.500 --> 00:00:04.000", "00:00:0x.500 --> 00:00:04.000"), "cues.x line 9: not a WebVTT cue"),
        ("vtt", "hello\n", "line 1: not a WebVTT file"),
        ("json", '[\n {"start": 0, "end": 1, "description": "a"},\n {"start": 2, "end": 1, "description": "b"}\n]',
         "cues.x line 3: cue 2 ends at 00:00:01.000, not after"),
        ("json", '[{"start": 0, "end": 1, "description": "a",}]', "line 1: not valid JSON"),
        ("json", '[\n {"start": 0, "end": "soon", "description": "a"}]', "line 2 (shot 1): end = \"soon\""),
        ("json", '[{"start": 0, "end": 1, "descr": "a"}]', "unknown field 'descr'"),
        ("csv", "start,end\n0,1\n", "line 1: the header row must name the columns start, end and description"),
        ("csv", "start,end,description\n0,1,a\n1,x,b\n", "cues.x line 3: end = \"x\""),
        ("csv", "start,end,description\n0,1,a\n1,2\n", "line 3: 2 columns, the header has 3"),
        ("csv", "start,end,description\n0,1e308,a\n", "cues.x line 2: cue 1 ends at 1e+308 s: a story lasts at most 600 s"),
        ("csv", "start,end,description\n0,0.0004,a\n", "cues.x line 2: cue 1 lasts 0.0004 s: a cue lasts at least 1 ms"),
        ("csv", "start,end,description\n3,-1.5,a\n", "cue 1 ends at -00:00:01.500, not after it starts (00:00:03.000)"),
        ("vtt", "WEBVTT\n\n00:00.000 --> 00:02.000\nhello\n\n99:99.000 --> 00:03.000\nbad\n", "cues.x line 6: not a WebVTT cue"),
    ],
)  # fmt: skip
def test_bad_timelines_name_the_line(kind, text, message):
    with pytest.raises(InputError) as caught:
        parse_timeline(text, kind, source="cues.x")
    assert message in str(caught.value)


def test_a_file_too_big_for_a_timeline_is_refused_without_being_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(timelines, "MAX_TIMELINE_BYTES", len(SRT) - 1)
    (tmp_path / "cues.srt").write_text(SRT)
    with pytest.raises(InputError, match="has more than .* MiB: not a timeline"):
        read_timeline(tmp_path / "cues.srt")
    (tmp_path / "shots.json").write_text('[{"start": 0, "end": 1, "description": "' + "x" * len(SRT) + '"}]')
    assert not is_timeline_file(tmp_path / "shots.json")  # left to the plan reader, which names the size
    (tmp_path / "cues.vtt").mkdir()
    with pytest.raises(InputError, match="cues.vtt is a folder"):
        read_timeline(tmp_path / "cues.vtt")


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="timeline file not found"):
        read_timeline(tmp_path / "missing.srt")
    (tmp_path / "latin.srt").write_bytes(SRT.replace("Tom", "T\xf6m").encode("latin-1"))
    with pytest.raises(InputError, match="latin.srt line 3: not UTF-8"):
        read_timeline(tmp_path / "latin.srt")
    (tmp_path / "cues.txt").write_text(SRT)
    with pytest.raises(InputError, match="unknown extension"):
        read_timeline(tmp_path / "cues.txt")


@pytest.mark.parametrize("kind", ["srt", "vtt", "json", "csv"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), st.sampled_from([SRT, VTT]).flatmap(
    lambda base: st.integers(0, len(base)).flatmap(lambda cut: st.just(base[:cut])))))  # fmt: skip
def test_any_text_is_cues_or_one_input_error(kind, text):
    """Arbitrary text (and every prefix of a good file) parses to checked cues or raises InputError, nothing else."""
    try:
        timeline = parse_timeline(text, kind)
    except InputError as err:
        assert "\n" not in str(err)
        return
    assert timeline.cues
    for before, after in zip(timeline.cues, timeline.cues[1:]):
        assert before.end_s <= after.start_s + 0.0005
    assert all(c.end_s > c.start_s >= 0 and c.text.strip() for c in timeline.cues)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.floats(0, 600), st.floats()), st.floats(), st.text(max_size=20)),
                     min_size=1, max_size=4))  # fmt: skip
def test_any_numbers_in_a_shot_list_are_cues_or_one_input_error(rows):
    """Any float as a start or end (1e308, -0.0, inf, nan), in a CSV and a JSON shot list: cues or one line."""
    csv_text = "start,end,description\n" + "".join(f"{a!r},{b!r},{json.dumps(t)}\n" for a, b, t in rows)
    json_text = json.dumps([{"start": a, "end": b, "description": t} for a, b, t in rows])
    for kind, text in (("csv", csv_text), ("json", json_text)):
        try:
            timeline = parse_timeline(text, kind)
        except InputError as err:
            assert "\n" not in str(err)
            continue
        assert all(600 >= c.end_s > c.start_s >= 0 for c in timeline.cues)


# --- the slots planner's plan -----------------------------------------------------------------------------


def _request(gaps="silence", max_event_s=None):
    cues = parse_timeline(SRT, "srt").cues
    return SlotRequest(slots=cues, total_s=8.0, prompt="a cartoon", gaps=gaps, max_event_s=max_event_s)


def test_slot_plan_keeps_every_cue_time_and_puts_the_bed_under_runs_of_cues():
    request = _request(max_event_s=3.0)
    answer = json.dumps({"reasoning": "r", "tone": "playful", "events": {
        "1": {"caption": "fast footsteps on tiles", "tone": "frantic"}, "2": {"caption": "plates crash", "tone": "chaotic"},
        "3": {"caption": "a tiny door squeaks", "tone": "quiet"}}, "setting": "a kitchen", "background_sound": "a fridge hums"})
    plan = slot_plan_from_answer(answer, request)
    foreground = plan.foreground()
    assert [(e.start_s, e.end_s, e.caption) for e in foreground] == [
        (0.0, 2.5, "fast footsteps on tiles"), (2.5, 4.0, "plates crash"), (5.0, 7.25, "a tiny door squeaks")]
    beds = [(e.start_s, round(e.end_s, 6)) for e in plan.events if e.layer == 1]
    assert beds == [(0.0, 2.0), (2.0, 4.0), (5.0, 7.25)]  # under 0-4 (two clips of <= 3 s) and 5-7.25, not the gap
    assert plan.total_s == 8.0 and plan.prompt == "a cartoon"


def test_gaps_bed_runs_under_the_whole_video_and_needs_a_background():
    request = _request(gaps="bed")
    events = {str(i): {"caption": "footsteps patter", "tone": "calm"} for i in (1, 2, 3)}
    plan = slot_plan_from_answer(json.dumps({"reasoning": "", "tone": "calm", "events": events, "setting": "a room",
                                             "background_sound": "rain taps on glass"}), request)  # fmt: skip
    assert [(e.start_s, e.end_s) for e in plan.events if e.layer == 1] == [(0.0, 8.0)]
    assert slot_schema(request)["properties"]["background_sound"]["pattern"].startswith("^[A-Za-z]")
    with pytest.raises(PlanError, match="--gaps bed needs a background"):
        slot_plan_from_answer(json.dumps({"reasoning": "", "tone": "", "events": events, "setting": "a",
                                          "background_sound": ""}), request)  # fmt: skip


def test_slot_answer_with_the_wrong_number_of_events_is_refused():
    with pytest.raises(PlanError, match="exactly 3 entries"):
        slot_plan_from_answer('{"events": {"1": {"caption": "a b c", "tone": ""}}}', _request())
    listed = {"events": [{"caption": f"sound {i}", "tone": ""} for i in range(3)]}  # a server that ignored the schema
    assert [e.caption for e in slot_plan_from_answer(json.dumps(listed), _request()).foreground()] == [
        "sound 0", "sound 1", "sound 2"]


def test_cues_of_one_millisecond_make_a_plan():
    """64 cues of 1 ms each: 0.009 - 0.008 is 0.00099999... in floats, and the plan refused it as shorter than
    its 1 ms minimum ("duration_s = 0.001: must be > 0 (at least 0.001 s)")."""
    text = "start,end,description\n" + "".join(f"{i / 1000:.3f},{(i + 1) / 1000:.3f},a tick\n" for i in range(64))
    cues = parse_timeline(text, "csv").cues
    plan = slot_plan(SlotRequest(slots=cues, total_s=0.064, prompt="ticks"), [c.text for c in cues])
    assert [(e.start_s, e.end_s) for e in plan.events] == [(c.start_s, c.end_s) for c in cues]
    assert len(plan.events) == 64 and all(abs(e.duration_s - 0.001) < 1e-9 for e in plan.events)


def test_verbatim_slot_plan_and_cues_past_the_end():
    request = _request()
    plan = slot_plan(request, [c.text for c in request.slots])
    assert [e.caption for e in plan.events] == [c.text for c in request.slots]
    with pytest.raises(InputError, match="after the end of the story"):
        SlotRequest(slots=request.slots, total_s=7.0)
    timeline = parse_timeline(SRT, "srt", source="cues.srt")
    with pytest.raises(InputError, match="cues.srt line 11: cue 3 ends at 00:00:07.250, after the end of clip.mp4"):
        timeline.check_within(7.0, "clip.mp4")
