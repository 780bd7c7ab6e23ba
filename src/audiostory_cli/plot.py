"""Pictures of a story: its events as labelled blocks on their layers, over the mixed audio's spectrogram.

``audiostory plot STORY.plan.json`` and ``generate/render --plot`` draw with matplotlib (the ``plot`` extra) on
a ``Figure`` of their own with the Agg canvas: no pyplot, no backend or style set for the process. The layout
is measured in inches, so it reads the same for a 10 s and a 10 min story: the figure widens with the story,
each block carries its event number and as much of its caption as fits, and a key under the timeline gives
every event in full (number, times, caption, layer, tone). Joins are dashed lines, crossfades shaded spans.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import audio_io, mix
from .audio_io import find_audio, story_stem  # noqa: F401  (where the CLI and the studio find them)
from .errors import InputError
from .settings import DEFAULT_CROSSFADE_S
from .story import Event, Plan

PLOT_EXTENSIONS = (".png", ".svg")  # picture formats, by the output's extension
PLOT_EXTRA_HINT = 'install it with `pip install "audiostory-cli[plot]"`'
AUDIO_LENGTH_TOLERANCE_S = 0.1  # an audio file this close to the plan's total is its audio (encoder padding)

# --- layout, in inches and points --------------------------------------------------------------------------
DPI = 100  # pixels per inch of a PNG: a 3-minute story is ~2000 px wide
MIN_WIDTH_IN, MAX_WIDTH_IN = 11.0, 26.0  # figure width: grows with the story's length and event count
LEFT_IN, RIGHT_IN = 1.05, 0.35  # margins beside the time axis (the left one holds the lane names)
SPECTROGRAM_IN = 1.9  # height of the spectrogram panel
FOREGROUND_LANE_IN, BED_LANE_IN = 0.95, 0.55  # lane heights: layer 0 holds the most text
AXIS_IN = 0.55  # tick labels and the axis name under the lanes
KEY_COLUMN_MIN_IN = 6.0  # narrowest column of the key
KEY_NUMBER_IN = 0.3  # width of the event number in front of each key entry
TITLE_PT, TEXT_PT, BLOCK_PT, SMALL_PT = 13, 9, 8.5, 7.5  # font sizes
LINE_SPACING = 1.3  # line height / font size
BLOCK_LINE_SPACING = 1.2  # tighter inside the blocks
BLOCK_PAD_IN = 0.05  # text inset inside a block
MIN_CAPTION_IN = 0.45  # narrower blocks show their number alone (the key has the caption)
NUMBER_H_IN = 0.13  # narrower blocks have their number above the lanes
SPECTROGRAM_BANDS = 128  # log-spaced frequency rows of the spectrogram image
SPECTROGRAM_FLOOR_DB = 80.0  # dynamic range shown below the loudest band
QUIETEST_TOP_DB = -60.0  # the colour scale's top is the loudest band, or this for quieter audio
LOWEST_HZ = 40.0  # bottom of the spectrogram
LAYER_NAMES = {0: "foreground", 1: "bed 1", 2: "bed 2", 3: "bed 3"}
# per layer: two fills alternating along the lane (so neighbours stay apart) and the edge/number colour
LAYER_COLOURS = {
    0: (("#cfe0f5", "#b4cdee"), "#2c5a96"),
    1: (("#d6eed4", "#bfe2bc"), "#2f7a36"),
    2: (("#fbe5cb", "#f6d2a8"), "#a35c12"),
    3: (("#e8dcf3", "#d8c5ec"), "#6a3d9a"),
}
JOIN_COLOUR = "#222222"


@dataclass(frozen=True)
class StoryAudio:
    """The mixed audio drawn under the timeline."""

    wave: np.ndarray  # float [channels, samples]
    sample_rate: int  # samples per second
    name: str = ""  # the file it came from, named in the subtitle


# --- paths ---------------------------------------------------------------------------------------------------


def import_matplotlib():
    """The ``matplotlib`` package, or one line naming the install command."""
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401  (the Agg canvas every picture is drawn on)
    except ImportError:
        raise InputError("drawing a story needs matplotlib, which is not installed", hint=PLOT_EXTRA_HINT) from None
    return matplotlib


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """A picture path to write: .png or .svg, and what ``audio_io.check_target`` checks of every file written (no
    NUL byte, a name that fits with its partial name, a writable folder that exists, not a folder); resolved."""
    name = Path(os.fspath(path).replace("\x00", "")).name
    suffix = Path(name).suffix
    if suffix.lower() not in PLOT_EXTENSIONS:
        what = f"extension {suffix}" if suffix else "no extension"
        raise InputError(f"picture {name[:80]} has {what}: use one of {', '.join(PLOT_EXTENSIONS)}")
    return audio_io.check_target(path, "picture path")


def plot_path_for(path: str | os.PathLike[str]) -> Path:
    """Where a story's picture goes by default: ``<name>.png`` beside its plan or audio file."""
    path = Path(path)
    return path.with_name(story_stem(path) + ".png")


