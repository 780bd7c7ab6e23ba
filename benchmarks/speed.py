"""Benchmark: how fast a story renders, against the upstream loop, stage by stage.

In one run, on the same weights, steps and device, renders one synthetic story (``--events`` equal foreground
events over ``--duration`` seconds) in several configurations and times each stage:

- ``upstream``: TencentARC/AudioStory ``evaluate/inference.py`` around declare-lab/TangoFlux's ``inference_flow``,
  re-implemented step for step: every clip alone (its duration plus a 3 s crossfade), a fixed 645-frame window,
  CFG as a batch of 2 with no attention mask, the VAE decoding the whole window, then trim, resample to
  32 kHz (soxr, as ``librosa.resample``), 3 s linear crossfades, write;
- ``default``: ``pipeline.render_to_file`` with the default ``RenderOptions`` (window sized to the clip,
  continuation, batches), ``no-continuation`` the same with ``continuation=False``, ``compiled`` the default
  with the DiT under ``torch.compile`` (``--compile``).

Stable Audio 3 (``--sa3``, or Small-SFX's sizes with random weights) renders the same story on our paths at its
own ``--sa3-steps`` (8), measured, not projected: upstream is TangoFlux's loop.

Stages: load (once per dtype, shared by every row: both loops load the same files), text encoding, DiT per
denoising step, VAE decode, everything else in the render, mix and write; peak memory (RSS sampled on CPU,
``torch.cuda.max_memory_allocated`` on CUDA). The 50-step figures are projected from the measured fixed costs
and per-step cost: ``fixed + 50 x per step``.

Efficiency: every matrix product of a render is counted from its operands' shapes (``FlopCounter``: Linear
``2 M K N``, Conv1d ``2 B Cout Lout Cin/g k``, ConvTranspose1d ``2 B Cin Lin Cout/g k``, SDPA ``4 B H Lq Lk D``),
per stage; in the same run a matmul at the DiT's largest product measures this machine's peak in fp32 and
bf16 (``matmul_peak``); the efficiency table gives per stage GFLOP, seconds, GFLOP/s and the fraction of the
peak of the stage's dtype. The first stdout line names the CPU and the features found (``avx2``,
``avx512_bf16``, ``amx_*`` from ``/proc/cpuinfo``, torch's capability) and the load average.

Stdout: the CPU line, per decoder its peak and stage table, the efficiency table, then the last lines
``speedup at 50 steps: N.NNx (measured at K steps on DEVICE)`` (TangoFlux's default path against upstream,
same dtype) and ``realtime factor at 8 steps: N.Nx (...)`` (Stable Audio 3: story seconds per second of
render, models loaded); notes to stderr; every number to ``--out`` JSON.

Data flow: ``weights -> registry.load_decoder (per dtype) -> per configuration: render with timers on
text_encoder / DiT / VAE and the FLOP counter -> stage table -> matmul peak -> efficiency -> last lines``.

    python benchmarks/speed.py                                   # tiny random TangoFlux + SA3: the machinery, seconds
    python benchmarks/speed.py --size real --steps 2 --device cpu    # real sizes, random weights (both decoders)
    python benchmarks/speed.py --size real --decoders sa3 --configs default   # SA3 Small alone: the realtime factor
    python benchmarks/speed.py --decoder checkpoints/TangoFlux --steps 50 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PROG = "speed"  # prefix of every stderr line
PROJECTED_STEPS = 50  # TangoFlux's own step count: the figure the speedup is projected to
UPSTREAM_WINDOW = 645  # latent frames TangoFlux denoises for every clip (30 s)
UPSTREAM_CROSSFADE_S = 3.0  # AudioStory's --crossfade_sec default
UPSTREAM_SAMPLE_RATE = 32000  # AudioStory's --target_sr default
CONFIGS = ("upstream", "default", "no-continuation", "compiled")
DECODERS = ("tangoflux", "sa3")  # what --decoders names: TangoFlux (with the upstream loop), Stable Audio 3 Small
CAPTIONS = (  # the events of the synthetic story, cycled
    "waves break on pebbles and pull back with a hiss",
    "a wooden door creaks open, then footsteps on gravel",
    "rain starts on a tin roof, then a steady downpour",
    "thunder rolls in the distance, gusts rattle the shutters",
    "a ship's bell rings slowly in the harbor",
    "the storm passes, water drips from the gutters and gulls return",
)


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- command line ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="speed.py", description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", help="TangoFlux-layout folder; default: random weights built by "
                        "audiostory_cli.testing at --size")  # fmt: skip
    parser.add_argument("--sa3", help="Stable Audio 3 folder (either layout); default: random weights at --size "
                        "(Small-SFX's sizes)")  # fmt: skip
    parser.add_argument("--decoders", help="comma list of tangoflux, sa3 (default: both; only the one whose "
                        "folder is given when one of --decoder/--sa3 is)")  # fmt: skip
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny", help="size of the built weights: "
                        "tiny (seconds: the machinery, as the tests run it) or real (the published sizes)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=2, help="TangoFlux's denoising steps measured (default 2)")
    parser.add_argument("--sa3-steps", type=int, default=8, help="Stable Audio 3's steps, measured, not projected "
                        "(default 8, its own)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--dtype", default="auto", help="comma list of auto, fp32, bf16, fp16, or 'all' (every "
                        "dtype that runs on the device); upstream runs in the first")  # fmt: skip
    parser.add_argument("--duration", type=float, default=60.0, help="story length, seconds (default 60)")
    parser.add_argument("--events", type=int, default=6, help="equal foreground events in the story (default 6)")
    parser.add_argument("--configs", default="upstream,default,no-continuation",
                        help=f"comma list of {', '.join(CONFIGS)}")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="add the 'compiled' configuration")
    parser.add_argument("--batch-size", default="auto", help="clips denoised together on our paths, or 'auto' "
                        "(the CLI's default: measured per machine on a CPU) [default: auto]")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the story")
    parser.add_argument("--project-steps", type=int, default=PROJECTED_STEPS, help="steps the totals are "
                        f"projected to (default {PROJECTED_STEPS}, TangoFlux's own; Stable Audio 3's is 8)")
    parser.add_argument("--out", type=Path, help="write every number as JSON here")
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if args.compile and "compiled" not in args.configs:
        args.configs.append("compiled")
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    if args.steps < 1 or args.sa3_steps < 1 or args.events < 1 or not 0 < args.duration <= 600:
        parser.error("--steps, --sa3-steps and --events must be >= 1 and --duration in (0, 600] seconds")
    if args.decoders is None:
        given = [name for name, folder in (("tangoflux", args.decoder), ("sa3", args.sa3)) if folder]
        args.decoders = given or list(DECODERS)
    else:
        args.decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
        if not args.decoders or any(d not in DECODERS for d in args.decoders):
            parser.error(f"--decoders: a comma list of {', '.join(DECODERS)}")
    return args


# --- measuring ------------------------------------------------------------------------------------------


class Timer:
    """Sums the time spent in named stages. On CUDA it records events and reads them once at ``finish``,
    so timing adds no host sync inside a loop; on CPU, and for the host-only stages, it reads the clock."""

    HOST_STAGES = ("mix",)  # numpy work (resampling, crossfades, writing): no GPU events to record

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: dict[str, list] = {}
        self.open: list[str] = []  # the stages entered and not left, innermost last (``FlopCounter`` reads it)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self.open.append(stage)
        try:
            with self._span(stage):
                yield
        finally:
            self.open.pop()

    @contextlib.contextmanager
    def _span(self, stage: str):
        if self.cuda and stage not in self.HOST_STAGES:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans.setdefault(stage, []).append((start, end))
        else:
            started = time.perf_counter()
            yield
            self.spans.setdefault(stage, []).append(time.perf_counter() - started)

    def finish(self) -> dict[str, list[float]]:
        """Seconds of every span, by stage."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return {k: [x if isinstance(x, float) else x[0].elapsed_time(x[1]) / 1000 for x in v] for k, v in self.spans.items()}


