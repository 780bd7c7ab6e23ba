"""The studio page (Gradio Blocks) over ``session.Studio``: prompt -> Plan -> the plan as an editable table and
its picture -> Render (a progress bar: clips and their denoising steps) -> the audio, its picture, downloads; per
event: play it alone, reroll, vary, re-caption; extend; the versions made on the page, with undo; load a plan
from the output folder.

Every model call shares one queue slot (``concurrency_id="models"``, limit 1): the page shows each waiting
browser its place in the queue. A user error (``AudiostoryError``) is one message on the page (``gr.Error``);
anything else is a bug and keeps its traceback on the server's stderr.
"""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING, Any

from ..errors import AudiostoryError, InputError
from ..story import MAX_TOTAL_S, Progress
from .session import TABLE_HEADERS, TABLE_TYPES, History, Studio, plan_from_rows, plan_rows, progress_fraction

if TYPE_CHECKING:
    import gradio as gr

    from ..story import Plan
    from .files import Version

STUDIO_EXTRA_HINT = 'install it with `pip install "audiostory-cli[studio]"`'
DEFAULT_DURATION_S = 20.0  # the page's first duration
TABLE_WIDTHS = ("5%", "51%", "10%", "11%", "7%", "16%")  # of the table's columns (session.TABLE_HEADERS)
MODELS = "models"  # the one queue slot every model call shares


def import_gradio():
    """The ``gradio`` package, or one line naming the install command."""
    try:
        import gradio
    except ImportError:
        raise InputError("the studio page needs gradio, which is not installed", hint=STUDIO_EXTRA_HINT) from None
    return gradio


def _shown_errors(handler):
    """A user error from the library becomes one message on the page, not a traceback."""
    import gradio as gr

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except AudiostoryError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return wrapped


def _progress_into(bar: gr.Progress):
    """A library ``ProgressFn`` that moves the page's progress bar."""
    state: dict = {}

    def report(event: Progress) -> None:
        fraction, what = progress_fraction(event, state)
        bar(fraction, desc=what)

    return report


