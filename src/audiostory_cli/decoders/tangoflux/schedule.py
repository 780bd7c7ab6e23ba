"""Which latent windows a render denoises, and which frames of each one are pinned to another window's.

Every clip is one window, or, past the model's window, several overlapping ones. A clip that continues another
lays its latent grid on the earlier clip's grid and starts ``HEAD_CONTEXT_FRAMES`` before its own audio
(``geometry.continuation_head``, the head's end floored to whole frames); the head of its first window (the
earlier clip's frames from there to that clip's end) is *pinned*: before every denoising step it is
overwritten with the earlier window's current frames, which sit at the same noise level because every window
takes its steps in lockstep. So clips that continue one another still share batches, the
earlier clip renders exactly as it would alone, and the head of the later clip ends as the earlier clip's
final latents: both sides of the crossfade are the same sound. A long clip's windows chain the same way.
A clip with a ``LatentGuide`` lays its grid at the guide's origin and pins nothing from another window here
(the decoder holds its guided frames).

No torch here: ``plan_windows`` is arithmetic on sample and frame counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ...story import clip_seed
from ..base import ClipRequest
from ..geometry import LONG_OVERLAP_S, continuation_head

FRAME_BUCKET = 16  # auto windows are rounded up to a multiple of this many latent frames, so clips batch


@dataclass(frozen=True)
class Window:
    """One denoising window: frames ``[start, start + frames)`` of one clip's latent grid."""

    clip: int  # index of the request it renders
    part: int  # 0: the clip's first window; a clip longer than one window has more
    start: int  # first frame of the clip's grid it covers
    frames: int  # latent frames it denoises
    seconds: float  # its duration token: seconds of the clip's audio from ``start`` on, at most the window
    seed: int  # seed of its starting noise
    source: int | None = None  # window whose frames its head copies before every step; None: nothing pinned
    source_offset: int = 0  # first frame of ``source`` that is copied (onto frame 0 of this window)
    pinned: int = 0  # frames of the head that are copied


@dataclass(frozen=True)
class ClipGrid:
    """Where one clip's latent frames lie on the timeline, and which windows fill them."""

    origin_sample: int  # timeline sample where latent frame 0 starts
    shift: int  # samples from frame 0 to the clip's first sample (head context and the overlap before it)
    total: int  # latent frames that hold the head and the clip's audio
    windows: tuple[int, ...]  # indices of its windows, in order; a later one overrides where they overlap


def plan_windows(
    requests: Sequence[ClipRequest],
    *,
    hop: int,
    full: int,
    sample_rate: int,
    window: str,
    continuation: bool,
) -> tuple[list[Window], dict[int, ClipGrid]]:
    """The windows every request needs, in an order where a window's ``source`` always comes first, and
    each clip's grid. ``hop``: samples per latent frame; ``full``: frames of the model's whole window."""
    windows: list[Window] = []
    grids: dict[int, ClipGrid] = {}
    overlap = round(LONG_OVERLAP_S * sample_rate / hop)
    for i in sorted(range(len(requests)), key=lambda i: (requests[i].start_sample, i)):
        request = requests[i]
        previous = request.continues if continuation else None
        head = _head(request, requests, grids, windows, previous, hop) if previous in grids else None
        origin = request.start_sample if head is None else head[0]
        if request.guide is not None:
            origin = request.guide.origin_sample
        shift = request.start_sample - origin
        total = math.ceil((shift + request.n_samples) / hop)
        mine, start, part = [], 0, 0
        while True:
            frames = window_frames_for(total - start, full, window)
            content = shift + request.n_samples - start * hop  # audio samples still to come from here on
            seconds = min(content, frames * hop) / sample_rate
            seed = request.seed if part == 0 else clip_seed(request.seed, part)
            if part == 0:
                source, offset, pinned = head[1:] if head is not None else (None, 0, 0)
                pinned = min(pinned, frames - 1)
            else:
                source, offset, pinned = mine[-1], start - windows[mine[-1]].start, overlap
            mine.append(len(windows))
            windows.append(Window(i, part, start, frames, seconds, seed, source, offset, pinned))
            if start + frames >= total:
                break
            start, part = start + frames - overlap, part + 1
        grids[i] = ClipGrid(origin, shift, total, tuple(mine))
    return windows, grids


def window_frames_for(needed: int, full: int, window: str) -> int:
    """Frames a window denoises when ``needed`` frames remain: the bucket above, or the full window."""
    if window == "full" or needed >= full:
        return full
    return min(full, math.ceil(needed / FRAME_BUCKET) * FRAME_BUCKET)


def _head(request, requests, grids, windows, previous: int, hop: int):
    """``(origin_sample, source window, offset, pinned)``: this clip's grid laid on the previous clip's,
    and the previous clip's frames from ``HEAD_CONTEXT_FRAMES`` before this clip's start to its end; None
    when they do not overlap."""
    grid, before = grids[previous], requests[previous]
    span = continuation_head(
        request.start_sample, grid.origin_sample, before.start_sample + before.n_samples, grid.total,
        hop=hop, round_end_up=False,
    )  # fmt: skip
    if span is None:
        return None
    first, end = span
    # The last of the previous clip's windows that starts at or before ``first`` holds those final frames,
    # up to where a later window of that clip takes over.
    rank = max(r for r, w in enumerate(grid.windows) if windows[w].start <= first)
    source = grid.windows[rank]
    offset = first - windows[source].start
    stop = windows[grid.windows[rank + 1]].start if rank + 1 < len(grid.windows) else end
    pinned = min(end, stop) - first
    pinned = min(pinned, windows[source].frames - offset)
    if pinned <= 0:
        return None
    return grid.origin_sample + first * hop, source, offset, pinned