class PeakMemory:
    """Peak memory of one configuration: RSS sampled every 10 ms on CPU, the CUDA allocator's peak on CUDA."""

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            from audiostory_cli.devices import release_freed_memory

            release_freed_memory()  # each row starts from a handed-back heap (the upstream loop keeps its own)
            self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; elsewhere the peak so far from ``resource``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class FlopCounter:
    """Floating-point operations of every matrix product a render runs, counted from the operands' shapes and
    added to the innermost open stage of ``timer`` ("other" outside every stage). One multiply-add is 2 FLOPs:

    - ``nn.Linear``, input [..., K] -> [..., N], M = rows of the input: ``2 M K N``;
    - ``nn.Conv1d``, [B, Cin, Lin] -> [B, Cout, Lout], kernel k, g groups: ``2 B Cout Lout (Cin / g) k``;
    - ``nn.ConvTranspose1d``, the same product run backwards: ``2 B Cin Lin (Cout / g) k``;
    - ``F.scaled_dot_product_attention``, q [B, H, Lq, D], k/v [B, H, Lk, D]: ``4 B H Lq Lk D`` (QK^T and AV;
      a mask does not lower it, the kernels compute the masked scores too).

    Elementwise work (norms, activations, RoPE, casts, the scheduler) is not counted: it is in a stage's time,
    not in its FLOPs, so the fraction of the matrix peak shows what it costs. Also keeps, per stage, the
    weight dtype that carried most FLOPs and the largest Linear product (M, K, N): where the peak is measured."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.flops: dict[str, float] = {}
        self.by_dtype: dict[str, dict[str, float]] = {}  # stage -> weight dtype -> FLOPs
        self.largest: dict[str, tuple[int, int, int]] = {}  # stage -> the largest Linear product (M, K, N)

    def _add(self, flops: float, dtype, shape: tuple[int, int, int] | None = None) -> None:
        stage = self.timer.open[-1] if self.timer.open else "other"
        self.flops[stage] = self.flops.get(stage, 0.0) + flops
        per = self.by_dtype.setdefault(stage, {})
        per[DTYPE_NAMES.get(str(dtype), str(dtype))] = per.get(DTYPE_NAMES.get(str(dtype), str(dtype)), 0.0) + flops
        if shape is not None and math.prod(shape) > math.prod(self.largest.get(stage, (0, 0, 0))):
            self.largest[stage] = shape

    def _module_hook(self, module, inputs, output) -> None:
        import torch

        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if x is None or not isinstance(output, torch.Tensor):
            return
        if isinstance(module, torch.nn.Linear):
            m = x.numel() // module.in_features
            self._add(2.0 * m * module.in_features * module.out_features, module.weight.dtype,
                      (m, module.in_features, module.out_features))  # fmt: skip
        elif isinstance(module, torch.nn.Conv1d):
            b, cout, lout = output.shape if output.dim() == 3 else (1, *output.shape)
            k = module.kernel_size[0]
            self._add(2.0 * b * cout * lout * (module.in_channels // module.groups) * k, module.weight.dtype)
        elif isinstance(module, torch.nn.ConvTranspose1d):
            b, cin, lin = x.shape if x.dim() == 3 else (1, *x.shape)
            k = module.kernel_size[0]
            self._add(2.0 * b * cin * lin * (module.out_channels // module.groups) * k, module.weight.dtype)

    @contextlib.contextmanager
    def active(self):
        """Count while inside: a global module forward hook, and ``F.scaled_dot_product_attention`` wrapped."""
        import torch
        import torch.nn.functional as F

        sdpa = F.scaled_dot_product_attention

        def counted_sdpa(query, key, *args, **kwargs):
            *batch, lq, d = query.shape
            self._add(4.0 * math.prod(batch) * lq * key.shape[-2] * d, query.dtype)
            return sdpa(query, key, *args, **kwargs)

        handle = torch.nn.modules.module.register_module_forward_hook(self._module_hook)
        F.scaled_dot_product_attention = counted_sdpa
        try:
            yield self
        finally:
            F.scaled_dot_product_attention = sdpa
            handle.remove()

    def dtype_of(self, stage: str) -> str:
        per = self.by_dtype.get(stage, {})
        return max(per, key=per.get) if per else "fp32"


DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> dict:
    """This CPU: its model name, the matrix-relevant flags ``/proc/cpuinfo`` lists (``CPU_FEATURES``), torch's
    own capability (``torch.backends.cpu.get_cpu_capability``: it stops at AVX512), threads and the load."""
    import torch

    name, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        capability = "unknown"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"model": name, "features": [f for f in CPU_FEATURES if f in flags], "torch_capability": capability,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": load}  # fmt: skip


def matmul_peak(shape: tuple[int, int, int], dtype_name: str, device, budget_s: float = 0.3) -> float:
    """FLOP/s of this machine's matrix product [M, K] @ [K, N] in ``dtype_name``, at ``shape`` (the model's
    largest Linear): the best of the runs after the first, at least two, until about ``budget_s`` seconds."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    times: list[float] = []
    while len(times) < 2 or (sum(times) < budget_s and len(times) < 50):
        started = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        times.append(time.perf_counter() - started)
    return 2.0 * m * k * n / min(times[1:])


def sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


@contextlib.contextmanager
def patched(obj, name: str, timer: Timer, stage: str):
    """Time every call of ``obj.name`` as ``stage`` (an instance attribute shadowing the method); nothing
    when ``obj`` has no such method (another backend)."""
    original = None if obj is None else getattr(obj, name, None)
    if original is None:
        yield
        return

    def timed(*args, **kwargs):
        with timer(stage):
            return original(*args, **kwargs)

    setattr(obj, name, timed)
    try:
        yield
    finally:
        delattr(obj, name) if name in vars(obj) else None


# --- the story ------------------------------------------------------------------------------------------


def synthetic_plan(duration_s: float, events: int):
    """``events`` foreground events of equal length, one after another, over ``duration_s``."""
    from audiostory_cli.story import Event, Plan

    starts = [round(i * duration_s / events, 3) for i in range(events)] + [duration_s]
    spans = [(starts[i], round(starts[i + 1] - starts[i], 3)) for i in range(events)]
    return Plan(
        prompt="a storm reaches a quiet harbor and passes",
        total_s=duration_s,
        events=tuple(Event(i, CAPTIONS[i % len(CAPTIONS)], start, length, "calm") for i, (start, length) in enumerate(spans)),
        tone="calm",
    )


# --- the upstream loop ----------------------------------------------------------------------------------


