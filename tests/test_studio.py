"""``audiostory studio``: the output-folder guard, the table <-> plan, versions and undo, progress, the command's
launch settings, and a real server on 127.0.0.1 driven through ``gradio_client`` on the tiny models."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audiostory_cli.cli import app
from audiostory_cli.errors import InputError, PlanError
from audiostory_cli.story import Event, Plan, Progress, load_plan
from audiostory_cli.studio.files import StudioFolder
from audiostory_cli.studio.session import History, plan_from_rows, plan_rows, progress_fraction

PROMPT = "rain on a tin roof, then thunder"


def _plan() -> Plan:
    return Plan(prompt=PROMPT, total_s=4.0, events=(
        Event(0, "rain on a tin roof", 0.0, 2.5), Event(1, "thunder rolls", 2.5, 1.5),
        Event(2, "wind in the trees", 0.0, 4.0, layer=1)))  # fmt: skip


# --- the folder guard ------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "a.plan.json").write_text("{}")
    (tmp_path / "secret.plan.json").write_text("{}")
    return StudioFolder(root)


@pytest.mark.parametrize("name", ["a.plan.json", "./a.plan.json", "sub/../a.plan.json"])
def test_names_inside_the_folder_resolve_there(folder, name):
    assert folder.inside(name) == folder.root / "a.plan.json"


def test_an_absolute_path_inside_the_folder_is_taken(folder):
    assert folder.inside(str(folder.root / "a.plan.json")) == folder.root / "a.plan.json"


@pytest.mark.parametrize("name, says", [
    ("../../etc/passwd", "outside the studio's folder"),
    ("../secret.plan.json", "outside the studio's folder"),
    ("/etc/passwd", "absolute path outside"),
    ("~/x.plan.json", "absolute path outside"),
    ("a.plan.json\x00.wav", "NUL byte"),
    ("", "no file given"),
    (None, "no file given"),
])  # fmt: skip
def test_names_that_leave_the_folder_are_refused(folder, name, says):
    with pytest.raises(InputError, match=says):
        folder.inside(name)


def test_a_link_out_of_the_folder_is_refused_and_not_listed(folder, tmp_path):
    (folder.root / "link.plan.json").symlink_to(tmp_path / "secret.plan.json")
    (folder.root / "dir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(InputError, match="leads outside"):
        folder.inside("link.plan.json")
    with pytest.raises(InputError, match="leads outside"):
        folder.inside("dir/secret.plan.json")
    assert folder.plan_files() == ["a.plan.json"]


def test_versions_number_after_every_story_file_in_the_folder(folder):
    assert folder.next_version().audio_path.name == "story-001.wav"
    (folder.root / "story-007.plan.json").write_text("{}")
    (folder.root / "story-notanumber.wav").write_text("")
    version = folder.next_version()
    assert (version.number, version.audio_path.name, version.plan_path.name, version.picture_path.name) == (
        8, "story-008.wav", "story-008.plan.json", "story-008.png")


# --- the table -------------------------------------------------------------------------------------------------


def test_table_edits_become_the_plan_that_renders():
    plan = _plan()
    rows = plan_rows(plan)
    assert [row[:5] for row in rows] == [[0, "rain on a tin roof", 0.0, 2.5, 0], [1, "thunder rolls", 2.5, 1.5, 0],
                                         [2, "wind in the trees", 0.0, 4.0, 1]]  # fmt: skip
    rows[1][1] = "a ship's bell rings"
    rows[0][3], rows[1][2], rows[1][3] = "2", "2", 2.0  # text as the browser may send it
    edited = plan_from_rows(plan, rows)
    assert [(e.caption, e.start_s, e.duration_s, e.layer) for e in edited.events] == [
        ("rain on a tin roof", 0.0, 2.0, 0), ("a ship's bell rings", 2.0, 2.0, 0), ("wind in the trees", 0.0, 4.0, 1)]
    assert plan_from_rows(plan, rows[:2]).events[-1].caption == "a ship's bell rings"  # a row removed


@pytest.mark.parametrize("column, value, says", [
    (2, "soon", "start_s = 'soon' is not a number"),
    (3, "nan", "not a finite number"),
    (2, 9.0, "start_s = 9: must be >= 0 and < total_s"),
    (1, "", "caption has 0 characters"),
    (4, 1.5, "layer = '1.5' is not a whole number"),
    (4, 7, "layer = 7: must be between 0 and 3"),
    (5, "-1", "seed = -1: must be an integer between 0 and"),
    (5, "1.5", "seed = '1.5' is not a whole number"),
    (5, str(2**64), "must be an integer between 0 and"),
])  # fmt: skip
def test_a_bad_table_edit_is_one_message_naming_the_event(column, value, says):
    rows = plan_rows(_plan())
    rows[1][column] = value
    with pytest.raises(PlanError, match="event.*1|events\\[1\\]") as caught:
        plan_from_rows(_plan(), rows)
    assert says in str(caught.value)


def test_the_seed_column_is_each_clip_s_seed_and_a_typed_seed_is_the_event_s_own():
    from dataclasses import replace

    from audiostory_cli.settings import MAX_SEED, RenderOptions
    from audiostory_cli.story import clip_seed, event_seed

    plan = _plan().with_render(RenderOptions(seed=7))
    plan = replace(plan, events=(plan.events[0], replace(plan.events[1], seed=12345), plan.events[2]))
    rows = plan_rows(plan)
    assert [row[5] for row in rows] == [str(clip_seed(7, 0)), "12345", str(clip_seed(7, 2))]
    assert [row[5] for row in rows] == [str(event_seed(e, 7)) for e in plan.events]
    assert plan_from_rows(plan, rows) == plan  # the shown seeds: nothing changes
    rows[0][5], rows[1][5] = str(MAX_SEED), ""  # 64 bits kept exactly; an empty cell: the seed as it was
    edited = plan_from_rows(plan, rows)
    assert [e.seed for e in edited.events] == [MAX_SEED, 12345, None]
    assert [row[5] for row in plan_rows(edited)] == [str(MAX_SEED), "12345", str(clip_seed(7, 2))]


# --- versions, progress ----------------------------------------------------------------------------------------


def test_undo_goes_back_one_version_at_a_time(folder):
    history = History()
    with pytest.raises(InputError, match="nothing to undo"):
        history.undo()
    first, second = folder.version(1), folder.version(2)
    history.push(first)
    history.push(second)
    assert history.current == second
    assert history.undo() == first
    with pytest.raises(InputError, match="nothing to undo"):
        history.undo()


def test_progress_counts_clips_and_their_steps():
    state: dict = {}
    reports = [Progress("plan", 0, 0, "planning the story"), Progress("render", 0, 2, "event 1"),
               *(Progress("step", s, 4) for s in range(1, 5)), Progress("render", 1, 2, "event 2"),
               *(Progress("step", s, 4) for s in range(1, 5)), Progress("render", 2, 2, "done"),
               Progress("mix", 0, 1, "mixing")]  # fmt: skip
    shown = [progress_fraction(r, state) for r in reports]
    fractions = [f for f, _ in shown if f is not None]
    assert fractions == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert shown[3][1] == "clip 1/2, step 2/4" and shown[0] == (None, "planning: planning the story")


# --- the command -----------------------------------------------------------------------------------------------


def test_without_gradio_the_command_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)
    result = CliRunner().invoke(app, ["studio", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    first = result.output.splitlines()[0]
    assert first.startswith("error: the studio page needs gradio") and 'pip install "audiostory-cli[studio]"' in first
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("host, warned", [(None, False), ("0.0.0.0", True)])
def test_the_page_binds_localhost_serves_only_its_folder_never_shares(monkeypatch, tmp_path, tiny_sa3, host, warned):
    gr = pytest.importorskip("gradio")
    for name in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE", "GRADIO_ANALYTICS_ENABLED"):
        monkeypatch.setenv(name, "unset")  # restored after the test: the command sets them for its process
    launched = {}

    def launch(self, **kwargs):
        launched.update(kwargs)
        self.local_url = f"http://{kwargs['server_name']}:{kwargs['server_port']}/"

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    outdir = tmp_path / "made" / "out"
    args = ["studio", "-o", str(outdir), "--decoder", str(tiny_sa3), "--planner", "tiny", "--device", "cpu"]
    result = CliRunner().invoke(app, args + (["--host", host] if host else []))
    assert result.exit_code == 0, result.output
    assert launched["share"] is False and launched["allowed_paths"] == [str(outdir.resolve())]
    assert launched["server_name"] == (host or "127.0.0.1") and 0 < launched["server_port"] < 65536
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    assert outdir.resolve() in cache.parents and outdir.resolve() in Path(os.environ["GRADIO_EXAMPLES_CACHE"]).parents
    assert ("warning: --host 0.0.0.0" in result.output) is warned


# --- a real server, through gradio_client ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_planner, tiny_sa3, tmp_path_factory):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from studio_server import studio_server

    root = tmp_path_factory.mktemp("studio")
    outdir = root / "out"
    (root / "secret.txt").write_text("not for the page\n")  # in the server's working folder
    with studio_server(outdir, str(tiny_planner), str(tiny_sa3), "--steps", "2", "--crossfade", "0.3",
                       cwd=root) as (url, process, log):
        yield url, outdir, log


def _client(server, tmp_path):
    from gradio_client import Client

    return Client(server[0], verbose=False, download_files=str(tmp_path / "downloads"))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow  # models load and render in the server: ~15-25 s each on 2 busy cores
def test_plan_edit_render_through_the_api(server, tmp_path):
    url, outdir, log = server
    client = _client(server, tmp_path)
    table, picture = client.predict(PROMPT, 4, "calm", api_name="/plan")
    assert table["headers"][:2] == ["#", "caption"] and len(table["data"]) >= 1
    assert Path(picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table["data"][0][1] = "heavy rain drums on a tin roof"
    out = client.predict(table, api_name="/render")
    shown_table, picture, audio, text, download_audio, download_plan, _ = out
    name = text.split("**")[1]
    plan = load_plan(outdir / name.replace(".wav", ".plan.json"))
    assert plan.events[0].caption == "heavy rain drums on a tin roof" == shown_table["data"][0][1]
    wave, rate = sf.read(outdir / name)
    assert len(wave) == round(plan.total_s * rate) == round(4 * rate)
    assert Path(audio).read_bytes() == (outdir / name).read_bytes() == Path(download_audio["value"]).read_bytes()
    assert json.loads(Path(download_plan["value"]).read_text())["events"][0]["caption"] == plan.events[0].caption
    assert (outdir / name.replace(".wav", ".png")).read_bytes() == Path(picture).read_bytes()
    # each event alone is its span of the story
    cut, cut_rate = sf.read(client.predict(1, api_name="/play_event"))
    event = plan.events[1]
    assert cut_rate == rate and abs(len(cut) - round(event.duration_s * rate)) <= 1
    assert np.allclose(cut, wave[round(event.start_s * rate):][: len(cut)], atol=1e-4)
    assert log.read_text().count("loading decoder") == 1


@pytest.mark.slow  # models load and render in the server: ~15-25 s each on 2 busy cores
def test_a_bad_table_edit_is_a_message_and_writes_nothing(server, tmp_path):
    from gradio_client.exceptions import AppError

    url, outdir, _ = server
    client = _client(server, tmp_path)
    table, _ = client.predict(PROMPT, 4, "", api_name="/plan")
    before = sorted(p.name for p in outdir.iterdir())
    table["data"][0][2] = 99
    with pytest.raises(AppError, match=r"the table: events\[0\]\.start_s = 99: must be >= 0 and < total_s \(4\)"):
        client.predict(table, api_name="/render")
    assert sorted(p.name for p in outdir.iterdir()) == before


@pytest.mark.slow  # models load and render in the server: ~15-25 s each on 2 busy cores
def test_versions_undo_and_load_through_the_api(server, tmp_path):
    from gradio_client.exceptions import AppError

    url, outdir, _ = server
    client = _client(server, tmp_path)
    table, _ = client.predict(PROMPT, 3, "", api_name="/plan")
    first = client.predict(table, api_name="/render")[3].split("**")[1]
    table["data"][0][1] = "a door creaks open"
    second = client.predict(table, api_name="/render")[3].split("**")[1]
    assert first != second and (outdir / first).is_file() and (outdir / second).is_file()
    back = client.predict(api_name="/undo")
    assert back[3].split("**")[1] == first and back[0]["data"][0][1] != "a door creaks open"
    with pytest.raises(AppError, match="nothing to undo"):
        client.predict(api_name="/undo")
    loaded = client.predict(second.replace(".wav", ".plan.json"), api_name="/load")
    assert loaded[0]["data"][0][1] == "a door creaks open"
    assert Path(loaded[2]).read_bytes() == (outdir / second).read_bytes()
    for name in ("../../etc/passwd", "/etc/passwd", "x.plan.json\x00"):
        with pytest.raises(AppError):
            client.predict(name, api_name="/load")


def test_the_server_serves_files_of_its_folder_and_nothing_else(server, tmp_path):
    url, outdir, _ = server
    inside = outdir / "note.txt"
    inside.write_text("inside\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside\n")
    (outdir / "link.txt").symlink_to(outside)
    assert _status(f"{url}/gradio_api/file={inside}") == 200
    for path in ("/etc/passwd", str(outside), f"{outdir}/link.txt", f"{outdir}/../secret.txt", "secret.txt",
                 "../secret.txt", "%2Fetc%2Fpasswd"):  # fmt: skip
        assert _status(f"{url}/gradio_api/file={path}") in (403, 404), path
        assert _status(f"{url}/file={path}") in (403, 404), path


@pytest.mark.slow  # models load and render in the server: ~15-25 s each on 2 busy cores
def test_renders_queue_one_at_a_time_and_show_their_place(server, tmp_path):
    from gradio_client.utils import Status

    url, outdir, log = server
    clients = [_client(server, tmp_path / str(i)) for i in range(2)]
    tables = [c.predict(PROMPT, 4, "", api_name="/plan")[0] for c in clients]
    jobs = [c.submit(t, api_name="/render") for c, t in zip(clients, tables)]
    names = {job.result(timeout=600)[3].split("**")[1] for job in jobs}
    assert len(names) == 2 and all((outdir / n).is_file() for n in names)
    updates = [[], []]
    for job, seen in zip(jobs, updates):
        while not job.communicator.updates.empty():
            seen.append(job.communicator.updates.get_nowait())
    # the later of the two waited in the queue, told its place; the bar counted clips and their steps
    assert any(u.code == Status.IN_QUEUE and u.rank is not None for seen in updates for u in seen), updates
    steps = [p.desc for seen in updates for u in seen for p in getattr(u, "progress_data", None) or []]
    assert any(desc and desc.startswith("clip 1/") and ", step " in desc for desc in steps), steps
    assert [log.read_text().count(f"loading {m}") for m in ("planner", "decoder")] == [1, 1]  # shared by all tabs


# --- the page's edits: the editing library, through the API ------------------------------------------------------

EDIT_CAPTIONS = ("rain on a tin roof", "a dog barks twice", "waves break on pebbles", "a ship's bell rings")


def _version(out) -> str:
    """The version a call made or went back to, from the page's version line."""
    return out[3].split("**")[1]


