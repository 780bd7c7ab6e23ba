"""Stable Audio 3 Small against TangoFlux: one 60 s story of 6 events, each decoder at its own default steps.

    python benchmarks/decoder_compare.py --size real --device cpu          # real-size random weights (slow)
    python benchmarks/decoder_compare.py --size tiny                       # seconds: checks the machinery
    python benchmarks/decoder_compare.py --tangoflux DIR --sa3 DIR         # your own (or real) weights

Each decoder runs in its own subprocess (so its peak memory is its own), loads once, and renders the same
plan through the real pipeline (``pipeline.render_plan``: residual conditioning, continuation, mix) at
``--steps-a`` and ``--steps-b`` steps. A render costs ``fixed + steps * per_step`` (text encoding, VAE and mix
are the fixed part), so the two timings give both, and the time at the decoder's own default steps is
projected from them (and measured instead when ``--measure-default`` is given). Machines here are shared and
noisy: compare the ratio printed last, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DECODERS = ("tangoflux", "stable-audio-3-small")


def story_plan(total_s: float, events: int):
    """``events`` foreground events of equal length, a bed under them: the shape of a planned story."""
    from audiostory_cli.story import Event, Plan

    captions = ("waves lap against a wooden pier", "wind rises and rain starts to fall", "thunder rolls far away",
                "a ship's brass bell rings", "the rain fades to dripping", "gulls cry over the harbor")  # fmt: skip
    length = total_s / events
    foreground = tuple(
        Event(i, captions[i % len(captions)], round(i * length, 3), round(length, 3), "calm", 0) for i in range(events)
    )
    bed = Event(events, "low steady sea ambience with soft wind", 0.0, total_s, "calm", 1)
    return Plan(prompt="a storm reaches a quiet harbor", total_s=total_s, events=(*foreground, bed), tone="calm")


def build(name: str, size: str, folder: Path) -> Path:
    """A random-weight checkpoint of ``name`` at ``size`` in its real on-disk layout."""
    from audiostory_cli.testing import build_tiny_decoder
    from audiostory_cli.testing.stable_audio_3 import build_tiny_stable_audio_3_small

    if name == "tangoflux":
        return build_tiny_decoder(folder / name, size=size)
    return build_tiny_stable_audio_3_small(folder / name, size=size)


def measure(name: str, ref: str, args) -> dict:
    """Load ``ref`` once and time renders of the story plan (this runs in the subprocess)."""
    import torch

    from audiostory_cli import registry
    from audiostory_cli.conditioning.residual import ResidualConditioner
    from audiostory_cli.devices import resolve_device, resolve_dtype
    from audiostory_cli.pipeline import render_plan
    from audiostory_cli.settings import RenderOptions

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    started = time.perf_counter()
    decoder = registry.load_decoder(ref, device=device, dtype=dtype)
    load_s = time.perf_counter() - started
    plan = story_plan(args.duration, args.events)
    options = RenderOptions(seed=0)
    conditioner = ResidualConditioner(options.coherence)
    caps = decoder.caps
    render_plan(decoder, story_plan(2.0, 1), RenderOptions(seed=0, steps=1), conditioner)  # warm-up, not timed
    timings = {}
    step_counts = sorted({args.steps_a, args.steps_b} | ({caps.default_steps} if args.measure_default else set()))
    for steps in step_counts:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        track = render_plan(decoder, plan, RenderOptions(seed=0, steps=steps), conditioner).track
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[steps] = time.perf_counter() - started
    assert track.wave.shape[-1] == round(args.duration * caps.sample_rate)
    a, b = args.steps_a, args.steps_b
    per_step = (timings[b] - timings[a]) / (b - a)
    fixed = timings[a] - a * per_step
    default = timings.get(caps.default_steps, fixed + caps.default_steps * per_step)
    peak_mb = (torch.cuda.max_memory_allocated() if device.type == "cuda" else
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20  # fmt: skip
    return {
        "decoder": name, "caps": caps.name, "device": device.type, "dtype": str(dtype).removeprefix("torch."),
        "load_s": load_s, "timings_s": timings, "per_step_s": per_step, "fixed_s": fixed,
        "default_steps": caps.default_steps, "default_guidance": caps.default_guidance,
        "at_default_s": default, "measured_default": caps.default_steps in timings, "peak_mb": peak_mb,
        "params_m": sum(p.numel() for m in vars(decoder).values() if isinstance(m, torch.nn.Module)
                        for p in m.parameters()) / 1e6,
    }  # fmt: skip


def table(rows: list[dict], args) -> str:
    lines = [
        f"{args.duration:g} s story, {args.events} events + a bed, {rows[0]['device']} {rows[0]['dtype']}, "
        f"steps measured: {args.steps_a} and {args.steps_b}",
        "| decoder | params (M) | load (s) | fixed (s) | per step (s) | own steps / guidance | story at own steps (s) | peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        how = "measured" if r["measured_default"] else "projected"
        lines.append(
            f"| {r['decoder']} | {r['params_m']:.0f} | {r['load_s']:.1f} | {r['fixed_s']:.1f} | {r['per_step_s']:.2f} | "
            f"{r['default_steps']} / {r['default_guidance']:g} | {r['at_default_s']:.1f} ({how}) | {r['peak_mb']:.0f} |"
        )
    by_name = {r["decoder"]: r for r in rows}
    if len(by_name) == 2:
        ratio = by_name["tangoflux"]["at_default_s"] / by_name["stable-audio-3-small"]["at_default_s"]
        lines.append(f"Stable Audio 3 Small renders the story {ratio:.2f}x as fast as TangoFlux, each at its own steps")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="real", help="random-weight sizes to build")
    parser.add_argument("--tangoflux", help="a TangoFlux folder to use instead of building one")
    parser.add_argument("--sa3", help="a Stable Audio 3 folder (either layout) to use instead of building Small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--duration", type=float, default=60.0, help="story length, seconds")
    parser.add_argument("--events", type=int, default=6, help="foreground events")
    parser.add_argument("--steps-a", type=int, default=1, help="first measured step count")
    parser.add_argument("--steps-b", type=int, default=2, help="second measured step count")
    parser.add_argument("--measure-default", action="store_true", help="also render at each decoder's own steps")
    parser.add_argument("--only", choices=DECODERS, help=argparse.SUPPRESS)  # the subprocess's own
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help="where built checkpoints go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines too")
    args = parser.parse_args(argv)
    if args.steps_a >= args.steps_b:
        parser.error("--steps-a must be below --steps-b")
    if args.only:
        print(json.dumps(measure(args.only, args.ref, args)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.workdir or Path(scratch)
        refs = {"tangoflux": args.tangoflux, "stable-audio-3-small": args.sa3}
        rows = []
        for name in DECODERS:
            ref = refs[name] or str(build(name, args.size, folder))
            print(f"{name}: rendering {ref} ...", file=sys.stderr)
            given = sys.argv[1:] if argv is None else argv
            command = [sys.executable, __file__, "--only", name, "--ref", ref, *given]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(table(rows, args))
    if args.json:
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