def upstream_story(decoder, plan, steps: int, guidance: float, seed: int, output: Path, timer: Timer):
    """AudioStory's ``evaluate/inference.py`` decode loop around TangoFlux's ``inference_flow``, on our
    loaded modules: every clip alone, 645 frames, CFG as a batch of 2, full-window VAE decode, trim,
    resample to 32 kHz, 3 s linear crossfades, write. Returns the written wave [C, T] at 32 kHz."""
    import soxr
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from audiostory_cli import audio_io
    from audiostory_cli.story import clip_seed

    device, dtype, dit, vae = decoder.device, decoder.dtype, decoder.dit, decoder.vae
    sample_rate = decoder.sample_rate
    clips = []
    with torch.no_grad():
        for k, event in enumerate(plan.events):
            # inference.py: every clip but the last is rendered ``--crossfade_sec`` longer
            duration = event.duration_s + (UPSTREAM_CROSSFADE_S if k < len(plan.events) - 1 else 0.0)
            with timer("text"):
                context, mask = _encode_text_classifier_free(decoder, event.caption)
            # inference_flow: pooled = nanmean over the valid tokens, fc, duration token appended
            pooled = torch.nanmean(torch.where(mask[..., None], context, torch.tensor(float("nan"))), dim=1)
            pooled = dit.fc(pooled.to(dtype))
            seconds = dit.duration_emebdder(torch.tensor([duration], device=device)).repeat(2, 1, 1)
            context = torch.cat([context.to(dtype), seconds.to(dtype)], dim=1)
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
            scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 1 / steps, steps)), device=device)
            generator = torch.Generator().manual_seed(clip_seed(seed, event.index))  # upstream: global RNG
            latents = torch.randn(1, UPSTREAM_WINDOW, 64, generator=generator).to(device)
            txt_ids = torch.zeros(context.shape[1], 3, device=device)
            audio_ids = torch.arange(UPSTREAM_WINDOW, device=device)[:, None].repeat(1, 3).float()
            for t in scheduler.timesteps:
                with timer("dit"):
                    noise_pred = dit.transformer(
                        hidden_states=torch.cat([latents] * 2).to(dtype),
                        timestep=torch.tensor([t / 1000], device=device).to(dtype),
                        pooled_projections=pooled,
                        encoder_hidden_states=context,
                        txt_ids=txt_ids,
                        img_ids=audio_ids,
                        return_dict=False,
                    )[0].float()
                uncond, cond = noise_pred.chunk(2)
                latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
            with timer("vae"):
                wave = vae.decode(latents.transpose(2, 1).to(decoder.vae_dtype)).sample.float().cpu()[0]
            with timer("mix"):
                wave = wave[:, : int(duration * sample_rate)].numpy()
                clips.append(soxr.resample(wave.T, sample_rate, UPSTREAM_SAMPLE_RATE, quality="HQ").T)
    with timer("mix"):
        track = _smooth_concatenate(clips, UPSTREAM_SAMPLE_RATE, UPSTREAM_CROSSFADE_S)
        audio_io.write_audio(output, track, UPSTREAM_SAMPLE_RATE)
    return track


def _encode_text_classifier_free(decoder, caption: str):
    """TangoFlux's ``encode_text_classifier_free``: the caption (up to the tokenizer's max length) and ""
    padded to its length, unconditional first, and their boolean mask."""
    import torch

    tok, encoder, device = decoder.tokenizer, decoder.text_encoder, decoder.device
    batch = tok([caption], max_length=tok.model_max_length, padding=True, truncation=True, return_tensors="pt")
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    states = encoder(input_ids=ids, attention_mask=mask)[0]
    uncond = tok([""], max_length=states.shape[1], padding="max_length", truncation=True, return_tensors="pt")
    uncond_ids, uncond_mask = uncond.input_ids.to(device), uncond.attention_mask.to(device)
    uncond_states = encoder(input_ids=uncond_ids, attention_mask=uncond_mask)[0]
    return torch.cat([uncond_states, states]).float(), torch.cat([uncond_mask, mask]) == 1