def read_story_audio(path: str | os.PathLike[str], plan: Plan) -> StoryAudio:
    """Read a story's audio and check that it is as long as the plan (else it is another story's audio); of a
    story that starts with the recording it continues, the story's part."""
    path = Path(path)
    wave, sample_rate = audio_io.read_audio(path)
    story = round(plan.total_s * sample_rate)
    if plan.continue_from is not None and plan.continue_from.include_input and wave.shape[-1] > story:
        wave = wave[:, wave.shape[-1] - story :]  # the recording it continues comes first: draw the story
    length_s = wave.shape[-1] / sample_rate
    if abs(length_s - plan.total_s) > AUDIO_LENGTH_TOLERANCE_S:
        raise InputError(
            f"{path.name} is {length_s:.2f} s long but its plan is {plan.total_s:g} s: it is not this plan's audio",
            hint="render the plan again, or draw the plan alone with --no-audio",
        )
    return StoryAudio(wave, sample_rate, path.name)


# --- writing -------------------------------------------------------------------------------------------------


def write_plot(plan: Plan, path: str | os.PathLike[str], audio: StoryAudio | None = None) -> Path:
    """Draw ``plan`` (over ``audio`` when given) into ``path`` atomically; .png or .svg by its extension."""
    path = check_plot_path(path)
    data = plot_bytes(plan, path.suffix.lower().lstrip("."), audio)
    return audio_io.atomic_write(path, lambda file: file.write(data))


