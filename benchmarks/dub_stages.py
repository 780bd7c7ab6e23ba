"""Time each stage of `audiostory dub` on one video: probe, shots, frames + describer, planner (slots mode),
render and mux. Models are what you pass (tiny ones from `python -m audiostory_cli.testing DIR`, or real ones).

    python benchmarks/dub_stages.py clip.mp4 --describer tiny/vlm --planner tiny/planner --decoder tiny/stable-audio-3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from audiostory_cli.conditioning.residual import ResidualConditioner
from audiostory_cli.inputs.describers import load_describer
from audiostory_cli.inputs.dub import describe_shots, write_dub
from audiostory_cli.inputs.video import detect_shots, probe
from audiostory_cli.pipeline import longest_event_s
from audiostory_cli.planners.slots import SlotRequest, plan_slots
from audiostory_cli.registry import load_decoder, load_planner
from audiostory_cli.settings import RenderOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--describer", required=True)
    parser.add_argument("--planner", required=True)
    parser.add_argument("--decoder", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    times: dict[str, float] = {}

    def timed(name, call):
        start = time.perf_counter()
        value = call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[name] = time.perf_counter() - start
        return value

    info = timed("probe", lambda: probe(args.video))
    shots = timed("shots (ffmpeg scene score)", lambda: detect_shots(info))
    describer = timed("load describer", lambda: load_describer(args.describer, device=device, dtype=dtype))
    timeline = timed(f"describe {len(shots)} shots (3 frames each)", lambda: describe_shots(info, shots, describer))
    planner = timed("load planner", lambda: load_planner(args.planner, device=device, dtype=dtype))
    decoder = timed("load decoder", lambda: load_decoder(args.decoder, device=device, dtype=dtype))
    request = SlotRequest(slots=timeline.cues, total_s=info.duration_s, max_event_s=longest_event_s(decoder.caps.window_s, 1.0))
    plan = timed(f"plan {len(shots)} slots", lambda: plan_slots(planner, request))
    options = RenderOptions(decoder=args.decoder, planner=args.planner)
    with tempfile.TemporaryDirectory() as folder:
        timed(f"render {info.duration_s:g} s ({len(plan.events)} clips) + mux",
              lambda: write_dub(decoder, plan, options, ResidualConditioner(options.coherence), info, Path(folder) / "out.mp4"))
    width = max(map(len, times))
    print(f"{args.video.name}: {info.duration_s:g} s, {len(shots)} shots, device {device}, {torch.get_num_threads()} threads")
    for name, seconds in times.items():
        print(f"{name:<{width}}  {seconds:8.2f} s")


if __name__ == "__main__":
    main()
