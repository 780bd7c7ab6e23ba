"""``--continue-from INPUT``: a story that begins as the acoustic continuation of a recording.

The recording is read, remixed to the decoder's channels and resampled to its rate; its tail is encoded by
the decoder's own VAE and pinned as the head of the story's first foreground clip, exactly as a clip's head
continues the clip before it. With the input included, the output is the recording, then the story, the first
clip crossfading with the recording's last ``crossfade`` seconds; without, the story alone, its first clip
starting where the recording ends.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import audio_io, mix
from ..decoders.base import LatentGuide
from ..decoders.geometry import HEAD_CONTEXT_FRAMES
from ..errors import InputError
from ..settings import RenderOptions
from ..story import Plan
from .records import ContinueFrom
from ..paths import expand_user

if TYPE_CHECKING:
    from ..decoders.base import Decoder

ENCODE_FRAMES = 64  # latent frames of the recording's end the VAE encodes (more than the head pins: context)
SILENT_DBFS = -70.0  # a recording whose peak is below this is silence: nothing to continue
MAX_INPUT_BYTES = 2 << 30  # a recording larger than this is not read


@dataclass(frozen=True)
class InputHead:
    """The recording, ready for the render: the first clip's guide and what the mix needs."""

    event: int  # the event whose clip continues the recording
    guide: LatentGuide  # its head, pinned to the recording's last frames
    head: np.ndarray = field(repr=False)  # [frames, C] the recording's encoded tail
    head_origin: int = 0  # timeline sample of ``head``'s frame 0 (negative)
    head_end: int = 0  # timeline sample where the recording ends: the fade's length when included, else 0
    tail: np.ndarray | None = field(default=None, repr=False)  # [C, head_end]: the recording's samples under
    #   the first clip's fade-in; None when the output leaves the recording out
    before: np.ndarray | None = field(default=None, repr=False)  # [C, lead]: the recording before the story
    lead: int = 0  # samples of the recording before the story's time 0 in the output

    def mixed_under(self, raw: np.ndarray) -> np.ndarray:
        """The output's raw samples: the recording up to the story's start, then the story ``raw`` with the
        recording's last ``head_end`` samples fading out (cos) under its first clip's fade-in."""
        out = np.zeros((raw.shape[0], self.lead + raw.shape[-1]), dtype=np.float32)
        out[:, : self.lead] = self.before
        fade = self.tail.shape[-1]
        out[:, self.lead :] = raw
        out[:, self.lead : self.lead + fade] += self.tail * fade_out(fade)
        return out

    def state_fields(self) -> dict[str, Any]:
        return {
            "head": self.head, "head_origin": self.head_origin, "head_end": self.head_end,
            "head_event": self.event, "input_tail": self.tail,
        }  # fmt: skip


def fade_out(samples: int) -> np.ndarray:
    """The recording's equal-power fade-out under the first clip's fade-in (``mix``'s join curves)."""
    return np.cos(np.pi / 2 * (np.arange(samples, dtype=np.float64) + 0.5) / max(samples, 1))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def continue_from(path: str | Path, include_input: bool = True) -> ContinueFrom:
    """The plan's record of the recording at ``path`` (checked readable as audio, its hash taken)."""
    path = expand_user(path)
    read_recording(path, sample_rate=None, channels=None)  # every problem said before any model loads
    return ContinueFrom(path=str(path.resolve()), sha256=file_sha256(path), include_input=include_input, stem=path.name)


def told_prompt(prompt: str, record: ContinueFrom) -> str:
    """The prompt the planner gets: that the story continues a recording, then the user's words."""
    from ..story import MAX_PROMPT_CHARS

    told = f"This story continues an existing recording ({record.stem}); it starts where the recording ends. {prompt}"
    return told[:MAX_PROMPT_CHARS]