def _smooth_concatenate(clips: list[np.ndarray], sample_rate: int, transition_s: float) -> np.ndarray:
    """AudioStory's ``smooth_concatenate``: linear crossfades of ``transition_s`` between consecutive clips."""
    n = int(transition_s * sample_rate)
    result = clips[0]
    for nxt in clips[1:]:
        if result.shape[1] < n or nxt.shape[1] < n:
            result = np.concatenate([result, nxt], axis=1)
            continue
        fade_out = np.linspace(1.0, 0.0, n, dtype=np.float32)[None]
        merged = result[:, -n:] * fade_out + nxt[:, :n] * (1 - fade_out)
        result = np.concatenate([result[:, :-n], merged, nxt[:, n:]], axis=1)
    return result.astype(np.float32)


# --- our paths ------------------------------------------------------------------------------------------


def our_story(decoder, plan, options, batch_size: int, output: Path, timer: Timer):
    """``pipeline.render_to_file`` with the stages timed: conditioning (text), the DiT (TangoFlux's
    ``_velocity``, or the backend's ``transformer``: Stable Audio 3's), the VAE (``vae.decode``)."""
    import soundfile as sf

    from audiostory_cli.conditioning.residual import ResidualConditioner
    from audiostory_cli.pipeline import render_to_file

    conditioner = ResidualConditioner(options.coherence)
    with (
        patched(conditioner, "condition", timer, "text"),
        patched(decoder, "render", timer, "render"),
        patched(decoder, "_velocity", timer, "dit"),
        patched(None if hasattr(decoder, "_velocity") else getattr(decoder, "transformer", None), "forward", timer, "dit"),
        patched(getattr(decoder, "vae", None), "decode", timer, "vae"),
    ):
        render_to_file(decoder, plan, dataclasses.replace(options, batch_size=batch_size), conditioner, output)
    wave, _ = sf.read(output, dtype="float32", always_2d=True)
    return wave.T


# --- one configuration ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One configuration's measurements, seconds and bytes."""

    config: str
    dtype: str
    decoder: str  # "TangoFlux", "Stable Audio 3": the backend's caps name
    batch_size: int
    load_s: float
    text_s: float
    step_s: float  # DiT seconds per denoising step (all of the story's clips)
    compile_s: float  # first-step cost above a plain step (torch.compile); 0 otherwise
    vae_s: float
    other_s: float  # the rest of the render: noise, conditioning assembly, schedulers, cutting
    mix_write_s: float
    measured_s: float  # wall of the render at the measured steps, plus load
    peak_bytes: int
    steps: int
    project_steps: int = PROJECTED_STEPS  # steps ``projected_s`` projects to
    flops: dict = dataclasses.field(default_factory=dict)  # stage -> FLOPs of the render (``FlopCounter``)
    stage_dtypes: dict = dataclasses.field(default_factory=dict)  # stage -> the dtype that carried its FLOPs
    largest: dict = dataclasses.field(default_factory=dict)  # stage -> its largest Linear product (M, K, N)
    story_s: float = 0.0  # seconds of audio rendered

    @property
    def fixed_s(self) -> float:
        return self.load_s + self.text_s + self.compile_s + self.vae_s + self.other_s + self.mix_write_s

    def projected_s(self, steps: int | None = None) -> float:
        return self.fixed_s + (self.project_steps if steps is None else steps) * self.step_s


def run_config(config: str, decoder, load_s: float, dtype_name: str, plan, args, scratch: Path, device):
    """Render the story once in ``config``; the stages it took and the wave it wrote."""
    from audiostory_cli.pipeline import resolve_options
    from audiostory_cli.settings import RenderOptions

    options = resolve_options(RenderOptions(seed=args.seed, steps=args.steps), decoder)
    if config == "no-continuation":
        options = dataclasses.replace(options, continuation=False)
    decoder.compile = config == "compiled"
    batch_size = resolve_batch_size(args.batch_size, decoder)
    timer = Timer(device)
    counter = FlopCounter(timer)
    output = scratch / f"{config}-{dtype_name}.wav"
    sync(device)
    with PeakMemory(device) as memory, counter.active():
        started = time.perf_counter()
        if config == "upstream":
            wave = upstream_story(decoder, plan, args.steps, options.guidance, args.seed, output, timer)
            batch_size = 1
        else:
            wave = our_story(decoder, plan, options, batch_size, output, timer)
        sync(device)
        wall = time.perf_counter() - started
    decoder.compile = False
    spans = timer.finish()

    def total(stage: str) -> float:
        return float(sum(spans.get(stage, [])))

    steps = per_step_dit(spans, config, args.steps)
    step_s, compile_s = steps
    if config == "upstream":
        other = wall - total("text") - total("dit") - total("vae") - total("mix")
        mix_write = total("mix")
    else:
        render = total("render")
        if "dit" not in spans:  # a backend without TangoFlux's _velocity: the whole denoising counts as steps
            step_s = (render - total("vae")) / args.steps
        other = max(0.0, render - step_s * args.steps - compile_s - total("vae"))
        mix_write = wall - total("text") - render
    row = Row(config, dtype_name, decoder.caps.name, batch_size, load_s, total("text"), step_s, compile_s,
              total("vae"), other, mix_write, wall + load_s, memory.peak, args.steps, args.project_steps,
              counter.flops, {k: counter.dtype_of(k) for k in counter.flops}, counter.largest, plan.total_s)  # fmt: skip
    return row, wave


