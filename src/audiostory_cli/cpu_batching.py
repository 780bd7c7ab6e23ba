"""How many clips a CPU denoises together (``--batch-size auto`` on a CPU), decided by a measurement on this
machine, not by a rule.

Batching clips makes every matrix product of the DiT taller: the same weights, ``batch`` times the rows. Whether
that pays depends on the CPU's kernels at one clip's row count. Measured on 2 AVX2 cores with real sizes, it pays
for Stable Audio 3 Small's DiT (116 frames a 10 s clip; a clip 18 % cheaper in batches of 4) and not for
TangoFlux's (578 rows a clip with guidance; 3 %). On CPUs with AMX it can go further either way.

The measurement (``measure_gain``): the DiT's own ``nn.Linear`` shapes (``linear_shapes``), each timed at one
clip's rows and at ``CANDIDATE`` clips' rows in the DiT's dtype, best of ``REPEATS``; their times summed with
each shape's count give the share a row saves in a batch. Linear layers carry nearly all of a DiT's FLOPs;
attention is per clip in either case. A batch of ``CANDIDATE`` is used where a row saves at least ``MIN_GAIN``,
else one clip at a time. About a second on a laptop CPU at real sizes.

The choice is kept in ``cache_dir()/cpu-batching.json``, keyed by the CPU, torch, the thread count, the dtype
and the shapes: measured once per machine and model, then the same on every run (a rendered plan also saves
the batch size it used, so ``render`` reproduces it anywhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from typing import TYPE_CHECKING

from .checkpoints import cache_dir
from .devices import cpu_name

if TYPE_CHECKING:
    import torch

CANDIDATE = 4  # clips a batch holds where batching pays
MIN_GAIN = 0.12  # share of a row's time a batch must save to be used (TangoFlux measures 0.03-0.09 here: kept apart)
REPEATS = 3  # timings of each product; the best counts
CACHE_FILE = "cpu-batching.json"


def linear_shapes(module: torch.nn.Module) -> list[tuple[int, int, int]]:
    """``(in_features, out_features, count)`` of every ``nn.Linear`` in ``module``, the most FLOPs first."""
    from torch import nn

    counts = Counter((m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear))
    return sorted(((k, n, c) for (k, n), c in counts.items()), key=lambda s: -s[0] * s[1] * s[2])


def measure_gain(rows: int, shapes: list[tuple[int, int, int]], dtype: torch.dtype, batch: int = CANDIDATE) -> float:
    """The share of a row's time saved by multiplying ``batch`` clips' rows at once rather than one clip's:
    ``1 - sum(count * t(batch * rows)) / (batch * sum(count * t(rows)))`` over ``shapes`` (``linear_shapes``),
    each product timed in ``dtype`` on this CPU, best of ``REPEATS`` (negative: batching costs)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    alone = together = 0.0
    for k, n, count in shapes:
        weight = torch.randn(n, k, generator=generator).to(dtype)
        inputs = torch.randn(batch * rows, k, generator=generator).to(dtype)
        one, many = inputs[:rows], inputs
        alone += count * _best(lambda: F.linear(one, weight))  # noqa: B023 - called within this iteration
        together += count * _best(lambda: F.linear(many, weight))  # noqa: B023
    return 1.0 - together / (batch * alone) if alone > 0 else 0.0


def cpu_batch_size(rows: int, shapes: list[tuple[int, int, int]], dtype: torch.dtype) -> int:
    """Clips a batch should hold on this CPU for a DiT whose clip has ``rows`` rows and whose linear layers are
    ``shapes``: ``CANDIDATE`` where ``measure_gain`` is at least ``MIN_GAIN``, else 1; measured once per
    machine, torch, thread count, dtype and shapes, then read from the cache."""
    import torch

    key = "|".join([cpu_name(), torch.__version__, str(torch.get_num_threads()), str(dtype).removeprefix("torch."),
                    str(rows), ",".join(f"{k}x{n}x{c}" for k, n, c in shapes)])  # fmt: skip
    path = cache_dir() / CACHE_FILE
    known = _read(path)
    if key not in known:
        gain = measure_gain(rows, shapes, dtype)
        known[key] = {"gain": round(gain, 4), "batch": CANDIDATE if gain >= MIN_GAIN else 1}
        _write(path, known)
    return int(known[key]["batch"])


def _best(run) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _read(path) -> dict:
    """The cached choices; an unreadable or foreign file counts as empty (it is measured again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and v.get("batch") in (1, CANDIDATE)}


def _write(path, known: dict) -> None:
    """Save the choices atomically; a cache that cannot be written only means measuring again next time."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