def read_recording(path: Path, sample_rate: int | None, channels: int | None) -> np.ndarray:
    """The recording as float32 [channels, samples] at ``sample_rate`` (None: its own), remixed to ``channels``
    (None: its own); every problem one ``InputError``."""
    if not path.exists():
        raise InputError(f"--continue-from {path}: no such file")
    if path.is_dir():
        raise InputError(f"--continue-from {path}: is a folder", hint="give an audio file (.wav, .flac, .mp3, ...)")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise InputError(f"--continue-from {path}: larger than {MAX_INPUT_BYTES >> 30} GiB", hint="give a shorter recording")
    try:
        wave, rate = audio_io.read_audio(path)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - soundfile/ffmpeg say "unknown format" many ways
        raise InputError(f"--continue-from {path}: not a readable audio file ({str(err).splitlines()[0][:120]})") from None
    if wave.ndim != 2 or wave.shape[-1] == 0:
        raise InputError(f"--continue-from {path}: the recording is empty")
    if not np.isfinite(wave).all():
        raise InputError(f"--continue-from {path}: the recording has non-finite samples (NaN or inf)")
    if wave.shape[0] not in (1, 2):
        raise InputError(
            f"--continue-from {path}: has {wave.shape[0]} channels; mono or stereo recordings can be continued",
            hint="mix it down to stereo first (ffmpeg -i IN -ac 2 OUT.wav)",
        )
    peak = float(np.max(np.abs(wave)))
    if peak <= 10 ** (SILENT_DBFS / 20):
        raise InputError(f"--continue-from {path}: the recording is silent (peak below {SILENT_DBFS:g} dBFS): nothing to continue")
    if channels is not None and wave.shape[0] != channels:
        wave = np.repeat(wave, channels, axis=0) if wave.shape[0] == 1 else wave.mean(axis=0, keepdims=True)
    if sample_rate is not None and rate != sample_rate:
        wave = audio_io.resample(np.ascontiguousarray(wave, dtype=np.float32), rate, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def head_event(plan: Plan) -> int:
    """The event that continues the recording: the first foreground event; it must start at 0."""
    foreground = plan.foreground()
    if not foreground or foreground[0].start_s > 0:
        raise InputError("a story that continues a recording needs a foreground event (layer 0) starting at 0 s")
    return foreground[0].index


def load_input_head(decoder: Decoder, plan: Plan, options: RenderOptions, spans, lengths) -> InputHead:
    """Read the plan's recording (its hash checked), encode its tail and build the first clip's guide."""
    from ..decoders.geometry import continuation_head

    record: ContinueFrom = plan.continue_from
    path = Path(record.path)
    if not path.is_file():
        raise InputError(f"the story continues {path}, which is missing", hint="put the recording back where it was")
    if file_sha256(path) != record.sha256:
        raise InputError(f"the story continues {path}, which has changed since", hint="put the original recording back")
    caps = decoder.caps
    sr, hop = caps.sample_rate, caps.hop_samples
    wave = read_recording(path, sr, caps.channels)
    index = head_event(plan)
    first_event = plan.events[index]
    fade = mix.to_samples(min(options.crossfade_s, first_event.duration_s / 2), sr) if record.include_input else 0
    needed = (HEAD_CONTEXT_FRAMES + math.ceil(fade / hop) + 1) * hop
    if wave.shape[-1] < needed:
        raise InputError(
            f"--continue-from {path}: {wave.shape[-1] / sr:.2f} s is too short to continue: at least "
            f"{needed / sr:.2f} s", hint="give a longer recording",
        )  # fmt: skip
    frames = min(ENCODE_FRAMES, wave.shape[-1] // hop)
    encoded = decoder.encode_audio(wave[:, wave.shape[-1] - frames * hop :])
    head_end = fade  # the recording's end, on the story's timeline
    origin = head_end - frames * hop
    found = continuation_head(
        spans[index][0], origin, head_end, encoded.shape[0], hop=hop, frame_multiple=caps.frame_multiple,
        round_end_up=caps.round_head_end_up,
    )  # fmt: skip
    if found is None:
        raise AssertionError("the recording's encoded tail does not reach the story's start")
    first, end = found
    end = min(end, encoded.shape[0])
    pinned_latents = encoded[first:end]
    guide = LatentGuide(
        origin_sample=origin + first * hop, latents=pinned_latents, pinned=np.ones(end - first, dtype=bool)
    )
    tail = wave[:, wave.shape[-1] - fade :] if record.include_input else None
    before = wave[:, : wave.shape[-1] - fade] if record.include_input else None
    return InputHead(
        event=index, guide=guide, head=encoded, head_origin=origin, head_end=head_end, tail=tail, before=before,
        lead=0 if before is None else before.shape[-1],
    )  # fmt: skip
