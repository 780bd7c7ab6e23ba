"""The edits, on a rendered story held in memory: ``apply_change(plan, track, state, change) -> (plan, track,
state)``. ``render`` replays a plan's history through the same function, so an edited file and its replay are
the same samples.

One mechanism serves every edit. A clip is rendered again with a ``LatentGuide``: its latent grid laid where it
was, some frames *pinned* to known latents, the rest denoised from its seed:

- ``--event N``: N's head pinned to the previous clip's frames (it continues it, as in a full render), the rest
  new; ``--vary N``: the same, every frame starting from N's current latents noised to the strength;
- ``--inpaint A:B``: every clip reaching into the range, pinned everywhere but on the frames inside it;
- ``extend``: each new clip continues the one before it (the first, the story's last foreground clip);
- and after any of them, a clip that continues a changed one gets its head pinned to the new frames, then
  ``BAND_S`` of free frames, then its own old latents pinned: inpainting, so both joins stay seamless.

Then only the samples that changed are mixed again and spliced into the old track (``splice.py``).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .. import mix
from ..decoders.base import ClipRequest, LatentGuide
from ..decoders.geometry import continuation_head
from ..errors import InputError
from ..settings import MAX_SEED, RenderOptions
from ..story import Event, Plan, Progress, ProgressFn, clip_seed, event_seed, no_progress
from .continuation import fade_out
from .latents import StoryState
from .records import Change, EventEdit, Extend, Inpaint, Vary, apply_to_events, check_change, moves, stretches
from .splice import Shift, merge, splice

if TYPE_CHECKING:
    from ..conditioning.base import Conditioner
    from ..decoders.base import Decoder

BAND_S = 1.0  # free frames after a pinned head when a clip's head is made to continue a changed clip
STRETCH_SETTLE_FRAMES = 8  # a stretched bed takes its old samples this many frames past its free band
INPUT = -1  # the continued recording's key among the clips of ``mix.placements`` (its tail under clip 1's head)


@dataclass(frozen=True)
class Edited:
    """A story after an edit: the plan, its samples and what the next edit needs."""

    plan: Plan  # with the change applied to events/total_s (the caller records it in the history)
    track: np.ndarray  # float32 [C, samples]: the whole file (the continued recording first, when included)
    state: StoryState
    change: Change  # the change with its seed (and snapped duration) resolved, as the history records it


def fresh_seed() -> int:
    """A seed for ``--reroll`` and for edits given none: drawn, then printed and recorded."""
    return secrets.randbelow(MAX_SEED + 1)


def resolve(change: Change, plan: Plan, decoder: Decoder) -> Change:
    """``change`` checked against ``plan``, its seed drawn where none was given, its duration snapped to whole
    latent frames of the decoder (what follows then moves by whole frames, so its clips stay as they were)."""
    check_change(change, plan.events, plan.total_s)
    if isinstance(change, Extend):
        return change
    if isinstance(change, (Inpaint, Vary)):
        return change if change.seed is not None else replace(change, seed=fresh_seed())
    if change.reroll:
        change = replace(change, seed=fresh_seed(), reroll=False)
    if change.duration_s is None:
        return change
    return replace(change, duration_s=snapped_duration(plan.events[change.event], change.duration_s, decoder))


def snapped_duration(event: Event, duration_s: float, decoder: Decoder) -> float:
    """``duration_s`` moved to the nearest duration that changes the event's end by whole latent frames (SAME-S:
    whole attention chunks of frames, which a grid's head is aligned to), so what follows keeps its grid."""
    sr, unit = decoder.caps.sample_rate, decoder.caps.hop_samples * decoder.caps.frame_multiple
    frames = round((duration_s - event.duration_s) * sr / unit)
    if frames == 0:
        raise InputError(
            f"duration {duration_s:g} s is within half a latent step ({unit / sr * 1000:.0f} ms) of event "
            f"{event.index}'s {event.duration_s:g} s: nothing would change",
            hint="give a duration that differs more",
        )
    snapped = event.duration_s + frames * unit / sr
    if snapped <= 0:
        raise InputError(f"duration = {duration_s:g} s: must be > 0 seconds")
    return snapped


