"""Continuation geometry shared by every decoder backend (and by the editing code that builds guides).

A clip that continues another lays its latent grid on the earlier clip's grid, starting
``HEAD_CONTEXT_FRAMES`` before its own audio, and pins the earlier clip's final frames from there to the
end of the earlier clip's audio as its head. ``continuation_head`` is that arithmetic, once; each backend
passes its own rounding (TangoFlux floors the end and needs no alignment; Stable Audio 3 rounds the end up,
so the last, partly covered frame is pinned too, and aligns the head's first frame to SAME-S's attention
chunks), so both render exactly as they did before the arithmetic moved here.

No torch here: plain integers.
"""

from __future__ import annotations

LONG_OVERLAP_S = 3.0  # a clip longer than one window is rendered as windows overlapping this much
HEAD_CONTEXT_FRAMES = 8  # a continuing clip also pins this many of the previous clip's frames before the
# overlap (and discards their audio), so the VAE's edge effects fall outside the crossfade


def continuation_head(
    start_sample: int,
    prev_origin: int,
    prev_end_sample: int,
    prev_frames: int,
    *,
    hop: int,
    frame_multiple: int = 1,
    round_end_up: bool,
) -> tuple[int, int] | None:
    """The previous clip's grid frames ``[first, end)`` that a clip starting at ``start_sample`` pins as its
    head, or None when they do not overlap.

    ``prev_origin``: timeline sample of the previous clip's latent frame 0; ``prev_end_sample``: timeline
    sample where its audio ends; ``prev_frames``: latent frames it has (``end`` never passes them); ``hop``:
    samples per latent frame. ``first`` lies ``HEAD_CONTEXT_FRAMES`` before the frame holding
    ``start_sample`` (never before 0), rounded down to ``frame_multiple``; ``end`` is the frame where the
    previous clip's audio ends, rounded up (``round_end_up``: the partly covered last frame is pinned too)
    or down. The continuing clip's grid then starts at ``prev_origin + first * hop``.
    """
    if hop < 1 or frame_multiple < 1:
        raise ValueError(f"hop = {hop}, frame_multiple = {frame_multiple}: both must be >= 1")
    if start_sample < prev_origin:
        return None
    first = max(0, (start_sample - prev_origin) // hop - HEAD_CONTEXT_FRAMES)
    first -= first % frame_multiple
    span = prev_end_sample - prev_origin
    end = -(-span // hop) if round_end_up else span // hop
    end = min(end, prev_frames)
    if end <= first:
        return None
    return first, end
