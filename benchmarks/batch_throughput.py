"""Benchmark: stories per hour of ``audiostory batch`` on this machine, locally and with ``--ray local``.

Runs the real command (a subprocess each, as a user would) on the same prompts into fresh folders, once per
mode, and prints one row per mode on stdout: wall time from start to exit (model loading and, for Ray, the
cluster start included) with the stories per hour it gives, and the steady rate: stories per hour between the
first and the last story's end (the manifest's ``ended``), which leaves out start-up and is what a long batch
gets. Notes go to stderr; ``--out`` writes the raw numbers as JSON.

Data flow: ``N prompts -> audiostory batch -d DIR [--ray local] -> DIR/manifest.jsonl, wall time -> table``.

    python benchmarks/batch_throughput.py                                   # tiny random models, 8 stories
    python benchmarks/batch_throughput.py --stories 32 --duration 10 --steps 50 --size real --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROMPTS = (
    "a storm reaches a quiet harbor, a ship's bell rings, the rain stops and gulls return",
    "a campfire at night: wood crackles, an owl calls, a kettle starts to whistle",
    "a morning train journey: doors close, wheels on rails, a station announcement",
    "a blacksmith at work: the forge roars, a hammer rings on the anvil, steam hisses",
    "a library at closing time: pages turn, footsteps fade, a door clicks shut",
    "a mountain stream in spring: water over stones, birdsong, wind in the pines",
    "a busy market: voices, a cart on cobbles, a street musician starts to play",
    "a thunderstorm over a city: rain on windows, distant thunder, a car drives past",
)
MODES = {  # name -> extra arguments of `audiostory batch`
    "local": [],  # the default: planning overlapped with rendering on a GPU, in turn on a CPU
    "local-overlap": ["--overlap"],  # planning overlapped with rendering, whatever the device
    "ray-local": ["--ray", "local"],  # a one-machine Ray cluster
}
PROG = "batch_throughput"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/batch_throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=8, help="stories per mode (default 8; prompts repeat)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per story (default 2)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per clip (default 2)")
    parser.add_argument("--models", type=Path, help="a folder from `python -m audiostory_cli.testing` (planner/, "
                        "decoder/); default: built in a temp folder")  # fmt: skip
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny", help="decoder size when building")
    parser.add_argument("--device", default="cpu", help="--device of the batch command (default cpu)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every run (default: torch's own); 1 keeps "
                        "tiny models from waiting on each other's threads on a busy machine")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    return parser.parse_args(argv)


def note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def build_models(folder: Path, size: str) -> Path:
    note(f"building {size} random models in {folder}")
    command = [sys.executable, "-m", "audiostory_cli.testing", str(folder)] + (["--size", size] if size != "tiny" else [])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return folder


def run_mode(name: str, prompts: Path, outdir: Path, models: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, "-m", "audiostory_cli", "batch", str(prompts), "-o", str(outdir), "--duration",
        str(args.duration), "--steps", str(args.steps), "--planner", str(models / "planner"), "--decoder",
        str(models / "decoder"), "--device", args.device, "--json", *MODES[name],
    ]  # fmt: skip
    note(f"{name}: {' '.join(command[1:])}")
    started = time.perf_counter()
    threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **threads})
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{PROG}: {name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rendered = [r for r in records if r["status"] == "ok"]
    ends = sorted(datetime.fromisoformat(r["ended"].replace("Z", "+00:00")).timestamp() for r in rendered)
    steady_s = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else None
    return {
        "mode": name,
        "stories": len(rendered),
        "wall_s": round(wall_s, 2),
        "stories_per_hour_wall": round(len(rendered) / wall_s * 3600, 1),
        "steady_s_per_story": round(steady_s, 2) if steady_s else None,
        "stories_per_hour_steady": round(3600 / steady_s, 1) if steady_s else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"{PROG}: unknown mode {unknown[0]!r} (known: {', '.join(MODES)})")
    with tempfile.TemporaryDirectory(prefix="batch-throughput-") as scratch:
        scratch = Path(scratch)
        models = args.models or build_models(scratch / "models", args.size)
        prompts = scratch / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS[i % len(PROMPTS)] + f" (take {i + 1})" for i in range(args.stories)) + "\n")
        rows = [run_mode(name, prompts, scratch / name, models, args) for name in modes]
    header = ("mode", "stories", "wall s", "stories/h (wall)", "steady s/story", "stories/h (steady)")
    keys = ("mode", "stories", "wall_s", "stories_per_hour_wall", "steady_s_per_story", "stories_per_hour_steady")
    print("  ".join(f"{h:>18}" if i else f"{h:<10}" for i, h in enumerate(header)))
    for r in rows:
        print("  ".join(f"{r[k]!s:>18}" if i else f"{r[k]:<10}" for i, k in enumerate(keys)))
    note(f"{args.stories} stories of {args.duration:g} s, {args.steps} steps, {args.size} models, --device {args.device}, "
         f"OMP_NUM_THREADS={args.threads or 'unset'}; os.cpu_count() = {os.cpu_count()}, load average "
         f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args) | {"models": str(args.models), "out": str(args.out)},
                                        "rows": rows}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