def apply_change(
    decoder: Decoder,
    conditioner: Conditioner,
    plan: Plan,
    track: np.ndarray,
    state: StoryState,
    change: Change,
    options: RenderOptions,
    *,
    progress: ProgressFn = no_progress,
) -> Edited:
    """Apply one (resolved) change to a rendered story: render the clips it touches, splice what changed."""
    caps = decoder.caps
    sr, hop = caps.sample_rate, caps.hop_samples
    cf = options.crossfade_s
    events, total_s = apply_to_events(plan.events, plan.total_s, change)
    after = replace(plan, events=events, total_s=total_s)
    spans_b, spans_a = mix.event_spans(plan, sr), mix.event_spans(after, sr)
    lengths_b, lengths_a = mix.clip_samples(plan, cf, sr), mix.clip_samples(after, cf, sr)
    follows = {b.index: a.index for a, b in mix.joins(after)} if options.continuation else {}
    followers = {v: k for k, v in follows.items()}

    # 1. Where each old clip now lies (a --duration edit moves what follows by whole frames).
    delta, moved, stretched, stretch_at = 0, set(), set(), 0
    if isinstance(change, EventEdit) and change.duration_s is not None:
        target = plan.events[change.event]
        delta = spans_a[target.index][1] - spans_b[target.index][1]
        moved = {e.index for e in plan.events if moves(e, target)}
        stretched = {e.index for e in plan.events if stretches(e, target)}
        stretch_at = spans_b[target.index][1]
        if delta % hop:
            raise AssertionError(f"a duration edit moved what follows by {delta} samples, not whole frames of {hop}")
    origins = {i: o + (delta if i in moved else 0) for i, o in state.origins.items()}
    latents = dict(state.latents)

    # 2. The clips the change renders, each with its guide, in timeline order; then their followers.
    texts = conditioner.condition(after, decoder)
    work = _targets(change, plan, after, spans_a, lengths_a, sr)
    work.update({i: "stretch" for i in stretched})
    rendered: dict[int, np.ndarray] = {}  # event index -> its new wave
    fully_new: set[int] = set()
    queue = sorted(work, key=lambda i: (spans_a[i][0], i))
    done = 0
    while queue:
        index = queue.pop(0)
        kind = work[index]
        event = after.events[index]
        start, n = spans_a[index][0], lengths_a[index]
        head = _head(decoder, index, follows, start, origins, latents, spans_a, lengths_a, state)
        origin = start if head is None else head[0]
        band_stop = _next_head_first(decoder, index, followers, origin, latents.get(index), spans_a, lengths_a)
        guide = _guide(kind, change, index, head, origin, origins.get(index), latents.get(index), start, n, hop, sr,
                       band_stop, (stretch_at, delta))  # fmt: skip
        if guide is None and kind == "follow":  # a follower whose head is what it was: nothing to do
            continue
        seed = clip_seed(change.seed, index) if isinstance(change, Inpaint) else event_seed(event, options.seed)
        if isinstance(change, Vary) and index == change.event:
            seed = change.seed
        text = texts[index]
        if isinstance(change, Inpaint) and change.caption is not None and kind == "inpaint":
            text = decoder.encode_text(change.caption)
        done += 1
        progress(Progress("render", done - 1, done + len(queue), f"event {index} ({kind})"))
        request = ClipRequest(event=event, n_samples=n, seed=seed, text=text, start_sample=start, guide=guide)
        clip = decoder.render([request], options, batch_size=1, progress=progress)[0]
        latents[index], origins[index] = clip.latents, clip.origin_sample
        rendered[index] = clip.wave
        if kind == "stretch":  # past its free band, its old samples moved (a longer decode rounds differently)
            old_wave = decoder.decode_latents(state.latents[index], start - state.origins[index], lengths_b[index])
            rendered[index] = _stretched_wave(clip.wave, old_wave, origin, start, stretch_at, delta, hop, sr)
        if kind in ("new", "vary"):
            fully_new.add(index)
        follower = followers.get(index)
        if follower is not None and follower not in work:
            work[follower] = "follow"
            queue.append(follower)
            queue.sort(key=lambda i: (spans_a[i][0], i))
    progress(Progress("render", done, done, "done"))

    # 3. Where the samples changed: a clip's wave or its fades (a duration edit changes the joins' fades).
    progress(Progress("mix", 0, 1, "splicing the edit into the story"))
    placed_b, placed_a = _placements(plan, state, cf, sr), _placements(after, state, cf, sr)
    waves: dict[int, np.ndarray] = dict(rendered)

    def wave_of(index: int) -> np.ndarray:
        if index not in waves:
            waves[index] = decoder.decode_latents(latents[index], spans_a[index][0] - origins[index], lengths_a[index])
        return waves[index]

    shift = Shift(at=spans_a[change.event][1], delta=delta) if delta else None
    dirty: list[tuple[int, int]] = []
    for e in after.events:
        i = e.index
        start, gain = placed_a[i]
        if i >= len(plan.events) or i in fully_new:
            dirty.append((start, start + len(gain)))
            if i < len(plan.events):  # the old clip's extent too (a shorter event leaves its old tail)
                old_start = placed_b[i][0]
                dirty.append((old_start, old_start + len(placed_b[i][1])))
            continue
        old_start, old_gain = placed_b[i]
        if i not in rendered and i not in stretched and old_start + (delta if i in moved else 0) == start:
            if np.array_equal(old_gain, gain):
                continue
        old_wave = decoder.decode_latents(state.latents[i], spans_b[i][0] - state.origins[i], lengths_b[i])
        span = _contribution_change(old_wave * old_gain, old_start, wave_of(i) * gain, start, shift)
        if span is not None:
            dirty.append(span)
    story_len = mix.to_samples(after.total_s, sr)
    lead = state.lead_samples
    if INPUT in placed_a:  # the recording's faded tail under its continuing clip: a clip of its own here
        waves[INPUT] = state.input_tail
    needed = {i for i, (s, g) in placed_a.items() if any(s < b and a < s + len(g) for a, b in merge(dirty, story_len))}
    for i in needed - set(waves):
        wave_of(i)
    story_old = track[:, lead:]
    story_new = splice(
        story_old, story_len, dirty, placed_a, waves, gain=state.gain, peak_dbfs=options.peak_dbfs,
        sample_rate=sr, shift=shift,
    )  # fmt: skip
    new_track = np.concatenate([track[:, :lead], story_new], axis=1) if lead else story_new
    progress(Progress("mix", 1, 1, "spliced"))
    new_state = replace(state, latents=latents, origins=origins)
    return Edited(plan=after, track=new_track, state=new_state, change=change)