def _story_files(outdir: Path, name: str) -> tuple[np.ndarray, Plan]:
    from audiostory_cli import audio_io

    return audio_io.read_audio(outdir / name)[0], load_plan(outdir / name.replace(".wav", ".plan.json"))


@pytest.mark.slow  # models load, a render and seven edits in the server: ~40-70 s on 2 busy cores
def test_edits_through_the_api_change_only_their_event_and_undo_goes_back(server, tmp_path):
    from gradio_client.exceptions import AppError

    from audiostory_cli import mix
    from audiostory_cli.editing import EventEdit, Vary, load_story

    url, outdir, log = server
    client = _client(server, tmp_path)
    table, _ = client.predict(PROMPT, 8, "", api_name="/plan")
    table["data"] = [[i, caption, 2.0 * i, 2.0, 0, ""] for i, caption in enumerate(EDIT_CAPTIONS)]  # 4 x 2 s
    first = _version(client.predict(table, api_name="/render"))
    old, plan = _story_files(outdir, first)
    rate = sf.info(outdir / first).samplerate
    starts = [start for start, _ in sorted(mix.event_spans(plan, rate).values())]
    assert load_story(outdir / first.replace(".wav", ".plan.json")).state is not None  # its latents beside it

    # reroll event 1: a new seed for it; before it, and from event 3 on (past its follower's join), the old samples
    out = client.predict(1, api_name="/reroll")
    rerolled = _version(out)
    new, plan = _story_files(outdir, rerolled)
    seed = plan.events[1].seed
    assert rerolled != first and seed is not None and plan.history.edits == (EventEdit(event=1, seed=seed),)
    assert out[0]["data"][1][5] == str(seed)  # the seed column shows the event's new seed
    assert new.shape == old.shape and not np.array_equal(new[:, starts[1]:starts[2]], old[:, starts[1]:starts[2]])
    assert np.array_equal(new[:, :starts[1]], old[:, :starts[1]])
    assert np.array_equal(new[:, starts[3]:], old[:, starts[3]:])
    assert Path(out[1]).read_bytes() == (outdir / rerolled.replace(".wav", ".png")).read_bytes()

    # vary the last event a little: everything before it kept
    old = new
    varied = _version(client.predict(3, 0.3, api_name="/vary"))
    new, plan = _story_files(outdir, varied)
    assert plan.history.edits[-1] == Vary(event=3, strength=0.3, seed=plan.history.edits[-1].seed)
    assert np.array_equal(new[:, :starts[3]], old[:, :starts[3]]) and not np.array_equal(new, old)

    # a new caption for event 0: from event 2 on, the old samples
    old = new
    recaptioned = _version(client.predict(0, "  a door creaks open ", api_name="/recaption"))
    new, plan = _story_files(outdir, recaptioned)
    assert plan.events[0].caption == "a door creaks open"
    assert plan.history.edits[-1] == EventEdit(event=0, caption="a door creaks open")
    assert np.array_equal(new[:, starts[2]:], old[:, starts[2]:]) and not np.array_equal(new, old)
    with pytest.raises(AppError, match="events 0 to 3"):
        client.predict(9, api_name="/reroll")
    with pytest.raises(AppError, match="caption is empty"):
        client.predict(0, "  ", api_name="/recaption")

    # extend by 2 s: the old part to the sample
    old = new
    extended = _version(client.predict("then gulls cry over the harbor", 2, api_name="/extend"))
    new, plan = _story_files(outdir, extended)
    assert plan.total_s == pytest.approx(10.0) and len(plan.events) > 4 and new.shape[1] == round(10 * rate)
    assert np.array_equal(new[:, : old.shape[1]], old)

    # undo: the version before, its own files; the next edit starts from it (and its latents)
    back = client.predict(api_name="/undo")
    assert _version(back) == recaptioned and Path(back[2]).read_bytes() == (outdir / recaptioned).read_bytes()
    assert back[0]["data"][0][1] == "a door creaks open" and len(back[0]["data"]) == 4
    assert load_story(outdir / recaptioned.replace(".wav", ".plan.json")).state is not None
    again = _version(client.predict(2, api_name="/reroll"))
    new, plan = _story_files(outdir, again)
    assert plan.total_s == 8.0 and np.array_equal(new[:, :starts[2]], old[:, :starts[2]])
    names = [first, rerolled, varied, recaptioned, extended, again]
    assert len(set(names)) == 6 and all((outdir / n.replace(".wav", ".latents.safetensors")).is_file() for n in names)

    # a loaded version without its latents: the edit renders it from its plan first (the bar says so), same samples
    (outdir / first.replace(".wav", ".latents.safetensors")).unlink()
    assert _version(client.predict(first.replace(".wav", ".plan.json"), api_name="/load")) == first
    job = client.submit(3, 0.3, api_name="/vary")
    new, plan = _story_files(outdir, _version(job.result(timeout=600)))
    first_wave, _ = _story_files(outdir, first)
    assert plan.history.edits == (Vary(event=3, strength=0.3, seed=plan.history.edits[0].seed),)
    assert np.array_equal(new[:, :starts[3]], first_wave[:, :starts[3]])
    said = []
    while not job.communicator.updates.empty():
        said += [p.desc or "" for p in getattr(job.communicator.updates.get_nowait(), "progress_data", None) or []]
    assert any("rendering the story from its plan first" in line for line in said), said


