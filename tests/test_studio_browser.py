"""The studio page in a real browser: Debian's chromium, driven by Playwright, against ``audiostory studio`` on
the tiny models. Marked ``browser`` and ``slow``: ``python -m pytest -q -m browser tests/test_studio_browser.py``.
``AUDIOSTORY_SCREENSHOT=docs/studio.png`` saves the page once an event of the story is rerolled."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from audiostory_cli.story import load_plan

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("AUDIOSTORY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PROMPT = "rain on a tin roof, then thunder"
NEW_CAPTION = "heavy rain drums on a tin roof"
WAIT_MS = 240_000  # a plan or a render on a busy 2-core machine, the models loading first


def _needs() -> str | None:
    for module in ("gradio", "gradio_client", "playwright"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[studio,test]')"
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set AUDIOSTORY_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def page_server(tiny_planner, tiny_sa3, tmp_path_factory):
    if (why := _needs()) is not None:
        pytest.skip(why)
    from studio_server import studio_server

    root = tmp_path_factory.mktemp("studio-browser")
    with studio_server(root / "out", str(tiny_planner), str(tiny_sa3), "--steps", "2", "--crossfade", "0.3",
                       cwd=root) as (url, _, _log):
        yield url, root / "out"


@pytest.fixture
def browser_page(page_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.set_default_timeout(WAIT_MS)
        page.goto(page_server[0])
        yield page
        browser.close()


def _plan_and_render(page, outdir: Path, seconds: int, short_last: bool = False) -> tuple[Path, float, str]:
    """Prompt -> Plan -> change the first caption in the table (``short_last``: and the last event to 0-1 s) ->
    Render; the version's audio, the <audio> element's duration and the picture's address."""
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#duration input").fill(str(seconds))
    page.locator("#plan-button").click()
    cell = page.locator('#plan-table [data-testid="cell-0-1"]')
    cell.wait_for()
    planned_picture = page.locator("#picture img").get_attribute("src")
    _type_into(page, cell, NEW_CAPTION)
    assert cell.inner_text().startswith(NEW_CAPTION)  # (then the cell menu button, ⋮)
    start = page.locator('#plan-table [data-testid="cell-0-2"]')
    planned_start = start.inner_text().strip().split()[0]
    _type_into(page, start, "99")  # past the story's end: one message on the page, no traceback
    toast = page.locator('[data-testid="toast-body"]', has_text="start_s = 99: must be >= 0 and < total_s")
    toast.first.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
    _type_into(page, start, planned_start)
    if short_last:  # the tiny planner's events may span the whole story: one that leaves most of it untouched
        last = page.locator('#plan-table [data-testid^="cell-"][data-testid$="-1"]').count() - 1
        for column, value in ((2, "0"), (3, "1")):
            _type_into(page, page.locator(f'#plan-table [data-testid="cell-{last}-{column}"]'), value)
    page.locator("#render-button").click()
    page.wait_for_function("() => document.querySelector('#version').innerText.includes('story-')")
    name = page.locator("#version").inner_text().split("Version ")[1].split(" ")[0]
    duration = _audio_duration(page, "#audio")
    picture = page.locator("#picture img").get_attribute("src")
    assert picture != planned_picture and name.replace(".wav", ".png") in picture
    return outdir / name, duration, picture


def _type_into(page, cell, text: str) -> None:
    cell.dblclick()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def _audio_duration(page, where: str) -> float:
    return page.evaluate(
        """(where) => new Promise((done) => {
            const wait = () => {
                const audio = document.querySelector(where + ' audio');
                if (!audio || !audio.src) return setTimeout(wait, 100);
                if (audio.readyState >= 1 && isFinite(audio.duration)) return done(audio.duration);
                audio.addEventListener('loadedmetadata', () => done(audio.duration), {once: true});
                audio.load();
            };
            wait();
        })""",
        where,
    )


def test_prompt_plan_edit_render_play_in_chromium(browser_page, page_server):
    page, outdir = browser_page, page_server[1]
    audio_path, duration, _ = _plan_and_render(page, outdir, 4)
    plan = load_plan(audio_path.with_name(audio_path.stem + ".plan.json"))
    assert plan.events[0].caption == NEW_CAPTION
    assert abs(duration - plan.total_s) < 0.01 and abs(duration - 4) < 0.01
    assert abs(sf.info(audio_path).duration - plan.total_s) < 1e-6
    page.locator("#event input").fill("0")
    page.locator("#play-button").click()
    alone = _audio_duration(page, "#event-audio")
    assert abs(alone - plan.events[0].duration_s) < 0.01


def test_reroll_changes_only_that_event_s_span(browser_page, page_server):
    import numpy as np

    from audiostory_cli import audio_io, mix

    page, outdir = browser_page, page_server[1]
    before_path, _, picture = _plan_and_render(page, outdir, 4, short_last=True)
    before, rate = audio_io.read_audio(before_path)
    plan = load_plan(before_path.with_name(before_path.stem + ".plan.json"))
    event = len(plan.events) - 1
    assert (plan.events[event].start_s, plan.events[event].duration_s) == (0.0, 1.0)
    page.locator("#event input").fill(str(event))
    page.locator("#reroll-button").click()
    page.wait_for_function(f"() => !document.querySelector('#version').innerText.includes('{before_path.name}')")
    after_name = page.locator("#version").inner_text().split("Version ")[1].split(" ")[0]
    after, _ = audio_io.read_audio(outdir / after_name)
    new_plan = load_plan(outdir / after_name.replace(".wav", ".plan.json"))
    seed = new_plan.events[event].seed
    assert seed is not None and new_plan.history.edits[-1].event == event
    assert page.locator('#plan-table [data-testid="cell-%d-5"]' % event).inner_text().split()[0] == str(seed)
    new_picture = page.locator("#picture img").get_attribute("src")
    assert new_picture != picture and after_name.replace(".wav", ".png") in new_picture
    # the samples before the event and after it (or after the event that continues it: its join) are the old ones
    spans = mix.event_spans(plan, rate)
    follower = {b.index for a, b in mix.joins(plan) if a.index == event}
    start, end = spans[event][0], max(spans[i][1] for i in follower | {event})
    end = min(end + round(plan.render.crossfade_s * rate), before.shape[1])
    assert end < before.shape[1]  # something after it to keep
    assert after.shape == before.shape and not np.array_equal(after[:, start:end], before[:, start:end])
    assert np.array_equal(after[:, :start], before[:, :start]) and np.array_equal(after[:, end:], before[:, end:])
    page.locator("#play-button").click()
    alone = _audio_duration(page, "#event-audio")
    assert abs(alone - new_plan.events[event].duration_s) < 0.01
    shot = os.environ.get("AUDIOSTORY_SCREENSHOT")
    if shot:  # the page after an edit: the story, its picture, the events' controls with the event alone
        page.evaluate("window.scrollTo(0, 0); document.querySelectorAll('.toast-wrap').forEach((t) => t.remove())")
        page.screenshot(path=shot, full_page=True)
