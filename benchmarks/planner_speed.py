"""Benchmark: load and plan time of one GGUF planner through llama.cpp and through transformers, in one run.

The same file, the same story and request, each engine loaded fresh: llama.cpp with an empty prompt cache
(a first run), then again in a new engine with the prompt cache on disk (every later run), then
transformers' GGUF loader (it de-quantizes the file to bf16 at load). One row per engine on stdout as a
markdown table; the machine's load average is printed with it, since other processes on a shared machine
slow every row. ``--out`` appends the table to a markdown file.

llama.cpp runs in its child process, as the CLI runs it; ``--in-process`` adds rows with the engine in this
process (the child's cost: its start and the pipe). ``--extra-bufts 1,0`` measures the llama.cpp rows with
the weights in llama.cpp's extra buffers (the CPU repack buffer; the AMX buffer where there is AMX) and
without them (``AUDIOSTORY_LLAMA_EXTRA_BUFTS``); by default the CPU decides. The "plan" column is a digest
of the plan: the same digest, the same plan.

Data flow: ``GGUF -> load_planner(engine) -> plan(60 s story) -> seconds, tokens/s, events -> table``.

    python benchmarks/planner_speed.py                                      # the real 1.5B GGUF (downloads once)
    python benchmarks/planner_speed.py --gguf model.gguf --engines llama_cpp --threads 1
    python benchmarks/planner_speed.py --engines llama_cpp --extra-bufts 1,0 --in-process
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from audiostory_cli.planners import load_planner
from audiostory_cli.planners.llama_cpp import EXTRA_BUFTS_ENV, LlamaCppPlanner
from audiostory_cli.story import StoryRequest, plan_to_dict

STORY = "a lighthouse keeper climbs the tower in a gale, lights the lamp, and a fishing boat makes it home"
REAL_PLANNER_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "real-planner-gguf"
LONGEST_CLIP_S = 28.9  # TangoFlux's longest event at the default 1 s crossfade: the request the CLI sends
ROWS = ("llama_cpp (first run)", "llama_cpp (prompt cached)", "transformers")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/planner_speed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF planner [default: what ../shared/tools/real-planner-gguf prints]")
    parser.add_argument("--duration", type=float, default=60.0, help="story length in seconds [default: 60]")
    parser.add_argument("--engines", default="llama_cpp,transformers", help="comma-separated [default: both]")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads [default: torch's]")
    parser.add_argument("--extra-bufts", default="auto",
                        help="llama.cpp's extra buffers, comma-separated runs: 1, 0 or auto (the CPU decides) "
                        "[default: auto]")  # fmt: skip
    parser.add_argument("--in-process", action="store_true", help="also run llama.cpp in this process")
    parser.add_argument("--out", type=Path, help="append the table to this markdown file")
    return parser.parse_args(argv)


def real_gguf() -> Path:
    done = subprocess.run([str(REAL_PLANNER_TOOL)], capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def measure(name: str, gguf: Path, request: StoryRequest, engine: str, in_process: bool = False) -> dict:
    """Load, then plan once; progress reports give the tokens written."""
    started = time.perf_counter()
    if in_process:
        planner = LlamaCppPlanner.load(str(gguf), isolated=False)
    else:
        planner = load_planner(str(gguf), device=torch.device("cpu"), dtype=torch.bfloat16, engine=engine)
    loaded = time.perf_counter()
    reports = []
    plan = planner.plan(request, progress=reports.append)
    planned = time.perf_counter()
    tokens = max((r.done for r in reports if r.message == "writing the plan"), default=0)
    foreground = plan.foreground()
    return {
        "engine": name, "load_s": loaded - started, "plan_s": planned - loaded, "tokens": tokens,
        "events": len(foreground), "beds": len(plan.events) - len(foreground),
        "sum_s": math.fsum(e.duration_s for e in foreground),
        "plan": hashlib.sha256(json.dumps(plan_to_dict(plan), sort_keys=True).encode()).hexdigest()[:8],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gguf = args.gguf or real_gguf()
    request = StoryRequest(STORY, args.duration, max_event_s=LONGEST_CLIP_S)
    engines = args.engines.split(",")
    load = os.getloadavg()[0]
    rows = []
    if "llama_cpp" in engines:
        for setting in args.extra_bufts.split(","):
            if setting == "auto":
                os.environ.pop(EXTRA_BUFTS_ENV, None)
            else:
                os.environ[EXTRA_BUFTS_ENV] = setting
            label = "" if setting == "auto" else f", extra bufts {'on' if setting == '1' else 'off'}"
            with tempfile.TemporaryDirectory() as cache:
                os.environ["AUDIOSTORY_CACHE"] = cache  # an empty prompt cache: the first row is a first run
                runs = [(name, False) for name in ROWS[:2]]
                runs += [("llama_cpp (prompt cached, in process)", True)] if args.in_process else []
                for name, in_process in runs:
                    rows.append(measure(name.replace(")", f"{label})"), gguf, request, "llama_cpp", in_process))
                    print(f"{rows[-1]['engine']}: {rows[-1]}", file=sys.stderr)
        os.environ.pop(EXTRA_BUFTS_ENV, None)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["AUDIOSTORY_CACHE"] = cache
        if "transformers" in engines:
            rows.append(measure("transformers", gguf, request, "transformers"))
    lines = [
        f"`{gguf.name}`, a {args.duration:g} s story, {args.threads} thread(s), {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at start ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "| engine | load s | plan s | total s | tokens | tokens/s | events + beds | durations sum s | plan |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        rate = r["tokens"] / r["plan_s"] if r["plan_s"] else 0.0
        lines.append(
            f"| {r['engine']} | {r['load_s']:.1f} | {r['plan_s']:.1f} | {r['load_s'] + r['plan_s']:.1f} | "
            f"{r['tokens']} | {rate:.1f} | {r['events']} + {r['beds']} | {r['sum_s']:g} | {r['plan']} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with args.out.open("a") as file:
            file.write("\n" + table)


if __name__ == "__main__":
    main()