def test_a_plan_in_the_folder_loads_with_its_audio_or_alone(tmp_path, tiny_sa3):
    pytest.importorskip("matplotlib")  # a loaded version gets its picture (the studio extra brings matplotlib)
    from audiostory_cli import audio_io
    from audiostory_cli.run_setup import setup_run
    from audiostory_cli.story import plan_to_json
    from audiostory_cli.studio.session import Studio

    out = tmp_path / "out"
    out.mkdir()
    studio = Studio(setup_run({"decoder": str(tiny_sa3)}, outdir=out, device="cpu"), {}, StudioFolder(out))
    audio_io.write_story_files(out / "mine.wav", np.zeros((1, 4 * 8000), np.float32), 8000, out / "mine.plan.json",
                               plan_to_json(_plan()))  # fmt: skip
    (out / "draft.plan.json").write_text(plan_to_json(_plan()))
    version, plan = studio.load("mine.plan.json")
    assert version.audio_path == out / "mine.wav" and version.picture_path.is_file() and plan == _plan()
    assert studio.load("draft.plan.json") == (None, _plan())
    (tmp_path / "elsewhere.plan.json").write_text(plan_to_json(_plan()))
    (out / "link.plan.json").symlink_to(tmp_path / "elsewhere.plan.json")
    for name, says in (("../elsewhere.plan.json", "outside"), ("link.plan.json", "leads outside"),
                       (str(tmp_path / "elsewhere.plan.json"), "absolute path outside"), ("mine.wav", "not a plan")):
        with pytest.raises(InputError, match=says):
            studio.load(name)


