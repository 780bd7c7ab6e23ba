"""``audiostory studio``: the output-folder guard, the table <-> plan, versions and undo, progress, the command's
launch settings, and a real server on 127.0.0.1 driven through ``gradio_client`` on the tiny models."""

from __future__ import annotations

import json
import os
import sys
import time
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
    (5, "12", "seed is derived from the story's seed; to change it use Reroll"),
])  # fmt: skip
def test_a_bad_table_edit_is_one_message_naming_the_event(column, value, says):
    rows = plan_rows(_plan())
    rows[1][column] = value
    with pytest.raises(PlanError, match="event.*1|events\\[1\\]") as caught:
        plan_from_rows(_plan(), rows)
    assert says in str(caught.value)


def test_the_seed_column_is_each_clip_s_seed():
    from audiostory_cli.settings import RenderOptions
    from audiostory_cli.story import clip_seed

    plan = _plan().with_render(RenderOptions(seed=7))
    assert [row[5] for row in plan_rows(plan)] == [str(clip_seed(7, i)) for i in range(3)]


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
    with studio_server(outdir, str(tiny_planner), str(tiny_sa3), cwd=root) as (url, process, log):
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
    rate_event, cut = client.predict(1, api_name="/play_event"), None
    cut, cut_rate = sf.read(rate_event)
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
    assert loaded[0]["data"][0][1] == "a door creaks open" and Path(loaded[2]).read_bytes() == (outdir / second).read_bytes()
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

    url, outdir, _ = server
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