def per_step_dit(spans: dict, config: str, steps: int) -> tuple[float, float]:
    """(DiT seconds per step, compile seconds). The compiled row's first step holds the compilation: it is
    taken out as a fixed cost, and the later steps give the per-step cost."""
    dit = float(sum(spans.get("dit", [])))
    if config != "compiled":
        return dit / steps, 0.0
    per_call = spans.get("dit", [])
    calls_per_step = len(per_call) // steps
    if steps < 2 or calls_per_step == 0:
        note("the compiled row needs --steps 2 or more to tell compilation from steps; counted as steps")
        return dit / steps, 0.0
    first = sum(per_call[:calls_per_step])
    rest = sum(per_call[calls_per_step:]) / (steps - 1)
    return rest, max(0.0, first - rest)


def resolve_batch_size(value: str, decoder) -> int:
    from audiostory_cli.pipeline import auto_batch_size

    return auto_batch_size(decoder) if value == "auto" else int(value)


# --- report ---------------------------------------------------------------------------------------------

COLUMNS = (  # (header, value of a row, format)
    ("configuration", lambda r: r.config, "{}"),
    ("dtype", lambda r: r.dtype, "{}"),
    ("batch", lambda r: r.batch_size, "{}"),
    ("load s", lambda r: r.load_s, "{:.1f}"),
    ("text s", lambda r: r.text_s, "{:.2f}"),
    ("DiT s/step", lambda r: r.step_s, "{:.2f}"),
    ("compile s", lambda r: r.compile_s, "{:.1f}"),
    ("VAE s", lambda r: r.vae_s, "{:.1f}"),
    ("other s", lambda r: r.other_s, "{:.2f}"),
    ("mix+write s", lambda r: r.mix_write_s, "{:.2f}"),
    ("peak GiB", lambda r: r.peak_bytes / 2**30, "{:.2f}"),
    ("total s (K steps)", lambda r: r.measured_s, "{:.1f}"),
    ("total s (P steps)", lambda r: r.projected_s(), "{:.1f}"),
)


def format_table(rows: list[Row], reference: Row | None) -> str:
    if not rows:
        return ""
    headers = [h for h, _, _ in COLUMNS] + ([f"speedup at {rows[0].project_steps}"] if reference else [])
    cells = [headers]
    for row in rows:
        line = [fmt.format(get(row)) for _, get, fmt in COLUMNS]
        if reference:
            line.append(f"{reference.projected_s() / row.projected_s():.2f}x")
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    table = "\n".join(lines).replace("(K steps)", f"({rows[0].steps} steps)")
    return table.replace("(P steps)", f"({rows[0].project_steps} steps)")


def format_cpu(cpu: dict) -> str:
    features = " ".join(cpu["features"]) or "none of " + " ".join(CPU_FEATURES)
    return (f"cpu: {cpu['model']}; features: {features}; torch capability {cpu['torch_capability']}; "
            f"{cpu['threads']} threads on {cpu['cpus']} CPUs; load average {cpu['load_average']:.2f} at start")


EFFICIENCY_STAGES = (("text", "text"), ("dit", "DiT step"), ("vae", "VAE"))  # (stage, shown as)


def format_efficiency(rows: list[Row], peaks: dict[str, dict[str, float]]) -> str:
    """Per configuration and stage: GFLOP (``FlopCounter``), seconds, achieved GFLOP/s and the fraction of this
    machine's matrix peak in the stage's dtype (``matmul_peak``). The DiT per denoising step."""
    cells = [["decoder", "configuration", "dtype", "stage", "GFLOP", "s", "GFLOP/s", "peak GFLOP/s", "of peak"]]
    for r in rows:
        for stage, shown in EFFICIENCY_STAGES:
            flops = r.flops.get(stage, 0.0)
            seconds = {"text": r.text_s, "dit": r.step_s, "vae": r.vae_s}[stage]
            if stage == "dit":
                flops /= r.steps
            if flops <= 0 or seconds <= 0:
                continue
            dtype = r.stage_dtypes.get(stage, r.dtype)
            peak = peaks.get(r.decoder, {}).get(dtype)
            rate = flops / seconds
            cells.append([r.decoder, r.config, dtype, shown, f"{flops / 1e9:,.0f}" if flops >= 1e11 else f"{flops / 1e9:.3g}", f"{seconds:.3f}", f"{rate / 1e9:.1f}",
                          "-" if peak is None else f"{peak / 1e9:.1f}", "-" if peak is None else f"{100 * rate / peak:.0f} %"])  # fmt: skip
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "efficiency (FLOPs of matrix products counted from the shapes; peak: a matmul at the DiT's shape)\n" + "\n".join(lines)