def test_the_page_names_the_planner_a_first_run_loads(tmp_path, tiny_sa3):
    """No --planner: the page shows the default the models load (``checkpoints.default_planner``) for this device
    and engine; a trained bridge takes the transformers one."""
    from audiostory_cli.checkpoints import TRANSFORMERS_PLANNER, default_planner
    from audiostory_cli.run_setup import setup_run
    from audiostory_cli.studio.session import Studio

    studio = Studio(setup_run({"decoder": str(tiny_sa3)}, outdir=tmp_path, device="cpu"), {}, StudioFolder(tmp_path))
    assert studio.references() == {"planner": default_planner("cpu"), "decoder": str(tiny_sa3)}
    studio.planner_engine = "transformers"
    assert studio.references()["planner"] == TRANSFORMERS_PLANNER


def test_a_table_edit_of_an_edited_plan_drops_its_edit_record_and_unchanged_rows_keep_it():
    from dataclasses import replace

    from audiostory_cli.editing import EventEdit
    from audiostory_cli.editing.records import History as EditHistory
    from audiostory_cli.settings import RenderOptions

    first = _plan()
    edited = replace(first, events=(first.events[0], replace(first.events[1], seed=5), first.events[2]),
                     history=EditHistory(first.events, first.total_s, (EventEdit(event=1, seed=5),)),
                     render=RenderOptions(seed=7))  # fmt: skip
    edited = load_plan_text(edited)
    rows = plan_rows(edited)
    assert plan_from_rows(edited, rows) == edited  # Render of the version as it is: its edits replay
    rows[2][1] = "a ship's bell rings"
    changed = plan_from_rows(edited, rows)
    assert changed.history is None and [e.seed for e in changed.events] == [None, 5, None]


def load_plan_text(plan: Plan) -> Plan:
    """``plan`` through its JSON (as a version's plan file is read): checked by the plan's own rules."""
    from audiostory_cli.story import plan_from_dict, plan_to_dict

    return plan_from_dict(plan_to_dict(plan))
