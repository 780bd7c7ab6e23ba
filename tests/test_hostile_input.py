"""Hostile input to the readers of user files: plan files, prompts files, the batch loop.

Property-based (hypothesis) over any JSON-ish value, mutations of a valid plan and arbitrary bytes: a reader
returns a valid result or raises an ``AudiostoryError`` (the CLI's one line), never anything else. The CLI
checks run the real command on files that fail before any model loads (asserted: a model load fails the test),
so they stay fast; the batch checks with a good line among bad ones use the tiny models.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from audiostory_cli import audio_io
from audiostory_cli.batch import local
from audiostory_cli.batch.local import BatchSettings, make_tasks
from audiostory_cli.batch.manifest import read_manifest
from audiostory_cli.batch.prompts import BatchItem, read_prompts_file
from audiostory_cli.cli import app
from audiostory_cli.errors import AudiostoryError, InputError, PlanError
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import (
    MAX_SEED,
    Event,
    Plan,
    check_prompt,
    check_seed,
    check_total_s,
    load_plan,
    plan_from_dict,
    plan_to_dict,
    plan_to_json,
    round_times,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HUGE = [10**400, -(10**400), 2**64, -(2**63), MAX_SEED + 1]
ODD_TEXT = ["", " ", "\x00", "\ud800", "\udcff", "\u2028", "\ufeff", "é", "🐚", "a" * 3000, "\t\n"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.sampled_from(ODD_TEXT),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


deep = st.integers(0, 400).map(_nested)  # deeper than a plan may nest; 100,000 deep: see the tests below
#  (hypothesis pretty-prints its examples recursively, so the deepest values are plain parametrized cases)

VALID = {
    "schema_version": 1,
    "prompt": "rain then sun",
    "total_s": 10.0,
    "events": [
        {"index": 0, "caption": "rain on a roof", "start_s": 0.0, "duration_s": 6.0},
        {"index": 1, "caption": "birds sing", "start_s": 6.0, "duration_s": 4.0, "tone": "bright"},
        {"index": 2, "caption": "wind", "start_s": 0.0, "duration_s": 10.0, "layer": 1},
    ],
    "render": RenderOptions(seed=3, steps=2).to_dict(),
    "request": {"prompt": "rain then sun", "seed": 3, "render": {"steps": 2}},
}
# every place a mutation may hit: (container path, key)
PLACES = [((), k) for k in (*VALID, "extra")] + [
    (("events", i), k) for i in range(3) for k in ("index", "caption", "start_s", "duration_s", "tone", "layer", "x")
] + [(("render",), k) for k in (*VALID["render"], "x")] + [(("request",), k) for k in ("seed", "render")]  # fmt: skip


@st.composite
def mutated_plans(draw):
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        path, key = draw(st.sampled_from(PLACES))
        target = data
        for step in path:
            if isinstance(target, dict) and isinstance(step, str):
                target = target.get(step)
            elif isinstance(target, list) and isinstance(step, int) and step < len(target):
                target = target[step]
            else:
                target = None
        if not isinstance(target, dict):
            continue
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(st.one_of(json_values, deep))
    return data


def _accepts_or_refuses(data):
    """``plan_from_dict(data)``: a Plan that is valid and round-trips exactly, or an AudiostoryError."""
    try:
        plan = plan_from_dict(data)
    except AudiostoryError:
        return None
    assert isinstance(plan, Plan)
    assert 0 < plan.total_s <= 600 and 1 <= len(plan.events) <= 64
    text = plan_to_json(plan)  # writes (UTF-8, no NaN) ...
    text.encode("utf-8")
    assert plan_from_dict(json.loads(text)) == plan  # ... and reads back the same floats: same samples
    assert round_times(plan_from_dict(plan_to_dict(round_times(plan)))) == round_times(plan)
    return plan


# --- the plan reader ----------------------------------------------------------------------------------------


@FAST
@given(json_values)
@example({"total_s": 10**400, "events": []})
@example({**VALID, "total_s": float("nan")})
@example({**VALID, "total_s": True})
@example({**VALID, "schema_version": True})
@example({**VALID, "request": {"a": 10**5000}})
@example({**VALID, "events": [{"caption": "x", "start_s": 0, "duration_s": 10, "layer": 10**5000}]})
@example({**VALID, "render": {"seed": 1, "guidance": 10**400}})
@example({**VALID, "render": {"seed": 1, "decoder": "\x00"}})
@example({**VALID, "prompt": "\ud800"})
def test_plan_from_any_value_is_a_valid_plan_or_one_error(value):
    _accepts_or_refuses(value)


@FAST
@given(mutated_plans())
def test_plan_from_a_mutated_plan_is_a_valid_plan_or_one_error(data):
    _accepts_or_refuses(data)


@pytest.mark.parametrize("where", ["top", "request", "render", "event"])
def test_plan_from_a_value_nested_100000_deep_is_one_error(where):
    deepest = _nested(100_000)
    data = {
        "top": deepest,
        "request": {**VALID, "request": {"a": deepest}},
        "render": {**VALID, "render": {"seed": 1, "decoder": deepest}},
        "event": {**VALID, "events": [{"caption": deepest, "start_s": 0, "duration_s": 1}]},
    }[where]
    with pytest.raises(PlanError):
        plan_from_dict(data)


@FAST
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass"))))
@example(b"")
@example(b"\xef\xbb\xbf" + json.dumps(VALID).encode())
@example(json.dumps(VALID).replace("\n", "\r\n").encode())
@example(b'{"total_s": 1' + b"0" * 5000 + b"}")
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b'{"total_s": NaN}')
@example(b'{"prompt": "caf\xe9"}')
def test_load_plan_of_any_bytes_is_a_plan_or_one_error(tmp_path, raw):
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    try:
        plan = load_plan(path)
    except AudiostoryError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    assert plan_from_dict(json.loads(plan_to_json(plan))) == plan


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"total_s": 1' + "0" * 400 + "}", "total_s = 100000000000... (401 digits): must be a number > 0 and <= 600"),
        ('{"total_s": 1' + "0" * 5000 + "}", "a number has more than 4300 digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"total_s": NaN}', "total_s = NaN: must be a number > 0 and <= 600"),
        ('{"total_s": -Infinity}', "total_s = -Infinity: must be a number"),
        ('{"total_s": true}', "total_s = true: must be a number"),
        ("", "the file is empty"),
        ("[]", "the plan must be a JSON object, got an array"),
        ('"plan"', "the plan must be a JSON object, got a string"),
        ('{"schema_version": true}', "schema_version = true"),
        ('{"total_s": 5, "events": [{"caption": "a\\ud800", "start_s": 0, "duration_s": 5}]}', "events[0].caption"),
        # an event of 0 samples crashed the decoder (a conv1d kernel larger than its input) after the model loaded
        ('{"total_s": 0.00001, "events": [{"caption": "a", "start_s": 0, "duration_s": 0.00001}]}',
         "events[0].duration_s = 1e-05: must be > 0 (at least 0.001 s)"),
        ('{"total_s": 5, "events": [{"caption": "a", "start_s": 0, "duration_s": 5}], "render": {"seed": 1, '
         '"decoder": "' + "a" * 300 + '"}}', "a name in it is longer than a file system allows (255 bytes)"),
        ('{"total_s": 5, "events": [{"caption": "a", "start_s": 0, "duration_s": 5}], "render": {"seed": 1, '
         '"steps": 1' + "0" * 400 + "}}", "render.steps = 100000000000... (401 digits): must be an integer between 1"),
    ],
)  # fmt: skip
def test_hostile_plan_files_name_the_field_and_range(tmp_path, text, message):
    path = tmp_path / "plan.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert message in str(err.value)


def test_a_folder_or_non_utf8_file_as_the_plan_is_one_error(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        load_plan(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'{\n"prompt": "caf\xe9"}')
    with pytest.raises(PlanError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_plan(tmp_path / "latin1.json")


# --- times in whole milliseconds ------------------------------------------------------------------------------


def test_times_are_whole_milliseconds_and_sums_stay_exact():
    # what the planner's timeline makes: the last event ends at total_s exactly in floats
    noisy = Plan("p", 7.3, (Event(0, "a", 0.0, 6.157), Event(1, "b", 6.157, 7.3 - 6.157), Event(2, "bed", 0.0, 7.3, layer=1)))
    assert noisy.events[1].duration_s == 1.1429999999999998
    plan = round_times(noisy)
    assert [(e.start_s, e.duration_s) for e in plan.events] == [(0.0, 6.157), (6.157, 1.143), (0.0, 7.3)]
    assert '"duration_s": 1.143,' in plan_to_json(plan)
    assert plan_from_dict(json.loads(plan_to_json(plan))) == plan  # what renders is what the file says
    # a plan read from a file is never rounded: one written before keeps its floats, so its samples
    assert plan_from_dict(json.loads(plan_to_json(noisy))) == noisy
    # sub-millisecond times a person wrote are kept as they are
    fine = Plan("p", 1.0, (Event(0, "a", 0.0, 0.0005), Event(1, "b", 0.0005, 0.9995)))
    assert round_times(fine) is fine


@FAST
@given(st.lists(st.integers(1, 20_000), min_size=1, max_size=12), st.integers(-3, 3))
def test_rounding_planner_timelines_moves_no_boundary_by_a_millisecond(sizes_ms, ulps):
    """Back-to-back events with float noise on every boundary: the rounded plan is valid, every time within
    1e-6 s of the old, and joined events still join."""
    total = sum(sizes_ms) / 1000
    bounds = [sum(sizes_ms[:i]) / 1000 for i in range(len(sizes_ms))]
    starts = [b if i == 0 else b + ulps * math.ulp(b) for i, b in enumerate(bounds)]
    events = [
        Event(i, "x", s, ((starts[i + 1] if i + 1 < len(starts) else total) - s)) for i, s in enumerate(starts)
    ]
    noisy = Plan("p", total, tuple(events))
    rounded = round_times(noisy)
    assert plan_from_dict(plan_to_dict(rounded)) == rounded
    for a, b in zip(noisy.events, rounded.events):
        assert abs(a.start_s - b.start_s) <= 1e-6 and abs(a.end_s - b.end_s) <= 1e-6
        assert b.start_s == round(b.start_s, 3) and b.duration_s == round(b.duration_s, 3)
    for before, after in zip(rounded.events, rounded.events[1:]):
        assert abs(after.start_s - before.end_s) <= 1e-6


# --- the prompts-file reader -----------------------------------------------------------------------------------

line_values = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"prompt": st.one_of(st.text(max_size=30), json_values)},
        optional={k: st.one_of(json_values, st.sampled_from(HUGE)) for k in ("duration", "seed", "output", "tone")},
    ),
)
lines = st.one_of(
    line_values.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"# comment", b"", b"   ", b'{"prompt": "x", "duration": NaN}', b"[1, 2]", b"null", b"42"]),
)


def _items_are_usable(items):
    for item in items:
        assert isinstance(item, BatchItem)
        item.prompt.encode("utf-8")  # the manifest records it
        if item.problem is not None:
            assert "\n" not in item.problem and not item.problem.startswith("line ")
            continue
        check_prompt(item.prompt)
        if item.duration_s is not None:
            check_total_s(item.duration_s)
        if item.seed is not None:
            check_seed(item.seed)


@FAST
@given(st.lists(lines, max_size=8), st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.sampled_from(["p.txt", "p.jsonl"]))
@example([b'{"prompt": "x", "duration": NaN}', b'{"prompt": "x", "duration": 1' + b"0" * 400 + b"}"], b"\n", False, "p.jsonl")
@example([b'{"prompt": "x", "output": "a\\u0000b"}', b'{"prompt": "x", "seed": -1}', b'{"prompt": "x", "seed": 1.5}'], b"\n", True, "p.txt")
def test_prompts_file_of_any_lines_gives_items_or_per_line_problems(tmp_path, lines, newline, bom, name):
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines))
    try:
        items = read_prompts_file(path)
    except InputError as err:
        assert "has no prompts" in str(err)
        return
    _items_are_usable(items)
    settings_ = BatchSettings(outdir=tmp_path / "out", options=RenderOptions(), default_duration_s=5.0)
    try:
        tasks = make_tasks(items, settings_)
    except InputError as err:
        assert "duplicate output names" in str(err)
        return
    for task in tasks:
        assert (task.problem is None) == (task.output is not None)
        if task.output is not None:
            assert os.sep not in task.output and "\0" not in task.output and not task.output.startswith(".")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"prompt": "x", "duration": NaN}', "duration = NaN: must be a number of seconds > 0 and <= 600"),
        ('{"prompt": "x", "duration": Infinity}', "duration = Infinity: must be a number of seconds > 0"),
        ('{"prompt": "x", "duration": 1' + "0" * 400 + "}", "duration = 100000000000... (401 digits): must be > 0"),
        ('{"prompt": "x", "seed": -1}', "seed = -1: must be an integer between 0 and"),
        ('{"prompt": "x", "seed": 1.5}', "seed = 1.5: must be an integer"),
        ('{"prompt": "x", "seed": true}', "seed = true: must be an integer"),
        ('{"prompt": "x", "seed": 1' + "0" * 30 + "}", "seed = 100000000000... (31 digits): must be an integer"),
        ("[1, 2]", 'must be a JSON object with a "prompt", got an array'),
        ("42", 'must be a JSON object with a "prompt", got a number'),
        ('"a storm"', 'must be a JSON object with a "prompt", got a string'),
        ("null", 'must be a JSON object with a "prompt", got null'),
        ('{"prompt": "x", "tone": "\\ud800"}', "tone contains"),
        ('{"prompt": "' + "a" * 3000 + '"}', "the prompt has 3000 characters: must be at most 2000"),
        ('{"prompt": 1' + "0" * 5000 + "}", "a number has more than 4300 digits"),
    ],
)
def test_bad_json_lines_are_one_problem_each_without_a_doubled_line_prefix(tmp_path, line, problem):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    first, second = read_prompts_file(path)
    assert first.problem is None and first.prompt == "fine"
    assert second.line == 2 and problem in second.problem and not second.problem.startswith("line")


def test_prompts_files_with_bom_crlf_comments_and_a_bad_byte(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"\xef\xbb\xbf# stories\r\n\r\na storm\r\ncaf\xe9 noise\r\n  \r\na fire\r\n")
    items = read_prompts_file(path)
    assert [(i.line, i.prompt, i.problem is None) for i in items] == [
        (3, "a storm", True), (4, "caf\ufffd noise", False), (6, "a fire", True)
    ]  # fmt: skip
    assert "not UTF-8 text (byte 0xe9 at column 4)" in items[1].problem
    (tmp_path / "long.txt").write_text("x" * 10_000_000 + "\nshort\n")
    long, short = read_prompts_file(tmp_path / "long.txt")
    assert "10000000 characters" in long.problem and short.problem is None
    for bad, message in ((tmp_path, "is a folder"), (tmp_path / "none.txt", "not found")):
        with pytest.raises(InputError, match=message):
            read_prompts_file(bad)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(InputError, match="has no prompts"):
        read_prompts_file(tmp_path / "empty.txt")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("a\x00b.wav", "must be a plain file name"),
        ("sub/a.wav", "must be a plain file name"),
        ("..", "must be a plain file name"),
        ("../a.wav", "must be a plain file name"),
        ("a" * 300 + ".wav", "304 bytes is too long: this file system takes names of at most"),
        ("é" * 120 + ".wav", "244 bytes is too long"),  # 120 characters, but 240 bytes in UTF-8
        ("a" * 223 + ".wav", "227 bytes is too long"),  # fits alone; its plan's partial file does not
    ],
)
def test_output_names_the_file_system_refuses_are_a_line_problem(tmp_path, output, problem):
    items = [BatchItem(1, "fine"), BatchItem(2, "story", output=output)]
    tasks = make_tasks(items, BatchSettings(outdir=tmp_path / "out", options=RenderOptions(), default_duration_s=5.0))
    assert tasks[0].problem is None and problem in tasks[1].problem and tasks[1].output is None


def test_the_longest_output_name_allowed_can_be_written_with_its_plan_latents_and_partial_files(tmp_path):
    name = "a" * 205 + ".wav"  # 255 less what the latents' partial name adds (50 bytes)
    (task,) = make_tasks([BatchItem(1, "s", output=name)], BatchSettings(tmp_path, RenderOptions(), 5.0))
    assert task.problem is None
    (longer,) = make_tasks([BatchItem(1, "s", output="a" + name)], BatchSettings(tmp_path, RenderOptions(), 5.0))
    assert "too long" in longer.problem
    stem = name[:-4]
    for made in (name, f".{name}.12345678.partial.wav", f"{stem}.plan.json", f".{stem}.plan.json.12345678.partial.json",
                 f"{stem}.latents.safetensors", f".{stem}.latents.safetensors.12345678.partial.safetensors"):
        (tmp_path / made).write_bytes(b"x")  # none is ENAMETOOLONG


# --- the command line: hostile files fail before any model loads -----------------------------------------------


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: what these tests feed the CLI must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for input that should have been refused before")

    monkeypatch.setattr("audiostory_cli.registry.load_models", refuse)
    monkeypatch.setattr("audiostory_cli.registry.load_decoder", refuse)
    monkeypatch.setattr(local, "load_batch_models", refuse)


def _one_error_line(result, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr


@FAST
@given(st.one_of(mutated_plans().map(json.dumps), json_values.map(json.dumps), st.binary(max_size=200)))
@example("[" * 100_000 + "]" * 100_000)
@example('{"total_s": 1' + "0" * 5000 + "}")
def test_render_of_a_hostile_plan_is_one_line_and_no_file(tmp_path_factory, no_models, text):
    folder = tmp_path_factory.mktemp("render")
    path = folder / "plan.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_plan(path)
    except AudiostoryError:
        pass
    else:  # a valid plan: rendering it is the other tests' business
        return
    result = CliRunner().invoke(app, ["render", str(path), "-o", str(folder / "out.wav"), "--decoder", "none"])
    _one_error_line(result)
    assert sorted(p.name for p in folder.iterdir()) == ["plan.json"]


@FAST
@given(st.lists(lines, min_size=1, max_size=6))
@example([b'{"prompt": "\\ud800"}', b'{"prompt": "\\udcff", "x": 1}'])  # a lone surrogate in a failed record
def test_batch_of_hostile_lines_reports_each_before_any_model_loads(
    tmp_path_factory, tiny_planner, tiny_decoder, no_models, raw_lines
):
    folder = tmp_path_factory.mktemp("batch")
    path = folder / "p.jsonl"
    path.write_bytes(b"\n".join(raw_lines))
    try:
        items = read_prompts_file(path)
    except InputError:
        items = None
    if items is not None and any(i.problem is None for i in items):
        return  # a good line renders: the tiny-model tests below cover that
    out = folder / "out"
    models = ["--planner", str(tiny_planner), "--decoder", str(tiny_decoder)]
    result = CliRunner().invoke(app, ["batch", str(path), "-d", str(out), "--device", "cpu", *models])
    assert "Traceback" not in result.output
    if items is None:
        _one_error_line(result)
        assert not out.exists()
        return
    assert result.exit_code == 1, result.output
    records = read_manifest(out / "manifest.jsonl")
    assert [r.line for r in records] == [i.line for i in items] and {r.status for r in records} == {"failed"}
    assert all("\n" not in r.error and not r.error.startswith("line ") for r in records)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl"]


@pytest.mark.parametrize(
    ("outdir", "message"),
    [
        ("{tmp}/file.txt", "{tmp}/file.txt is a file"),
        ("{tmp}/file.txt/out", "cannot create {tmp}/file.txt/out: {tmp}/file.txt is a file"),
        ("{tmp}/" + "d" * 300, "File name too long"),
    ],
)
def test_batch_outdir_that_cannot_be_made_is_one_line_before_any_model(tmp_path, no_models, outdir, message):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "p.txt").write_text("a storm\n")
    outdir, message = (s.replace("{tmp}", str(tmp_path)) for s in (outdir, message))
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "p.txt"), "-o", outdir])
    assert result.exit_code == 2, result.output  # a usage error, like every other -o that cannot be written
    assert "Traceback" not in result.output and "Invalid value for '--outdir' / '-o'" in result.stderr
    assert message in " ".join(result.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "p.txt"]


def test_batch_outdir_in_a_read_only_folder_is_one_line(tmp_path, no_models, monkeypatch):
    (tmp_path / "p.txt").write_text("a storm\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root passes chmod 500: the kernel's answer for an ordinary user, asked by os.access
    monkeypatch.setattr(audio_io.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "p.txt"), "-o", str(locked / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and f"cannot write into {locked}: permission denied" in result.stderr
    assert not (locked / "out").exists()


# --- the batch loop with the tiny models ---------------------------------------------------------------------


def test_one_bad_write_fails_its_line_and_the_batch_goes_on(tiny_planner, tiny_decoder, tmp_path, monkeypatch):
    real = audio_io.write_story_files
    refused = {"b.wav": errno.ENOSPC, "c.wav": errno.EACCES}

    def write(audio_path, *args, **kwargs):
        code = refused.get(os.path.basename(audio_path))
        if code is not None:
            raise OSError(code, os.strerror(code), str(audio_path))
        return real(audio_path, *args, **kwargs)

    monkeypatch.setattr(audio_io, "write_story_files", write)
    lines = [
        {"prompt": "rain on a roof", "output": "a.wav"},
        {"prompt": "a fire", "output": "b.wav"},
        {"prompt": "a fire", "output": "c.wav", "seed": 2},
        {"prompt": "x", "output": "d" * 240 + ".wav"},
        {"prompt": "x", "duration": float("nan")},
        {"prompt": "waves", "output": "e.wav"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n[1]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["batch", str(path), "-d", str(out), "--planner", str(tiny_planner), "--decoder", str(tiny_decoder),
              "--duration", "1", "--steps", "1", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    records = {r.line: r for r in read_manifest(out / "manifest.jsonl")}
    assert {line: r.status for line, r in records.items()} == {
        1: "ok", 2: "failed", 3: "failed", 4: "failed", 5: "failed", 6: "ok", 7: "failed"
    }  # fmt: skip
    assert "No space left on device" in records[2].error and "Permission denied" in records[3].error
    assert "bytes is too long" in records[4].error and "duration = NaN" in records[5].error
    assert 'got an array' in records[7].error
    stderr = " ".join(result.stderr.split())
    assert "line 2: could not write" in stderr and "line 2: line 2" not in stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "a.latents.safetensors", "a.plan.json", "a.wav", "e.latents.safetensors", "e.plan.json", "e.wav", "manifest.jsonl"
    ]  # fmt: skip


def test_a_generated_plan_says_its_times_in_milliseconds_and_renders_the_same_samples(
    tiny_planner, tiny_decoder, tmp_path
):
    """9.7 s: the planner's timeline ends its last event at total_s with float noise (6.466999999999999 before
    this fix); the plan now says 6.467, and that is what was rendered."""
    models = ["--planner", str(tiny_planner), "--decoder", str(tiny_decoder), "--steps", "1", "--device", "cpu"]
    runner = CliRunner()
    made = runner.invoke(app, ["generate", "a storm, a bell, gulls", "-o", str(tmp_path / "a.wav"), "--duration",
                               "9.7", *models])  # fmt: skip
    assert made.exit_code == 0, made.output
    plan = json.loads((tmp_path / "a.plan.json").read_text())
    times = [plan["total_s"]] + [e[k] for e in plan["events"] for k in ("start_s", "duration_s")]
    assert all(t == round(t, 3) for t in times), times
    again = runner.invoke(app, ["render", str(tmp_path / "a.plan.json"), "-o", str(tmp_path / "b.wav"), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_a_home_of_no_user_is_a_missing_path_not_a_crash(tmp_path):
    """``~0`` names no user, where ``Path.expanduser`` raises: it is taken as written (found by hypothesis)."""
    from audiostory_cli.paths import expand_user

    assert expand_user("~0/x.wav").name == "x.wav"
    assert str(expand_user("~0")) == "~0"


def test_an_unknown_field_with_a_newline_is_named_on_one_line(tmp_path):
    from audiostory_cli.errors import PlanError
    from audiostory_cli.story import load_plan

    path = tmp_path / "plan.json"
    path.write_bytes(b'{"\\n":null}')
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert "\n" not in str(err.value) and "\\n: unknown field" in str(err.value)