def plot_bytes(plan: Plan, file_format: str = "png", audio: StoryAudio | None = None) -> bytes:
    """The picture as the bytes of a ``png`` or ``svg`` file."""
    import matplotlib

    figure = draw_story(plan, audio)
    buffer = io.BytesIO()
    # svg.fonttype "none": captions stay text in an SVG (searchable, selectable), not glyph outlines
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "audiostory"}):
        metadata = {"Date": None} if file_format == "svg" else {}  # same plan, same file
        figure.savefig(buffer, format=file_format, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


# --- drawing -------------------------------------------------------------------------------------------------


def draw_story(plan: Plan, audio: StoryAudio | None = None):
    """The story as a ``matplotlib.figure.Figure``: title, spectrogram (with audio), lanes, key."""
    import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # 1. Sizes: the width follows the story; every height is measured from the text it holds
    width_in = figure_width_in(plan)
    plot_w = width_in - LEFT_IN - RIGHT_IN
    layers = sorted({e.layer for e in plan.events})
    lane_heights = [FOREGROUND_LANE_IN if layer == 0 else BED_LANE_IN for layer in layers]
    lanes_h = sum(lane_heights)
    title_lines = _title_lines(plan, plot_w)
    title_h = 0.2 + len(title_lines) * TITLE_PT * LINE_SPACING / 72 + TEXT_PT * LINE_SPACING / 72
    columns, span_w = _key_columns(plan, plot_w)
    key_rows = max(sum(len(lines) for _, lines in column) for column in columns)
    key_h = 0.35 + key_rows * TEXT_PT * LINE_SPACING / 72
    spectrogram_h = SPECTROGRAM_IN + 0.1 if audio is not None else 0.0
    s_per_in = plan.total_s / plot_w
    tiny = any(e.duration_s / s_per_in < NUMBER_H_IN for e in plan.events)  # numbers go above the lanes
    numbers_h = 0.3 if tiny else 0.0
    height_in = title_h + spectrogram_h + numbers_h + lanes_h + AXIS_IN + key_h

    figure = Figure(figsize=(width_in, height_in), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    inches = figure.dpi_scale_trans

    # 2. Title: the prompt, then what the picture shows
    y = height_in - 0.15
    for line in title_lines:
        figure.text(LEFT_IN, y, line, transform=inches, va="top", fontsize=TITLE_PT, parse_math=False)
        y -= TITLE_PT * LINE_SPACING / 72
    figure.text(LEFT_IN, y, _subtitle(plan, audio), transform=inches, va="top", fontsize=TEXT_PT,
                color="#444444", parse_math=False)  # fmt: skip

    # 3. The spectrogram, with the joins across it
    lanes_top = height_in - title_h - spectrogram_h - numbers_h
    crossfade_s = plan.render.crossfade_s if plan.render is not None else DEFAULT_CROSSFADE_S
    fades = mix.join_fade_s(plan, crossfade_s)
    joins = mix.joins(plan)
    if audio is not None:
        rect = [LEFT_IN / width_in, (lanes_top + numbers_h + 0.1) / height_in, plot_w / width_in,
                SPECTROGRAM_IN / height_in]  # fmt: skip
        spectrogram = figure.add_axes(rect)
        _draw_spectrogram(spectrogram, plan, audio, columns=int(plot_w * DPI))
        from matplotlib.patheffects import withStroke

        for before, _ in joins:  # white dashes edged in black: seen on dark and on bright bands
            spectrogram.axvline(before.end_s, color="white", linestyle=(0, (4, 3)), linewidth=1.2,
                                path_effects=[withStroke(linewidth=2.6, foreground="black")])  # fmt: skip

    # 4. The lanes: one per layer, blocks at their times, crossfades shaded
    axes = figure.add_axes([LEFT_IN / width_in, (lanes_top - lanes_h) / height_in, plot_w / width_in,
                            lanes_h / height_in])  # fmt: skip
    _draw_lanes(axes, plan, layers, lane_heights, plot_w, joins, fades)

    # 5. The key: every event in full
    _draw_key(figure, columns, span_w, top_in=lanes_top - lanes_h - AXIS_IN, left_in=LEFT_IN,
              column_w_in=plot_w / len(columns))  # fmt: skip
    return figure


def figure_width_in(plan: Plan) -> float:
    """Wider for longer stories and more events: about 0.5 in an event and 0.03 in a second, within bounds."""
    return float(np.clip(6.0 + 0.5 * len(plan.events) + 0.03 * plan.total_s, MIN_WIDTH_IN, MAX_WIDTH_IN))


def _title_lines(plan: Plan, width_in: float) -> list[str]:
    """The prompt in at most two lines."""
    lines = _wrap(plan.prompt or "(no prompt)", width_in, TITLE_PT)
    if len(lines) > 2:
        lines = lines[:1] + [_ellipsize(" ".join(lines[1:]), width_in, TITLE_PT)]
    return lines


def _subtitle(plan: Plan, audio: StoryAudio | None) -> str:
    parts = [f"{len(plan.events)} event{'s' if len(plan.events) != 1 else ''}, {_clock(plan.total_s)}"]
    if plan.tone:
        parts.append(f"tone: {plan.tone}")
    parts.append(f"over the spectrogram of {audio.name}" if audio is not None and audio.name else
                 "over its audio's spectrogram" if audio is not None else "the plan alone (no audio)")  # fmt: skip
    parts.append("dashed: joins, shaded: crossfades")
    return "  ·  ".join(parts)


def _draw_spectrogram(axes, plan: Plan, audio: StoryAudio, *, columns: int) -> None:
    image, low_hz, high_hz = log_spectrogram(audio.wave, audio.sample_rate, columns=columns)
    top_db = max(float(image.max()), QUIETEST_TOP_DB)  # silence stays dark instead of filling the scale
    end_s = audio.wave.shape[-1] / audio.sample_rate
    axes.imshow(image, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                extent=(0.0, end_s, math.log10(low_hz), math.log10(high_hz)),
                vmin=top_db - SPECTROGRAM_FLOOR_DB, vmax=top_db)  # fmt: skip
    axes.set_xlim(0.0, plan.total_s)
    ticks = [hz for hz in (100, 1000, 10000) if low_hz <= hz <= high_hz]
    axes.set_yticks([math.log10(hz) for hz in ticks], [f"{hz // 1000} kHz" if hz >= 1000 else f"{hz} Hz" for hz in ticks])
    axes.tick_params(labelsize=SMALL_PT, bottom=False, labelbottom=False)
    axes.set_ylabel("mix", fontsize=TEXT_PT)


def log_spectrogram(wave: np.ndarray, sample_rate: int, *, columns: int, bands: int = SPECTROGRAM_BANDS):
    """Power of the mono mix in ``bands`` log-spaced bands x ``columns`` frames spread over the wave, in dB
    where a full-scale sine peaks at 0; returns (image [bands, columns], lowest Hz, highest Hz)."""
    mono = np.asarray(wave, dtype=np.float32).mean(axis=0)
    n_fft = 2048 if sample_rate >= 32000 else 1024
    columns = max(1, min(columns, mono.size // 64 or 1))
    centres = ((np.arange(columns) + 0.5) * mono.size / columns).astype(np.int64)
    padded = np.pad(mono, n_fft // 2)
    frames = padded[centres[:, None] + np.arange(n_fft)[None, :]] * np.hanning(n_fft).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [columns, n_fft // 2 + 1]
    bin_hz = sample_rate / n_fft
    low_hz, high_hz = max(LOWEST_HZ, 2 * bin_hz), sample_rate / 2
    edges = np.geomspace(low_hz, high_hz, bands + 1) / bin_hz  # band edges in (fractional) bins
    lo = np.floor(edges[:-1]).astype(np.int64)
    hi = np.maximum(lo + 1, np.ceil(edges[1:]).astype(np.int64)).clip(max=power.shape[1])
    cumulative = np.concatenate([np.zeros((columns, 1)), np.cumsum(power, axis=1)], axis=1)
    band_power = (cumulative[:, hi] - cumulative[:, lo]) / (hi - lo)
    full_scale = (np.hanning(n_fft).sum() / 2) ** 2  # the peak bin of a full-scale sine: 0 dB
    return 10 * np.log10(band_power.T / full_scale + 1e-20), low_hz, high_hz


def _draw_lanes(axes, plan: Plan, layers: list[int], heights: list[float], plot_w: float, joins, fades) -> None:
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    total_s = plan.total_s
    s_per_in = total_s / plot_w
    lanes_h = sum(heights)
    axes.set_xlim(0.0, total_s)
    axes.set_ylim(0.0, lanes_h)  # y in inches, top lane first
    tops = {layer: lanes_h - sum(heights[:i]) for i, layer in enumerate(layers)}
    step = _tick_step(total_s, plot_w)
    axes.xaxis.set_major_locator(MultipleLocator(step))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda t, _: _clock(t, decimals=0)))
    axes.tick_params(axis="x", labelsize=SMALL_PT + 0.5)
    axes.set_xlabel("time (m:ss)" if total_s >= 60 else "time (s)", fontsize=TEXT_PT)
    axes.grid(axis="x", color="#dddddd", linewidth=0.6, zorder=0)
    axes.set_axisbelow(True)
    axes.set_yticks([tops[layer] - h / 2 for layer, h in zip(layers, heights)], [LAYER_NAMES[layer] for layer in layers])
    axes.tick_params(axis="y", length=0, labelsize=TEXT_PT)
    for spine in ("top", "right"):
        axes.spines[spine].set_visible(False)
    for layer, height in zip(layers[1:], heights[1:]):
        axes.axhline(tops[layer], color="#bbbbbb", linewidth=0.6)

    above = 0  # numbers of blocks too narrow to hold them go above the lane, alternating in height
    for layer, height in zip(layers, heights):
        fills, edge = LAYER_COLOURS[layer]
        top = tops[layer]
        ordered = sorted((e for e in plan.events if e.layer == layer), key=lambda e: e.start_s)
        for position, event in enumerate(ordered):
            bottom, block_h = top - height + 0.04, height - 0.08
            axes.add_patch(Rectangle((event.start_s, bottom), event.duration_s, block_h, facecolor=fills[position % 2],
                                     edgecolor=edge, linewidth=0.8, zorder=2, gid=f"event-{event.index}"))  # fmt: skip
            inner_w = event.duration_s / s_per_in - 2 * BLOCK_PAD_IN
            x, y = event.start_s + BLOCK_PAD_IN * s_per_in, top - 0.04 - BLOCK_PAD_IN
            number = str(event.index)
            number_w = _text_width_in(number + " ", BLOCK_PT, bold=True)
            bold = dict(fontweight="bold", color=edge, zorder=4)
            if inner_w < MIN_CAPTION_IN:  # room for the number alone: upright, on its side, or above the lanes
                middle = event.start_s + event.duration_s / 2
                if inner_w >= number_w:
                    axes.text(x, y, number, va="top", ha="left", fontsize=BLOCK_PT, **bold)
                elif event.duration_s / s_per_in >= NUMBER_H_IN:
                    axes.text(middle, y, number, va="top", ha="center", rotation=90, fontsize=SMALL_PT, **bold)
                else:
                    axes.text(middle, lanes_h + 0.03 + (0.13 if above % 2 else 0.0), number, ha="center",
                              va="bottom", fontsize=SMALL_PT, clip_on=False, **bold)  # fmt: skip
                    above += 1
                continue
            axes.text(x, y, number, va="top", ha="left", fontsize=BLOCK_PT, **bold)
            lines = _block_lines(event.caption, inner_w, inner_w - number_w, block_h - 2 * BLOCK_PAD_IN)
            text = dict(va="top", ha="left", fontsize=BLOCK_PT, color="#111111", zorder=4, parse_math=False)
            if lines[0]:
                axes.text(x + number_w * s_per_in, y, lines[0], gid=f"event-{event.index}-block", **text)
            if len(lines) > 1:
                axes.text(x, y - BLOCK_PT * BLOCK_LINE_SPACING / 72, "\n".join(lines[1:]), linespacing=BLOCK_LINE_SPACING,
                          gid=f"event-{event.index}-block-more", **text)  # fmt: skip
    for before, after in joins:
        top = tops[before.layer]
        height = heights[layers.index(before.layer)]
        fade_s = fades.get(before.index, 0.0)
        if fade_s > 0:
            axes.add_patch(Rectangle((before.end_s, top - height + 0.04), fade_s, height - 0.08, facecolor="black",
                                     alpha=0.18, linewidth=0, zorder=3))  # fmt: skip
        axes.plot([before.end_s] * 2, [top - height + 0.01, top - 0.01], color=JOIN_COLOUR,
                  linestyle=(0, (3, 2)), linewidth=1.0, zorder=5)  # fmt: skip


def _block_lines(caption: str, width_in: float, first_width_in: float, height_in: float) -> list[str]:
    """As much of ``caption`` as fits a block: the first line beside the event number, then full lines, the
    last one cut with "…" when the caption goes on."""
    max_lines = max(1, int(height_in * 72 // (BLOCK_PT * BLOCK_LINE_SPACING)))
    lines = _wrap(caption, width_in, BLOCK_PT, first_width_in=first_width_in)
    if len(lines) > max_lines:
        last_width = first_width_in if max_lines == 1 else width_in
        lines = lines[: max_lines - 1] + [_ellipsize(" ".join(lines[max_lines - 1 :]), last_width, BLOCK_PT)]
    return lines


def _key_columns(plan: Plan, width_in: float) -> tuple[list[list[tuple[Event, list[str]]]], float]:
    """Every event's key entry (its caption, length, layer and tone wrapped to its column), spread over as many
    columns as the width holds so that the columns end near the same height; and the width of the times."""
    n_columns = max(1, min(len(plan.events), int(width_in // KEY_COLUMN_MIN_IN)))
    span_w = max(_text_width_in(_key_span(e), TEXT_PT) for e in plan.events) + 0.12
    text_w = width_in / n_columns - KEY_NUMBER_IN - span_w - 0.2
    entries = [(e, _wrap(_key_text(e), text_w, TEXT_PT)) for e in plan.events]
    total = sum(len(lines) for _, lines in entries)
    columns: list[list[tuple[Event, list[str]]]] = [[]]
    used = 0
    for entry in entries:
        if columns[-1] and len(columns) < n_columns and used + len(entry[1]) / 2 > total * len(columns) / n_columns:
            columns.append([])
        columns[-1].append(entry)
        used += len(entry[1])
    return columns, span_w


def _key_span(event: Event) -> str:
    return f"{_clock(event.start_s)}–{_clock(event.end_s)}"


def _key_text(event: Event) -> str:
    where = "" if event.layer == 0 else f", {LAYER_NAMES[event.layer]}"
    tone = f", {event.tone}" if event.tone else ""
    return f"{event.caption}  ({event.duration_s:g} s{where}{tone})"


def _draw_key(figure, columns, span_w: float, *, top_in: float, left_in: float, column_w_in: float) -> None:
    inches = figure.dpi_scale_trans
    line_in = TEXT_PT * LINE_SPACING / 72
    for c, column in enumerate(columns):
        x = left_in + c * column_w_in
        y = top_in - 0.1
        for event, lines in column:
            colour = LAYER_COLOURS[event.layer][1]
            figure.text(x + KEY_NUMBER_IN - 0.08, y, str(event.index), transform=inches, va="top", ha="right",
                        fontsize=TEXT_PT, fontweight="bold", color=colour)  # fmt: skip
            figure.text(x + KEY_NUMBER_IN, y, _key_span(event), transform=inches, va="top", ha="left",
                        fontsize=TEXT_PT, color="#555555")  # fmt: skip
            figure.text(x + KEY_NUMBER_IN + span_w, y, "\n".join(lines), transform=inches, va="top", ha="left",
                        fontsize=TEXT_PT, linespacing=LINE_SPACING, parse_math=False, gid=f"event-{event.index}-key")  # fmt: skip
            y -= len(lines) * line_in


# --- text ----------------------------------------------------------------------------------------------------


def _wrap(text: str, width_in: float, size_pt: float, *, first_width_in: float | None = None) -> list[str]:
    """Greedy word wrap by measured width (as Agg draws it); the first line may be narrower; a word longer than
    a line is cut."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        limit = first_width_in if first_width_in is not None and not lines else width_in
        candidate = f"{line} {word}" if line else word
        if _text_width_in(candidate, size_pt) <= limit:
            line = candidate
            continue
        if line or limit < width_in:
            lines.append(line)  # an empty first line: not even the first word fits beside the number
            limit = width_in
        while _text_width_in(word, size_pt) > limit and len(word) > 1:
            cut = _fit_chars(word, limit, size_pt)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines or [""]


def _ellipsize(text: str, width_in: float, size_pt: float) -> str:
    """``text`` cut to fit one line of ``width_in``, with "…" where it was cut ("" if not even that fits)."""
    if _text_width_in(text, size_pt) <= width_in:
        return text
    cut = _fit_chars(text, width_in, size_pt, suffix="…")
    shown = text[:cut].rstrip() + "…"
    return shown if _text_width_in(shown, size_pt) <= width_in else ""


def _fit_chars(text: str, width_in: float, size_pt: float, suffix: str = "") -> int:
    """Most leading characters of ``text`` that fit ``width_in`` followed by ``suffix`` (at least 1)."""
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if _text_width_in(text[:middle] + suffix, size_pt) <= width_in:
            low = middle
        else:
            high = middle - 1
    return low


@lru_cache(maxsize=4096)
def _text_width_in(text: str, size_pt: float, bold: bool = False) -> float:
    """Width of ``text`` as Agg draws it at ``size_pt``, in inches."""
    from matplotlib.font_manager import FontProperties

    font = FontProperties(size=size_pt, weight="bold" if bold else "normal")
    width_px, _, _ = _renderer().get_text_width_height_descent(text, font, ismath=False)
    return width_px / DPI


@lru_cache(maxsize=1)
def _renderer():
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(16, 16, DPI)


def _tick_step(total_s: float, plot_w_in: float) -> float:
    """The first of 1, 2, 5, 10, 15, 30 s, 1, 2, 5 min giving at most one tick per 0.8 inch."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300):
        if total_s / step <= plot_w_in / 0.8:
            return float(step)
    return 600.0


def _clock(seconds: float, decimals: int = 1) -> str:
    """``75.5`` -> ``1:15.5``, ``180`` -> ``3:00``: m:ss, tenths only where the time has them."""
    seconds = round(max(0.0, float(seconds)), decimals)
    minutes, rest = divmod(seconds, 60)
    shown = decimals if rest != round(rest) else 0
    return f"{int(minutes)}:{rest:0{3 + shown if shown else 2}.{shown}f}"


__all__ = [
    "PLOT_EXTENSIONS",
    "StoryAudio",
    "check_plot_path",
    "draw_story",
    "find_audio",
    "import_matplotlib",
    "log_spectrogram",
    "plot_bytes",
    "plot_path_for",
    "read_story_audio",
    "story_stem",
    "write_plot",
]
