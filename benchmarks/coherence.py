"""Benchmark: are long stories coherent across event boundaries?

Renders one plan with the same seeds in several configurations (plain clips, residual coherence, continuation,
both) and scores every foreground join with ``audiostory_cli.coherence``; prints one table row per
configuration on stdout, notes on stderr, and every per-join number to ``--out`` JSON.

Data flow: ``plan.json -> render_plan(decoder, plan, options) per seed x configuration -> JoinScore,
loudness jump per join -> table (+ JSON)``.

    python benchmarks/coherence.py                      # tiny random decoder: tests the machinery only
    python benchmarks/coherence.py --decoder checkpoints/TangoFlux --steps 50 --seeds 0,1,2 --out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from audiostory_cli import audio_io, mix, registry
from audiostory_cli.coherence import boundary_discontinuity, loudness_jumps_db
from audiostory_cli.errors import AudiostoryError
from audiostory_cli.conditioning.residual import ResidualConditioner
from audiostory_cli.pipeline import render_plan
from audiostory_cli.settings import RenderOptions
from audiostory_cli.story import Plan, check_seed, load_plan

DEFAULT_PLAN = Path(__file__).resolve().parent.parent / "examples" / "plan.json"  # a 24 s story, 3 joins
DEFAULT = object()  # stands for "the coherence strength the pipeline defaults to" in CONFIGURATIONS
CONFIGURATIONS = (  # (name, RenderOptions fields it sets); a field RenderOptions lacks may only be "off"
    ("baseline", {"coherence": 0.0, "continuation": False}),
    ("residual", {"coherence": DEFAULT, "continuation": False}),
    ("continuation", {"coherence": 0.0, "continuation": True}),
    ("both", {"coherence": DEFAULT, "continuation": True}),
)
OFF = {"coherence": 0.0, "continuation": False}  # values that mean "today's behaviour", so may be dropped
FALLBACK_COHERENCE = 0.5  # residual strength when RenderOptions.coherence defaults to 0 (off) or is absent
PROG = "coherence"  # prefix of every stderr line


# --- command line ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/coherence.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plan", type=Path, default=DEFAULT_PLAN, help="plan JSON to render (default examples/plan.json)"
    )
    parser.add_argument(
        "--decoder", help="decoder folder or reference; default: a tiny random decoder built in a temp folder"
    )
    parser.add_argument("--steps", type=_positive_int, default=8, help="flow-matching steps per clip (default 8)")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated base seeds (default 0,1,2)")
    parser.add_argument(
        "--coherence", type=float, help="strength for the residual configurations (default: the pipeline's)"
    )
    parser.add_argument(
        "--context", type=_positive_float, default=0.25, help="seconds of audio on each side of a join (default 0.25)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (the tiny decoder always runs on cpu)")
    parser.add_argument("--out", type=Path, help="write every per-join number to this JSON file")
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds > 0")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
        for seed in seeds:
            check_seed(seed)
    except (ValueError, AudiostoryError) as err:
        raise argparse.ArgumentTypeError(f"{text!r}: must be comma-separated seeds, e.g. 0,1,2 ({err})") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given")
    return seeds


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# --- configurations -------------------------------------------------------------------------------------


def configurations(coherence: float | None) -> list[tuple[str, dict]]:
    """The configurations RenderOptions can express today, with a stderr note for each one skipped."""
    known = {f.name: f for f in dataclasses.fields(RenderOptions)}
    strength = coherence if coherence is not None else default_coherence(known)
    chosen = []
    for name, fields in CONFIGURATIONS:
        fields = {key: strength if value is DEFAULT else value for key, value in fields.items()}
        missing = sorted(key for key, value in fields.items() if key not in known and value != OFF[key])
        if missing:
            note(f"skipping '{name}': RenderOptions has no field {', '.join(missing)} yet")
            continue
        chosen.append((name, {key: value for key, value in fields.items() if key in known}))
    return chosen


def default_coherence(known: dict) -> float:
    """RenderOptions' default coherence when it is on (> 0), else ``FALLBACK_COHERENCE``."""
    field = known.get("coherence")
    default = getattr(field, "default", dataclasses.MISSING)
    if isinstance(default, (int, float)) and default > 0:
        return float(default)
    return FALLBACK_COHERENCE


# --- rendering and scoring ------------------------------------------------------------------------------


def foreground_joins(plan: Plan, crossfade_s: float) -> list[tuple[float, float]]:
    """``(boundary_s, crossfade_s)`` of every layer-0 event followed by another one starting where it ends."""
    fades = mix.join_fade_s(plan, crossfade_s)
    return [(e.end_s, fades[e.index]) for e in plan.foreground() if e.index in fades]


def score_track(track, joins, context_s: float) -> list[dict]:
    """One record per join: spectral change across it and inside its clips, and its loudness jump."""
    boundaries, gaps = [b for b, _ in joins], [g for _, g in joins]
    scores = boundary_discontinuity(track.wave, track.sample_rate, boundaries, context_s=context_s, gap_s=gaps)
    jumps = loudness_jumps_db(track.wave, track.sample_rate, boundaries, gap_s=gaps)
    return [
        {**dataclasses.asdict(score), "crossfade_s": gap, "loudness_jump_db": jump}
        for score, gap, jump in zip(scores, gaps, jumps)
    ]


