"""What the CLI shows: errors as one line, progress bars, the plan table, results and batch summaries.

stdout carries results (paths, or JSON with ``--json``); stderr carries progress, tables and errors. Where
stderr is not a terminal (a log file, CI), tables are plain lines instead: one a row, tab-separated, nothing
cut or wrapped.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from ..errors import AudiostoryError, OptionError
from ..story import Plan, Progress

stderr = Console(stderr=True, highlight=False)
DEBUG_ENV = "AUDIOSTORY_DEBUG"


def one_line(text: str) -> str:
    """``text`` as one line: control characters a user typed (a newline, a carriage return in a file name)
    shown escaped, so an error never spans or overwrites lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@contextmanager
def errors() -> Iterator[None]:
    """The one place errors become messages: one red line on stderr, exit 1."""
    try:
        yield
    except OptionError as err:  # a setting the user gave: a usage error naming its option (exit 2)
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        from .options import usage_error

        raise usage_error(err) from None
    except AudiostoryError as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        stderr.print(f"[bold red]error:[/] {escape(one_line(str(err)))}", soft_wrap=True)  # "[ray]": text, no style
        stderr.print(f"[dim](set {DEBUG_ENV}=1 for the full traceback)[/]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]: no half-written file was left")
        raise typer.Exit(130) from None


class ProgressView:
    """Draws ``story.Progress`` reports as rich bars on stderr: planning, clips, denoising steps."""

    _LABELS = {"load": "loading", "plan": "planning", "render": "clips", "step": "denoising", "mix": "mixing",
               "write": "writing", "replay": "replaying edits"}  # fmt: skip

    def __init__(self) -> None:
        self.bars = RichProgress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=stderr, transient=True,
        )  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, report: Progress) -> None:
        label = self._LABELS.get(report.stage, report.stage)
        description = f"{label}: {report.message}" if report.message else label
        total = report.total or None
        if report.stage not in self.tasks:
            self.tasks[report.stage] = self.bars.add_task(description, total=total)
        self.bars.update(self.tasks[report.stage], completed=report.done, total=total, description=description)


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"plan: {len(plan.events)} events, {plan.total_s:g} s", title_justify="left")
    for column, justify in (("#", "right"), ("start", "right"), ("duration", "right"), ("caption", "left"),
                            ("tone", "left"), ("layer", "right")):  # fmt: skip
        table.add_column(column, justify=justify)
    for e in plan.events:
        table.add_row(str(e.index), f"{e.start_s:.2f}", f"{e.duration_s:.2f}", e.caption, e.tone, str(e.layer))
    return table


def _plain_rows(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table as plain lines for a stderr that is not a terminal: the title, the header, one line a row,
    tab-separated (tabs and line breaks inside a cell become spaces), nothing cut."""
    lines = [title, *("\t".join(" ".join(str(cell).split()) for cell in row) for row in (header, *rows))]
    stderr.file.write("\n".join(lines) + "\n")  # past rich, which would expand the tabs


def show_plan(plan: Plan) -> None:
    if not stderr.is_terminal:
        rows = [(e.index, f"{e.start_s:.2f}", f"{e.duration_s:.2f}", e.caption, e.tone, e.layer) for e in plan.events]
        _plain_rows(f"plan: {len(plan.events)} events, {plan.total_s:g} s",
                    ("#", "start", "duration", "caption", "tone", "layer"), rows)  # fmt: skip
    else:
        stderr.print(plan_table(plan))
    if plan.tone:
        stderr.print(f"tone: {plan.tone}")
    if plan.reasoning:
        stderr.print(f"reasoning: {plan.reasoning}", soft_wrap=True)
    stderr.print(f"total: {plan.total_s:g} s")


def print_result(result, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"audio": str(result.audio_path), "plan": str(result.plan_path),
                               "duration_s": result.duration_s, "sample_rate": result.sample_rate}))  # fmt: skip
    else:
        typer.echo(str(result.audio_path))
    stderr.print(f"wrote {result.audio_path} ({result.duration_s:.2f} s) and {result.plan_path}", soft_wrap=True)


_STATUS_COLOURS = {"ok": "green", "skipped": "cyan", "failed": "red"}


def show_record(record) -> None:
    """One batch line's outcome on stderr, the moment it is known."""
    colour = _STATUS_COLOURS[record.status]
    what = record.error if record.status == "failed" else f"{record.status}: {record.output}"
    stderr.print(f"[{colour}]line {record.line}[/]: {escape(one_line(what))}", soft_wrap=True)


def show_actors(plan) -> None:
    """How a Ray run spreads the stories."""
    per_actor = "1 GPU" if plan.num_gpus else f"{plan.num_cpus:g} CPUs"
    stderr.print(f"ray: {plan.actors} story actor(s) on {plan.device}, {per_actor} each")


def show_summary(records, outdir: Path, as_json: bool) -> None:
    """The table on stderr; on stdout each finished story's audio path, or with ``--json`` each record
    exactly as the manifest has it. On a stderr that is not a terminal, plain lines with the whole prompt."""
    columns = ("line", "prompt", "status", "output or error", "seconds")
    wheres = [r.error if r.status == "failed" else str(outdir / r.output) for r in records]
    if not stderr.is_terminal:
        rows = [(r.line, r.prompt, r.status, where, f"{r.seconds:.1f}") for r, where in zip(records, wheres)]
        _plain_rows("batch summary", columns, rows)
    else:
        table = Table(title="batch summary", title_justify="left")
        for column in columns:
            table.add_column(column)
        for r, where in zip(records, wheres):
            status = f"[{_STATUS_COLOURS[r.status]}]{r.status}[/]"
            table.add_row(str(r.line), escape(r.prompt[:40]), status, escape(where), f"{r.seconds:.1f}")
        stderr.print(table)
    counts = {status: sum(r.status == status for r in records) for status in _STATUS_COLOURS}
    counted = ", ".join(f"{n} {status}" for status, n in counts.items())
    stderr.print(f"{counted}; manifest: {outdir / 'manifest.jsonl'}", soft_wrap=True)
    for r in records:
        if as_json:
            typer.echo(r.to_json())
        elif r.status != "failed":
            typer.echo(str(outdir / r.output))


def show_shots(timeline) -> None:
    """One row per shot (or cue): where it is and what is seen there."""
    from ..inputs.timelines import clock

    table = Table(title=f"{timeline.source}: {len(timeline.cues)} shots", title_justify="left")
    for column, justify in (("#", "right"), ("start", "right"), ("end", "right"), ("seconds", "right"),
                            ("what is seen", "left")):  # fmt: skip
        table.add_column(column, justify=justify)
    for cue in timeline.cues:
        table.add_row(str(cue.index + 1), clock(cue.start_s), clock(cue.end_s), f"{cue.duration_s:.2f}", escape(cue.text))
    stderr.print(table)