def _targets(change: Change, before: Plan, after: Plan, spans, lengths, sr: int) -> dict[int, str]:
    """The clips a change renders itself (not counting followers): index -> "new", "vary" or "inpaint"."""
    if isinstance(change, Extend):
        return {e.index: "new" for e in change.events}
    if isinstance(change, EventEdit):
        return {change.event: "new"}
    if isinstance(change, Vary):
        return {change.event: "vary"}
    a, b = mix.to_samples(change.start_s, sr), mix.to_samples(change.end_s, sr)
    return {i: "inpaint" for i, (start, _) in spans.items() if start < b and a < start + lengths[i]}


def _head(decoder, index, follows, start, origins, latents, spans, lengths, state):
    """``(origin, head latents)`` of a clip that continues another (its grid on the other's), or None."""
    caps = decoder.caps
    if index in follows:
        prev = follows[index]
        prev_origin, prev_latents = origins[prev], latents[prev]
        prev_end = spans[prev][0] + lengths[prev]
    elif state.head is not None and index == state.head_event:
        prev_origin, prev_latents, prev_end = state.head_origin, state.head, state.head_end
    else:
        return None
    found = continuation_head(
        start, prev_origin, prev_end, prev_latents.shape[0], hop=caps.hop_samples,
        frame_multiple=caps.frame_multiple, round_end_up=caps.round_head_end_up,
    )  # fmt: skip
    if found is None:
        return None
    first, end = found
    end = min(end, prev_latents.shape[0])
    return prev_origin + first * caps.hop_samples, prev_latents[first:end]


def _next_head_first(decoder, index, followers, origin, old, spans, lengths) -> int | None:
    """The first of this clip's frames that the clip after it pins as its head (None: nothing follows): a
    follower's free band stops there, so the change does not run on into the next clip."""
    caps = decoder.caps
    nxt = followers.get(index)
    if nxt is None or old is None:
        return None
    found = continuation_head(
        spans[nxt][0], origin, spans[index][0] + lengths[index], old.shape[0], hop=caps.hop_samples,
        frame_multiple=caps.frame_multiple, round_end_up=caps.round_head_end_up,
    )  # fmt: skip
    return None if found is None else found[0]


