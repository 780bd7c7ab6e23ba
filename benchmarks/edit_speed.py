"""Benchmark: what an edit costs against a full render, and how its joins compare.

In one run, on one decoder: render a story of ``--events`` equal foreground events (the full render, timed),
then ``edit --event K --reroll`` of its middle event through ``editing.apply_edit`` (timed), and prints

- the two wall times (models loaded, files written) and their ratio, ``edit / full render``;
- what the edit rendered (clips) and how many samples it spliced, against the story's;
- the join metrics of ``benchmarks/coherence.py`` (spectral change across the join relative to inside the
  clips, and the loudness jump) for the edited event's two joins, next to the same joins of the full render.

    python benchmarks/edit_speed.py                                    # tiny random TangoFlux: the machinery
    python benchmarks/edit_speed.py --decoder sa3-small --size real    # SA3 Small-SFX sizes, random weights
    python benchmarks/edit_speed.py --decoder checkpoints/TangoFlux --steps 50

Random weights make noise, so the join metrics say whether the splice and the re-generated head add a jump,
not whether the sound is good. The table goes to stdout, notes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROG = "edit_speed"
CAPTIONS = (
    "waves break on pebbles and pull back with a hiss",
    "a wooden door creaks open, then footsteps on gravel",
    "rain starts on a tin roof, then a steady downpour",
    "thunder rolls in the distance, gusts rattle the shutters",
    "a ship's bell rings slowly in the harbor",
    "the storm passes, water drips from the gutters and gulls return",
)


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", default="tangoflux", help="a decoder folder, or 'tangoflux' / 'sa3-small' "
                        "to build one with random weights at --size")  # fmt: skip
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny", help="size of the built weights")
    parser.add_argument("--events", type=int, default=10, help="foreground events in the story")
    parser.add_argument("--event-s", type=float, default=6.0, help="seconds per event")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the decoder's own)")
    parser.add_argument("--edit", type=int, default=None, help="index of the event to reroll (default: the middle)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args(argv)


def build(args, scratch: Path) -> str:
    if os.path.isdir(args.decoder):
        return args.decoder
    from audiostory_cli.testing import build_tiny_decoder
    from audiostory_cli.testing.stable_audio_3 import build_tiny_stable_audio_3_small

    note(f"building a {args.size} {args.decoder} with random weights (not timed)")
    if args.decoder == "tangoflux":
        return str(build_tiny_decoder(scratch / "decoder", size=args.size))
    if args.decoder == "sa3-small":
        return str(build_tiny_stable_audio_3_small(scratch / "sa3", size=args.size))
    raise SystemExit(f"{PROG}: --decoder {args.decoder!r}: not a folder, 'tangoflux' or 'sa3-small'")


def join_metrics(wave: np.ndarray, sample_rate: int, plan, crossfade_s: float, index: int) -> list[tuple[float, float]]:
    """(spectral jump ratio, loudness jump dB) at the joins into and out of event ``index``."""
    from audiostory_cli import mix
    from audiostory_cli.coherence import boundary_discontinuity, loudness_jumps_db

    fades = mix.join_fade_s(plan, crossfade_s)
    joins = [(e.end_s, fades[e.index]) for e in plan.foreground() if e.index in fades and e.index in (index - 1, index)]
    bounds, gaps = [b for b, _ in joins], [g for _, g in joins]
    scores = boundary_discontinuity(wave, sample_rate, bounds, context_s=1.0, gap_s=gaps)
    jumps = loudness_jumps_db(wave, sample_rate, bounds, gap_s=gaps)
    return [(s.ratio, j) for s, j in zip(scores, jumps)]


def run(args: argparse.Namespace) -> int:
    import torch

    from audiostory_cli import audio_io
    from audiostory_cli.editing import EventEdit, apply_edit, load_story
    from audiostory_cli.pipeline import render_to_file
    from audiostory_cli.registry import load_models
    from audiostory_cli.settings import RenderOptions
    from audiostory_cli.story import Event, Plan

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="edit-speed-") as tmp:
        scratch = Path(tmp)
        ref = build(args, scratch)
        options = RenderOptions(decoder=ref, steps=args.steps, seed=3)
        started = time.perf_counter()
        models = load_models(options, device=torch.device("cpu"), dtype=torch.float32, need_planner=False)
        note(f"loaded in {time.perf_counter() - started:.1f} s")
        events = tuple(Event(i, CAPTIONS[i % len(CAPTIONS)], i * args.event_s, args.event_s) for i in range(args.events))
        plan = Plan(prompt="a benchmark story", total_s=args.events * args.event_s, events=events)
        started = time.perf_counter()
        full = render_to_file(models.decoder, plan, options, models.conditioner, scratch / "story.wav")
        full_s = time.perf_counter() - started
        index = args.edit if args.edit is not None else args.events // 2
        story = load_story(full.plan_path)
        started = time.perf_counter()
        edited = apply_edit(models.decoder, models.conditioner, story, EventEdit(index, seed=777), scratch / "e.wav")
        edit_s = time.perf_counter() - started
        old, sr = audio_io.read_audio(full.audio_path)
        new, _ = audio_io.read_audio(edited.audio_path)
        changed = np.flatnonzero(np.any(old != new, axis=0))
        crossfade = full.plan.render.crossfade_s
        before = join_metrics(old, sr, full.plan, crossfade, index)
        after = join_metrics(new, sr, edited.plan, crossfade, index)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"decoder {args.decoder} ({args.size}), {args.events} events x {args.event_s:g} s, steps "
          f"{full.plan.render.steps}, CPU {cpu}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    print(f"full render:            {full_s:8.2f} s")
    print(f"edit --event {index} --reroll: {edit_s:8.2f} s")
    span = (changed[-1] - changed[0] + 1) / sr if changed.size else 0.0
    print(f"samples changed: {span:.2f} s of {old.shape[1] / sr:.2f} s (from {changed[0] / sr if changed.size else 0:.2f} s)")
    for name, (b, a) in zip(("join into the event", "join out of it"), zip(before, after)):
        print(f"{name:20s} spectral jump ratio {b[0]:.3f} (full render) vs {a[0]:.3f} (edited); loudness jump "
              f"{b[1]:+.2f} vs {a[1]:+.2f} dB")
    print(f"edit / full render: {edit_s / full_s:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