def build_page(studio: Studio) -> gr.Blocks:
    """The page; ``launch`` it with ``allowed_paths=[studio.folder.root]`` (``cli/studio.py`` does)."""
    import gradio as gr

    refs = studio.references()
    with gr.Blocks(title="audiostory studio", analytics_enabled=False) as page:
        gr.Markdown(f"## audiostory studio\nFiles are written to and served from `{studio.folder.root}`.")
        plan_state = gr.State(None)  # the plan shown in the table (a Plan), before or after rendering
        history = gr.State(History())  # the versions made or loaded in this browser session
        with gr.Row():
            prompt = gr.Textbox(label="Story prompt", lines=2, scale=3, elem_id="prompt",
                                placeholder="rain on a tin roof, then thunder, then birds")  # fmt: skip
            with gr.Column(scale=1):
                duration = gr.Number(DEFAULT_DURATION_S, label="Duration (s)", minimum=0.1, maximum=MAX_TOTAL_S,
                                     elem_id="duration")  # fmt: skip
                tone = gr.Textbox(label="Tone (optional)", elem_id="tone")
        with gr.Row():
            gr.Dropdown([refs["planner"]], value=refs["planner"], label="Planner", interactive=False)
            gr.Dropdown([refs["decoder"]], value=refs["decoder"], label="Decoder", interactive=False)
        with gr.Row():
            plan_button = gr.Button("Plan", variant="primary", elem_id="plan-button")
            render_button = gr.Button("Render", variant="primary", elem_id="render-button")
        table = gr.Dataframe(headers=list(TABLE_HEADERS), datatype=list(TABLE_TYPES), interactive=True,
                             static_columns=[0], type="array", elem_id="plan-table", wrap=True,
                             label="Plan: edit captions, times, layers and seeds, then Render",
                             column_widths=list(TABLE_WIDTHS))  # fmt: skip
        picture = gr.Image(label="Timeline", interactive=False, elem_id="picture", type="filepath", format="png")
        player = gr.WaveformOptions(show_recording_waveform=False)  # the browser's own <audio> player
        audio = gr.Audio(label="Story", type="filepath", interactive=False, elem_id="audio", waveform_options=player)
        with gr.Row():
            version_text = gr.Markdown("No version yet: Plan, then Render.", elem_id="version")
            undo_button = gr.Button("Undo (back to the previous version)", elem_id="undo-button")
        with gr.Row():
            download_audio = gr.DownloadButton("Download audio", value=None, interactive=False, elem_id="dl-audio")
            download_plan = gr.DownloadButton("Download plan", value=None, interactive=False, elem_id="dl-plan")
        with gr.Accordion("Events", open=True):
            with gr.Row():
                event = gr.Number(0, label="Event #", precision=0, minimum=0, elem_id="event")
                play_button = gr.Button("Play event alone", elem_id="play-button")
                reroll_button = gr.Button("Reroll", elem_id="reroll-button")
            event_audio = gr.Audio(label="Event alone", type="numpy", interactive=False, elem_id="event-audio",
                                   waveform_options=player)  # fmt: skip
            with gr.Row():
                strength = gr.Slider(0.05, 1.0, value=0.5, step=0.05, elem_id="strength",
                                     label="Vary strength (0.1 a nuance, 1 a new take)")  # fmt: skip
                vary_button = gr.Button("Vary", elem_id="vary-button")
            with gr.Row():
                caption = gr.Textbox(label="New caption for this event", scale=3, elem_id="caption")
                caption_button = gr.Button("Re-render with caption", elem_id="caption-button")
        with gr.Accordion("Extend", open=False):
            with gr.Row():
                then = gr.Textbox(label="Then ...", scale=3, elem_id="then")
                then_s = gr.Number(10.0, label="Seconds", minimum=0.1, maximum=MAX_TOTAL_S, elem_id="then-s")
                extend_button = gr.Button("Extend", elem_id="extend-button")
        with gr.Accordion("Load", open=False):
            with gr.Row():
                plans = gr.Dropdown(studio.folder.plan_files(), value=None, label="A plan in the output folder",
                                    elem_id="plans")  # fmt: skip
                load_button = gr.Button("Load", elem_id="load-button")

        shown = [plan_state, table, picture, audio, version_text, download_audio, download_plan, plans]

        def show(version: Version, plan: Plan, versions: History) -> tuple:
            count = len(versions.versions)
            text = (f"Version **{version.audio_path.name}** ({plan.total_s:g} s, {len(plan.events)} events); "
                    f"{count} on this page{'' if count > 1 else ', nothing to undo'}.")  # fmt: skip
            return (plan, plan_rows(plan), str(version.picture_path), str(version.audio_path), text,
                    gr.DownloadButton(value=str(version.audio_path), interactive=True),
                    gr.DownloadButton(value=str(version.plan_path), interactive=True),
                    gr.Dropdown(choices=studio.folder.plan_files()))  # fmt: skip

        def current(versions: History) -> Version:
            if versions.current is None:
                raise InputError("no version yet", hint="Plan and Render first, or Load a plan")
            return versions.current

        @_shown_errors
        def on_plan(text: str, seconds: float, mood: str, progress=gr.Progress()):
            plan = studio.plan(text, float(seconds or 0), mood, progress=_progress_into(progress))
            return plan, plan_rows(plan), _png(studio.plan_picture(plan))

        @_shown_errors
        def on_render(plan: Plan | None, rows: Any, versions: History, progress=gr.Progress()):
            if plan is None:
                raise InputError("nothing to render yet", hint="write a prompt and press Plan, or Load a plan")
            edited = plan_from_rows(plan, _rows(rows))
            version = studio.render(edited, progress=_progress_into(progress))
            versions.push(version)
            return (*show(version, studio.read_version(version), versions), versions)

        def on_table_edit(plan: Plan | None, rows: Any) -> None:
            """Each edit of the table checked at once: a bad value is a warning on the page (Render refuses it)."""
            if plan is not None:
                try:
                    plan_from_rows(plan, _rows(rows))
                except AudiostoryError as err:
                    gr.Warning(str(err))

        @_shown_errors
        def on_load(name: str, versions: History):
            version, plan = studio.load(name)
            if version is None:  # a plan without audio: into the table, to render
                unchanged = [gr.update()] * (len(shown) - 3)
                return (plan, plan_rows(plan), _png(studio.plan_picture(plan)), *unchanged, versions)
            versions.push(version)
            return (*show(version, plan, versions), versions)

        @_shown_errors
        def on_undo(versions: History):
            version = versions.undo()
            return (*show(version, studio.read_version(version), versions), versions)

        @_shown_errors
        def on_play(versions: History, number: float):
            return studio.event_audio(current(versions), _event(number))

        def edit(operation):
            @_shown_errors
            def on_edit(versions: History, *args, progress=gr.Progress()):
                version = operation(current(versions), *args, progress=_progress_into(progress))
                versions.push(version)
                return (*show(version, studio.read_version(version), versions), versions)

            return on_edit

        model_event = dict(concurrency_id=MODELS, concurrency_limit=1)
        plan_button.click(on_plan, [prompt, duration, tone], [plan_state, table, picture], api_name="plan",
                          **model_event)  # fmt: skip
        render_button.click(on_render, [plan_state, table, history], [*shown, history], api_name="render",
                            **model_event)  # fmt: skip
        table.input(on_table_edit, [plan_state, table], None, api_visibility="private")
        load_button.click(on_load, [plans, history], [*shown, history], api_name="load")
        undo_button.click(on_undo, [history], [*shown, history], api_name="undo")
        play_button.click(on_play, [history, event], [event_audio], api_name="play_event")
        reroll_button.click(edit(lambda v, n, **kw: studio.reroll(v, _event(n), **kw)), [history, event],
                            [*shown, history], api_name="reroll", **model_event)  # fmt: skip
        vary_button.click(edit(lambda v, n, s, **kw: studio.vary(v, _event(n), float(s), **kw)),
                          [history, event, strength], [*shown, history], api_name="vary", **model_event)  # fmt: skip
        caption_button.click(edit(lambda v, n, c, **kw: studio.recaption(v, _event(n), c, **kw)),
                             [history, event, caption], [*shown, history], api_name="recaption",
                             **model_event)  # fmt: skip
        extend_button.click(edit(lambda v, p, s, **kw: studio.extend(v, p, float(s or 0), **kw)),
                            [history, then, then_s], [*shown, history], api_name="extend", **model_event)  # fmt: skip
        page.load(lambda: gr.Dropdown(choices=studio.folder.plan_files()), None, [plans], api_visibility="private")
    return page


def _rows(value: Any) -> list[list[Any]]:
    """The table's value as rows, whether Gradio hands it over as a DataFrame or as lists."""
    if hasattr(value, "values") and hasattr(value, "columns"):
        return value.values.tolist()
    if isinstance(value, dict) and "data" in value:
        return value["data"]
    return list(value or [])


def _event(number: Any) -> int:
    if number is None or float(number) != int(float(number)):
        raise InputError(f"event # {number!r} is not a whole number")
    return int(float(number))


def _png(data: bytes):
    """PNG bytes as the image Gradio shows (it stores it in its cache, inside the output folder)."""
    from PIL import Image

    return Image.open(io.BytesIO(data))