def wave_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(relative L2 difference, SNR in dB) of ``a`` against the reference ``b``."""
    n = min(a.shape[-1], b.shape[-1])
    error = float(np.linalg.norm(a[:, :n] - b[:, :n]))
    norm = float(np.linalg.norm(b[:, :n])) or 1e-12
    return error / norm, 20 * math.log10(norm / max(error, 1e-12))


# --- main -----------------------------------------------------------------------------------------------


def dtype_names(value: str, device) -> list[str]:
    """The dtypes to measure, as given, 'auto' resolved; 'all': fp32 and every other that runs natively."""
    import torch

    from audiostory_cli.devices import resolve_dtype, runs_natively

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    if value == "all":
        return ["fp32"] + [n for d, n in names.items() if d != torch.float32 and runs_natively(d, device)]
    out = []
    for name in value.split(","):
        resolved = names[resolve_dtype(name.strip(), device, notify=note)]
        if resolved not in out:
            out.append(resolved)
    return out


def load(ref: str, device, dtype_name: str):
    import torch

    from audiostory_cli import registry

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    sync(device)
    started = time.perf_counter()
    decoder = registry.load_decoder(ref, device=device, dtype=dtype)
    sync(device)
    return decoder, time.perf_counter() - started


def warm_up(decoder) -> None:
    """One tiny untimed render, so one-time costs (kernel selection, lazy imports) land on no row."""
    from audiostory_cli.decoders.base import ClipRequest
    from audiostory_cli.pipeline import resolve_options
    from audiostory_cli.settings import RenderOptions
    from audiostory_cli.story import Event

    request = ClipRequest(Event(0, CAPTIONS[0], 0.0, 0.5), n_samples=decoder.caps.sample_rate // 2, seed=0)
    decoder.render([request], resolve_options(RenderOptions(steps=1, continuation=False), decoder), batch_size=1)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as transformers_logging

    from audiostory_cli.devices import resolve_device

    transformers_logging.disable_progress_bar()
    device = resolve_device(args.device, notify=note)
    plan = synthetic_plan(args.duration, args.events)
    dtypes = dtype_names(args.dtype, device)
    cpu = cpu_description()
    note(f"{args.events} events over {args.duration:g} s, {device.type}, {torch.get_num_threads()} threads, dtypes "
         f"{', '.join(dtypes)}, decoders {', '.join(args.decoders)}, configurations {', '.join(args.configs)}")  # fmt: skip
    print(format_cpu(cpu))
    rows: list[Row] = []
    waves: dict[tuple[str, str, str], np.ndarray] = {}
    peaks: dict[str, dict[str, float]] = {}  # decoder -> dtype -> FLOP/s of the matrix product at its DiT's shape
    with tempfile.TemporaryDirectory(prefix="speed-") as scratch:
        scratch = Path(scratch)
        for which in args.decoders:
            job = decoder_job(which, args)
            ref = build_or_given(which, args, scratch)
            for k, dtype_name in enumerate(dtypes):
                decoder, load_s = load(ref, device, dtype_name)
                name = decoder.caps.name
                note(f"{name}: loaded in {dtype_name} in {load_s:.1f} s")
                warm_up(decoder)
                for config in job.configs:
                    if config == "upstream" and (k > 0 or not hasattr(decoder, "dit")):
                        continue  # upstream runs in the first dtype only, and is TangoFlux's loop
                    row, wave = run_config(config, decoder, load_s, dtype_name, plan, job, scratch, device)
                    if "dit" in row.largest:  # on a shared machine the peak moves: measured after each row, the best kept
                        for dtype in {row.stage_dtypes.get(stage, dtype_name) for stage in row.flops}:
                            peak = matmul_peak(row.largest["dit"], dtype, device)
                            peaks.setdefault(name, {})[dtype] = max(peaks.get(name, {}).get(dtype, 0.0), peak)
                    rows.append(row)
                    waves[(name, config, dtype_name)] = wave
                    note(f"{name} {config} {dtype_name}: {row.measured_s:.1f} s at {job.steps} steps (with load)")
                del decoder
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            ours = [r for r in rows if r.decoder == name]
            shape = next((r.largest["dit"] for r in ours if "dit" in r.largest), None)
            if shape is not None:
                for dtype in ("fp32", "bf16"):  # both, whether used or not: what this CPU offers each
                    if dtype not in peaks.setdefault(name, {}):
                        peaks[name][dtype] = matmul_peak(shape, dtype, device)
                print(f"{name} matrix peak at its DiT's largest product {'x'.join(map(str, shape))} (M x K x N; the "
                      "best after each row): " + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, v in peaks[name].items()))  # fmt: skip
            reference = next((r for r in ours if r.config == "upstream"), None)
            print(format_table(ours, reference))
    print(format_efficiency(rows, peaks))
    differences = report_dtypes(waves, dtypes)
    if args.out:
        from audiostory_cli import audio_io

        report = {"args": {k: str(v) for k, v in vars(args).items()}, "device": device.type, "cpu": cpu,
                  "matmul_peak_flops": peaks,
                  "rows": [{**dataclasses.asdict(r), "fixed_s": r.fixed_s, "projected_s": r.projected_s()} for r in rows],
                  "dtype_differences": differences}  # fmt: skip
        audio_io.write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        note(f"numbers written to {args.out}")
    for line in summary_lines(rows, dtypes[0], device):
        print(line)
    return 0


def decoder_job(which: str, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` as one decoder runs them: TangoFlux at ``--steps`` (projected to ``--project-steps``) with every
    configuration; Stable Audio 3 at ``--sa3-steps`` (measured, not projected), our paths only."""
    if which == "tangoflux":
        return args
    configs = [c for c in args.configs if c != "upstream"] or ["default"]
    return argparse.Namespace(**{**vars(args), "steps": args.sa3_steps, "project_steps": args.sa3_steps,
                                 "configs": configs})  # fmt: skip