def _guide(kind, change, index, head, origin, old_origin, old, start, n, hop, sr, band_stop, stretch) -> LatentGuide | None:
    """The guide of one clip to render; None: a new clip with nothing known (rendered as a fresh one), or a
    follower that need not change. ``band_stop``: a follower's free band ends before this frame; ``stretch``:
    (timeline sample, samples) of a --duration edit, for a bed that runs across it."""
    frames = math.ceil((start - origin + n) / hop) + 64  # more than any grid needs; the decoder ignores the rest
    if kind == "new" and head is None:
        return None
    channels = old.shape[1] if old is not None else head[1].shape[1]
    known = np.zeros((frames, channels), dtype=np.float32)
    pinned = np.zeros(frames, dtype=bool)
    strength = 1.0
    covered = 0  # frames of the new grid the old latents cover
    if kind == "stretch":  # its frames up to the edit point, then its old frames moved by the edit's frames
        if old is None or old_origin != origin:
            raise AssertionError(f"event {index}: a stretched bed's grid moved ({old_origin} -> {origin})")
        at, delta = stretch
        cut, resume, half = _stretch_frames(origin, at, delta, hop, sr)
        known[: min(cut, frames)] = old[: min(cut, frames)]
        tail = old[max(cut, cut - delta // hop) :][: max(0, frames - resume)]
        known[resume : resume + len(tail)] = tail
        pinned[: min(cut, old.shape[0], frames)] = True
        pinned[resume : resume + len(tail)] = True
        pinned[max(0, cut - half) : resume + half] = False
    if kind in ("vary", "inpaint", "follow"):
        if old is None or (old_origin - origin) % hop:
            raise AssertionError(f"event {index}: its grid moved off its frames ({old_origin} -> {origin})")
        # A follower of a --duration edit on SAME-S lays its grid on whole attention chunks of the edited
        # clip's: its old frames land ``m`` frames further on (the same latents; its decode is new).
        m = (old_origin - origin) // hop
        src = old[max(0, -m) :][: max(0, frames - max(0, m))]
        known[max(0, m) : max(0, m) + len(src)] = src
        covered = max(0, m) + len(src)
        if kind == "follow" and head is not None and m == 0 and np.array_equal(old[: head[1].shape[0]], head[1]):
            return None  # its head is what it was: nothing to do
    if kind == "vary":
        strength = change.strength
    elif kind == "inpaint":
        a, b = mix.to_samples(change.start_s, sr), mix.to_samples(change.end_s, sr)
        first, stop = max(0, (a - origin) // hop), max(0, -(-(b - origin) // hop))
        pinned[:covered] = True
        pinned[first:stop] = False
    elif kind == "follow":
        h = head[1].shape[0] if head is not None else 0
        band = math.ceil(BAND_S * sr / hop)
        stop = h + band if band_stop is None or band_stop <= h else min(h + band, band_stop)
        pinned[:covered] = True
        pinned[h:stop] = False
    if head is not None:
        h = head[1].shape[0]
        known[:h] = head[1]
        pinned[:h] = True
    return LatentGuide(origin_sample=origin, latents=known, pinned=pinned, strength=strength)


def _stretch_frames(origin: int, at: int, delta: int, hop: int, sr: int) -> tuple[int, int, int]:
    """A stretched bed's grid: the frame of the edit point (``cut``), the frame its old latents from there on
    resume at (``cut`` plus the frames a longer event adds), and half its free band around the edit point."""
    cut = (at - origin) // hop
    return cut, cut + max(delta // hop, 0), math.ceil(BAND_S * sr / hop) // 2


def _stretched_wave(new, old, origin, start, at, delta, hop, sr) -> np.ndarray:
    """A stretched bed's wave: its new decode up to ``STRETCH_SETTLE_FRAMES`` past its free band, then its old
    samples, ``delta`` later (the same latents there; only float rounding differs where they meet)."""
    _, resume, half = _stretch_frames(origin, at, delta, hop, sr)
    meet = origin + (resume + half + STRETCH_SETTLE_FRAMES) * hop - start  # clip sample where they meet
    if not 0 < meet < new.shape[-1] or meet - delta >= old.shape[-1]:
        return new
    out = new.copy()
    count = min(new.shape[-1] - meet, old.shape[-1] - (meet - delta))
    out[:, meet : meet + count] = old[:, meet - delta : meet - delta + count]
    return out


def _contribution_change(
    old: np.ndarray, old_start: int, new: np.ndarray, new_start: int, shift: Shift | None
) -> tuple[int, int] | None:
    """The range of the new timeline where a clip's faded samples differ (exactly) from what the splice keeps
    there: the old clip's samples at the same place, or, from ``shift.at`` on, ``shift.delta`` earlier."""
    delta, at = (0, 0) if shift is None else (shift.delta, shift.at)
    first = min(old_start, new_start)
    stop = max(old_start + old.shape[-1] + max(delta, 0), new_start + new.shape[-1])
    t = np.arange(first, stop)
    source = np.where(t < at, t, t - delta) - old_start if delta else t - old_start  # old clip's sample index
    inside = (source >= 0) & (source < old.shape[-1])
    kept = np.zeros((old.shape[0], stop - first))
    kept[:, inside] = old[:, source[inside]]
    made = np.zeros_like(kept)
    made[:, new_start - first : new_start - first + new.shape[-1]] = new
    differs = np.flatnonzero(np.any(kept != made, axis=0))
    if differs.size == 0:
        return None
    return first + int(differs[0]), first + int(differs[-1]) + 1


def _placements(plan: Plan, state: StoryState, cf: float, sr: int) -> dict[int, tuple[int, np.ndarray]]:
    """``mix.placements``, with the continued recording's tail (``INPUT``) fading out under the clip that
    continues it, when the file includes the recording."""
    if state.input_tail is None or state.head_event is None:
        return mix.placements(plan, cf, sr)
    fade = state.input_tail.shape[-1]
    placed = mix.placements(plan, cf, sr, {state.head_event: fade})
    placed[INPUT] = (0, fade_out(fade))
    return placed
