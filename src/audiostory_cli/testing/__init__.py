"""Builds tiny random checkpoints in the real on-disk layouts, for tests and demos.

``python -m audiostory_cli.testing DIR`` writes one tiny checkpoint per backend under ``DIR`` (see ``main``),
and the tiny planner again as ``DIR/planner.gguf`` for the llama.cpp engine.
Every checkpoint loads through the same loaders as real weights, runs in seconds on a CPU and needs no
network: tokenizers are trained here with the ``tokenizers`` package, weights come from a local
``torch.Generator`` (the global RNG is left untouched), so the same seed writes the same files.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .audiostory import AUDIOSTORY_LLM_PREFIX, TinyAudioStoryConfig, audiostory_added_tokens, build_tiny_audiostory
from .planner import TinyPlannerConfig, build_tiny_planner
from .stable_audio_3 import (
    build_tiny_stable_audio_3,
    build_tiny_stable_audio_3_original,
    build_tiny_stable_audio_3_small,
)
from .tangoflux import build_tiny_decoder
from .vlm import build_tiny_vlm

__all__ = [
    "AUDIOSTORY_LLM_PREFIX",
    "TinyAudioStoryConfig",
    "TinyPlannerConfig",
    "audiostory_added_tokens",
    "build_tiny_audiostory",
    "build_tiny_decoder",
    "build_tiny_planner",
    "build_tiny_stable_audio_3",
    "build_tiny_stable_audio_3_original",
    "build_tiny_stable_audio_3_small",
    "build_tiny_vlm",
    "main",
]


def main(argv: list[str] | None = None) -> None:
    """``python -m audiostory_cli.testing DIR``: write the tiny checkpoints under DIR, print their paths."""
    parser = argparse.ArgumentParser(prog="python -m audiostory_cli.testing", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder to write the tiny checkpoints into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--size", choices=("tiny", "real"), default="tiny",
        help="decoder sizes: tiny, or the real TangoFlux and Stable Audio 3 Small sizes (random weights)",
    )
    args = parser.parse_args(argv)
    builders = {
        "planner": build_tiny_planner,
        "decoder": lambda path, seed: build_tiny_decoder(path, seed=seed, size=args.size),
        "audiostory": build_tiny_audiostory,
        "stable-audio-3": build_tiny_stable_audio_3,  # diffusers layout
        "stable-audio-3-original": build_tiny_stable_audio_3_original,  # Stability's, the same weights
        "stable-audio-3-small": lambda path, seed: build_tiny_stable_audio_3_small(path, seed=seed, size=args.size),
        "vlm": build_tiny_vlm,  # a Qwen2-VL vision-language model: the describer of `dub`
    }
    for name, build in builders.items():
        print(build(args.dir / name, seed=args.seed))
    if importlib.util.find_spec("gguf") is None:  # the gguf writer comes with the test and gguf extras
        print('skipped planner.gguf: the gguf package is missing (pip install "audiostory-cli[gguf]")', file=sys.stderr)
    else:  # the same tiny planner as one GGUF file, for the llama.cpp engine
        from .gguf import planner_folder_to_gguf

        print(planner_folder_to_gguf(args.dir / "planner", args.dir / "planner.gguf"))