def run_all(decoder, plan: Plan, configs, args) -> tuple[list[dict], list[dict]]:
    """Render and score every seed x configuration; seeds outside, so slow drift hits every configuration."""
    base = RenderOptions(steps=args.steps)
    joins = foreground_joins(plan, base.crossfade_s)
    render_plan(decoder, plan, dataclasses.replace(base, steps=1), ResidualConditioner(base.coherence))  # warm-up: first-call costs land on no row
    join_rows, render_rows = [], []
    for seed in args.seeds:
        for name, fields in configs:
            options = dataclasses.replace(base, seed=seed, **fields)
            started = time.perf_counter()
            track = render_plan(decoder, plan, options, ResidualConditioner(options.coherence)).track
            render_s = time.perf_counter() - started
            render_rows.append({"configuration": name, "seed": seed, "render_s": render_s})
            join_rows += [
                {"configuration": name, "seed": seed, **row} for row in score_track(track, joins, args.context)
            ]
            note(f"seed {seed} {name}: rendered in {render_s:.2f} s")
    return join_rows, render_rows


# --- summary --------------------------------------------------------------------------------------------

COLUMNS = (  # (header, summary key, format)
    ("configuration", "configuration", "{}"),
    ("joins", "joins", "{}"),
    ("across B", "across_mean", "{:.3f}"),
    ("inside B", "inside_mean", "{:.3f}"),
    ("ratio mean", "ratio_mean", "{:.2f}"),
    ("ratio max", "ratio_max", "{:.2f}"),
    ("jump dB mean", "jump_db_mean", "{:.2f}"),
    ("jump dB max", "jump_db_max", "{:.2f}"),
    ("render s", "render_s_mean", "{:.2f}"),
)


def summarize(configs, join_rows: list[dict], render_rows: list[dict]) -> list[dict]:
    """One summary per configuration; joins that were skipped (NaN) are left out of means and maxima."""
    summary = []
    for name, _ in configs:
        rows = [r for r in join_rows if r["configuration"] == name and r["skipped"] is None]
        summary.append({
            "configuration": name,
            "joins": len(rows),
            "across_mean": _stat(np.mean, rows, "across"),
            "inside_mean": _stat(np.mean, rows, "inside"),
            "ratio_mean": _stat(np.mean, rows, "ratio"),
            "ratio_max": _stat(np.max, rows, "ratio"),
            "jump_db_mean": _stat(np.mean, rows, "loudness_jump_db"),
            "jump_db_max": _stat(np.max, rows, "loudness_jump_db"),
            "render_s_mean": float(np.mean([r["render_s"] for r in render_rows if r["configuration"] == name])),
        })  # fmt: skip
    return summary


def _stat(reduce, rows: list[dict], key: str) -> float:
    """``reduce`` over the finite values of ``key`` in ``rows``; NaN when there are none."""
    values = np.array([r[key] for r in rows], dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(reduce(finite)) if finite.size else math.nan


def format_table(summary: list[dict]) -> str:
    """Plain-text table, columns right-aligned (the first left-aligned); NaN shows as n/a."""
    cells = [[header for header, _, _ in COLUMNS]]
    for row in summary:
        cells.append([_cell(fmt, row[key]) for _, key, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(fmt: str, value) -> str:
    return "n/a" if isinstance(value, float) and not math.isfinite(value) else fmt.format(value)


def _json_safe(value):
    """NaN and inf become null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# --- main -----------------------------------------------------------------------------------------------


def load_decoder(args, scratch: Path):
    """The decoder named by ``--decoder``, or a tiny random one built in ``scratch`` (CPU, one thread)."""
    import torch

    from audiostory_cli.devices import resolve_device, resolve_dtype

    if args.decoder:
        device = resolve_device(args.device)
        return registry.load_decoder(args.decoder, device=device, dtype=resolve_dtype("auto", device))
    from transformers.utils import logging as transformers_logging

    from audiostory_cli.testing import build_tiny_decoder

    note("no --decoder: using a tiny decoder with random weights; it tests the machinery, not quality")
    torch.set_num_threads(1)  # tiny models are all overhead: extra threads only wait on each other
    transformers_logging.disable_progress_bar()
    return registry.load_decoder(
        str(build_tiny_decoder(scratch / "decoder")), device=torch.device("cpu"), dtype=torch.float32
    )


def run(args: argparse.Namespace) -> int:
    # 1. The plan and the configurations this RenderOptions can express
    plan = load_plan(args.plan)
    configs = configurations(args.coherence)
    joins = foreground_joins(plan, RenderOptions().crossfade_s)
    if not joins:
        note(f"{args.plan} has no foreground joins to score")
        return 1
    note(
        f"{len(joins)} joins at {', '.join(f'{b:g}' for b, _ in joins)} s; {len(args.seeds)} seeds; {args.steps} steps"
    )
    with tempfile.TemporaryDirectory(prefix="coherence-") as scratch:
        # 2. The decoder
        decoder = load_decoder(args, Path(scratch))
        # 3. Render and score
        join_rows, render_rows = run_all(decoder, plan, configs, args)
    # 4. Report
    summary = summarize(configs, join_rows, render_rows)
    print(format_table(summary))
    skipped = sorted({r["skipped"] for r in join_rows if r["skipped"]})
    for why in skipped:
        note(f"a join was skipped: {why}")
    if args.out:
        report = {
            "plan": str(args.plan), "decoder": args.decoder or "tiny random decoder", "steps": args.steps,
            "seeds": args.seeds, "context_s": args.context, "configurations": dict(configs),
            "summary": summary, "renders": render_rows, "joins": join_rows,
        }  # fmt: skip
        audio_io.write_text_atomic(args.out, json.dumps(_json_safe(report), indent=2) + "\n")
        note(f"per-join numbers written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except AudiostoryError as err:
        note(f"error: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