def build_or_given(which: str, args: argparse.Namespace, scratch: Path) -> str:
    """The folder of ``which``: the one given, or random weights built at ``--size`` (not timed)."""
    given = args.decoder if which == "tangoflux" else args.sa3
    if given is not None:
        return given
    if which == "tangoflux":
        from audiostory_cli.testing import build_tiny_decoder

        note(f"building a {args.size} TangoFlux with random weights (not timed)")
        return str(build_tiny_decoder(scratch / "decoder", size=args.size))
    from audiostory_cli.testing import build_tiny_stable_audio_3_small

    note(f"building a {args.size} Stable Audio 3 Small-SFX with random weights (not timed)")
    return str(build_tiny_stable_audio_3_small(scratch / "sa3", size=args.size))


def summary_lines(rows: list[Row], dtype: str, device) -> list[str]:
    """The last lines: TangoFlux's projected speedup over the upstream loop, then Stable Audio 3's measured
    realtime factor (seconds of story per second of render, models loaded), where each ran."""
    lines = []
    for name in dict.fromkeys(r.decoder for r in rows):
        reference = next((r for r in rows if r.decoder == name and r.config == "upstream"), None)
        ours = next((r for r in rows if r.decoder == name and r.config == "default" and r.dtype == dtype), None)
        if ours is None:
            continue
        if reference is not None:
            speedup = reference.projected_s() / ours.projected_s()
            lines.insert(0, f"speedup at {ours.project_steps} steps: {speedup:.2f}x (measured at {ours.steps} steps "
                            f"on {device_name(device)})")  # fmt: skip
        elif name != "TangoFlux":
            render_s = ours.measured_s - ours.load_s
            lines.append(f"realtime factor at {ours.steps} steps: {ours.story_s / render_s:.1f}x ({name}, a "
                         f"{ours.story_s:g} s story rendered in {render_s:.1f} s, models loaded, measured on "
                         f"{device_name(device)} in {ours.dtype})")  # fmt: skip
    return lines


def report_dtypes(waves: dict, dtypes: list[str]) -> dict:
    """How far each lower-precision default render is from the fp32 one, per decoder (printed, and returned)."""
    out = {}
    for decoder in dict.fromkeys(k[0] for k in waves):
        reference = waves.get((decoder, "default", "fp32"))
        for name in dtypes:
            if name == "fp32" or reference is None or (decoder, "default", name) not in waves:
                continue
            rel, snr = wave_difference(waves[(decoder, "default", name)], reference)
            out.setdefault(decoder, {})[name] = {"relative_l2": rel, "snr_db": snr}
            print(f"{decoder} default path, {name} against fp32: relative L2 difference {rel:.4f}, SNR {snr:.1f} dB")
    return out


def device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def main(argv: list[str] | None = None) -> int:
    from audiostory_cli.errors import AudiostoryError

    args = parse_args(argv)
    try:
        return run(args)
    except AudiostoryError as err:
        note(f"error: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
