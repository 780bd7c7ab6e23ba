"""``RenderOptions``: every setting that changes the audio, checked once here, saved whole as ``plan["render"]``.

The command line, a saved plan and the pipeline all build this one dataclass, so a range is written in one
place and ``render story.plan.json`` gets back exactly what ``generate`` used. ``steps``, ``guidance`` and
``batch_size`` may be None ("the decoder's own", "what suits the device"); ``resolved`` fills them in before a
render, and the plan saves the values used. ``merge_options`` is the one place the command line, a saved plan
and the defaults are merged. No torch here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import InputError, OptionError, PlanError
from .paths import expand_user

DEFAULT_COHERENCE = 0.3  # weight of the residual query at fusion (0 = off); see benchmarks/coherence.py
DEFAULT_CROSSFADE_S = 1.0  # overlap between consecutive foreground clips
DEFAULT_PEAK_DBFS = -1.0  # peak ceiling of every track: 1 dB below full scale
WINDOWS = ("auto", "full")  # latent window a clip denoises: sized to the clip, or the decoder's full window
MAX_SEED = 2**63 - 1  # seeds are non-negative 64-bit integers
MAX_STEPS = 1000  # denoising steps per clip
MAX_GUIDANCE = 50.0  # classifier-free guidance scale
MAX_CROSSFADE_S = 10.0  # seconds two consecutive clips may overlap
LOUDNESS_RANGE_LUFS = (-70.0, 0.0)  # integrated loudness targets
PEAK_RANGE_DBFS = (-60.0, 0.0)  # peak ceilings
MAX_BATCH_SIZE = 64  # clips denoised together
MODEL_REFS = ("decoder", "planner", "bridge", "model")  # the fields that name models
MODEL_EXCLUSIVE = ("planner", "decoder", "bridge", "coherence")  # what an AudioStory model brings itself
MAX_REF_CHARS = 4096  # a model reference (a path or a hub id) is at most a path's length
MAX_NAME_BYTES = 255  # one file or folder name in a model reference (NAME_MAX): a longer one cannot exist


@dataclass(frozen=True)
class RenderOptions:
    """How a plan is rendered and mixed; everything here changes the samples, so all of it is saved."""

    seed: int = 0  # base seed; clip i draws its noise from story.clip_seed(seed, i)
    steps: int | None = None  # denoising steps per clip; None: the decoder's own (TangoFlux 50, SA3 8)
    guidance: float | None = None  # classifier-free guidance scale, <= 1 turns it off; None: the decoder's own
    crossfade_s: float = DEFAULT_CROSSFADE_S  # overlap between consecutive foreground clips, seconds
    coherence: float = DEFAULT_COHERENCE  # weight of the residual query at fusion; 0: the caption alone
    continuation: bool = True  # each clip's head generated as the continuation of the previous clip's tail
    window: str = "auto"  # "auto": denoise only the frames a clip needs; "full": the model's whole window
    loudness_lufs: float | None = None  # normalise integrated loudness to this target (BS.1770); None: off
    peak_dbfs: float = DEFAULT_PEAK_DBFS  # peak ceiling of the output
    decoder: str | None = None  # decoder reference; None: the default (or the AudioStory model's own)
    planner: str | None = None  # planner reference that wrote the plan; None for a hand-written plan
    bridge: str | None = None  # trained bridge adapter used in place of the text encoder, if any
    model: str | None = None  # AudioStory checkpoint that planned, conditioned and rendered, if any
    batch_size: int | None = None  # clips denoised together (it changes the samples by float rounding); None: what
    #                                suits the device (pipeline.auto_batch_size); a rendered plan saves the number used

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0, MAX_SEED)
        if self.steps is not None:
            _check_int("steps", self.steps, 1, MAX_STEPS)
        if self.guidance is not None:
            _check_range("guidance", self.guidance, 0.0, MAX_GUIDANCE, "(1 or less turns guidance off)")
        _check_range("crossfade", self.crossfade_s, 0.0, MAX_CROSSFADE_S, "seconds")
        _check_range("coherence", self.coherence, 0.0, 1.0)
        if not isinstance(self.continuation, bool):
            raise InputError(f"continuation = {_shown(self.continuation)}: must be true or false")
        if not isinstance(self.window, str) or self.window not in WINDOWS:
            raise InputError(f"window = {_shown(self.window)}: must be one of {', '.join(WINDOWS)}")
        if self.loudness_lufs is not None:
            _check_range("loudness", self.loudness_lufs, *LOUDNESS_RANGE_LUFS, "LUFS")
        _check_range("peak", self.peak_dbfs, *PEAK_RANGE_DBFS, "dBFS")
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        for name in MODEL_REFS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InputError(f"{name} = {_shown(value)}: must be a model reference (a path or a hub id)")
            if value is not None and max(len(os.fsencode(part)) for part in value.split("/")) > MAX_NAME_BYTES:
                raise InputError(f"{name} = {_shown(value)}: a name in it is longer than a file system allows "
                                 f"({MAX_NAME_BYTES} bytes): must be a model reference (a path or a hub id)")

    def resolved(self, default_steps: int, default_guidance: float, batch_size: int | None = None) -> RenderOptions:
        """These options with ``steps``/``guidance`` left to the decoder filled in with its own values, and
        ``batch_size`` left to the device with ``batch_size`` (when given)."""
        return replace(
            self,
            steps=default_steps if self.steps is None else self.steps,
            guidance=default_guidance if self.guidance is None else self.guidance,
            batch_size=batch_size if self.batch_size is None else self.batch_size,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``render`` object of a plan file."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FIELDS = {f.name for f in fields(RenderOptions)}
# What a plan written before a setting existed was rendered with: the behaviour of that time.
_LEGACY = {"coherence": 0.0, "continuation": False, "window": "auto", "loudness_lufs": None, "peak_dbfs": -1.0}


def options_from_dict(raw: Any, where: str = "render.") -> RenderOptions:
    """Read a plan's ``render`` object back whole; a bad value (of any JSON type, NaN, a 400-digit integer)
    is a ``PlanError`` naming the field and its range."""
    from .story import _json_kind, _key_name, shown  # story imports this module

    if not isinstance(raw, dict):
        raise PlanError(f"render must be an object, got {_json_kind(raw)}")
    unknown = sorted((k for k in raw if k not in _FIELDS), key=str)
    if unknown:
        raise PlanError(f"{where}{_key_name(unknown[0])}: unknown field (allowed: {', '.join(sorted(_FIELDS))})")
    values = {**_LEGACY, **{k: v for k, v in raw.items() if v is not None or k not in _LEGACY}}
    if values.get("decoder") == "":  # plans of the first version saved "" for "no decoder recorded"
        values["decoder"] = None
    for name in ("seed", "steps"):
        if values.get(name) is not None and (isinstance(values[name], bool) or not isinstance(values[name], int)):
            raise PlanError(f"{where}{name} = {shown(values[name])}: must be an integer")
    if "seed" not in values:
        raise PlanError(f"{where}seed is missing")
    for name in MODEL_REFS:
        value = values.get(name)
        if isinstance(value, str) and len(value) > MAX_REF_CHARS:
            raise PlanError(f"{where}{name} has {len(value)} characters: a model reference has at most {MAX_REF_CHARS}")
        if isinstance(value, str) and ("\0" in value or not value.isprintable()):
            raise PlanError(f"{where}{name} = {_shown(value)}: must be a model reference (a path or a hub id)")
    try:
        return RenderOptions(**values)
    except InputError as err:
        raise PlanError(f"{where}{err}") from None


def merge_options(saved: RenderOptions | None = None, **given: Any) -> RenderOptions:
    """The options of one run: the values ``given`` (RenderOptions fields; None: not given) win, then ``saved``
    (a plan's render block), then the defaults. Model references that name local files become absolute paths,
    so a saved plan works from any folder. A decoder or bridge given replaces a saved AudioStory model; a model
    given replaces a saved decoder and bridge. A bad value is an ``OptionError`` naming its field."""
    values = {name: value for name, value in given.items() if value is not None}
    for name in MODEL_REFS:
        if name in values:
            values[name] = _model_ref(name, values[name])
    base = saved or RenderOptions()
    if {"decoder", "bridge"} & values.keys():
        base = replace(base, model=None)
    if "model" in values:
        base = replace(base, decoder=None, bridge=None)
    if values.get("model", base.model) is not None:
        clash = [name for name in MODEL_EXCLUSIVE if name in values]
        if clash:
            raise OptionError(
                f"--model brings its own planner, decoder and fusion; drop {', '.join('--' + c for c in clash)}",
                field="model",
            )
    try:
        return replace(base, **values)
    except InputError as err:
        raise OptionError(str(err), field=str(err).split(" ", 1)[0]) from None



def _model_ref(name: str, ref: Any) -> str:
    """A model reference as saved: a local path made absolute (a bridge always), a hub id or URL as given."""
    from .checkpoints import canonical_ref

    text = str(ref)
    if not text.strip() or "\x00" in text or len(text) > MAX_REF_CHARS:
        what = "is empty" if not text.strip() else "holds a NUL byte" if "\x00" in text else f"has {len(text)} chars"
        raise OptionError(f"{name} = {text[:60]!r}: {what}; must be a path or a hub id", field=name)
    try:
        expand_user(text).exists()  # raises for what no file system takes (a name too long)
        if name == "bridge":  # a folder, saved by its absolute path whether or not it is there yet
            return str(expand_user(text).resolve())
        return canonical_ref(text)
    except (OSError, ValueError) as err:  # a name too long for the file system, a loop of links
        reason = getattr(err, "strerror", None) or str(err)
        raise OptionError(f"{name} = {text[:60]!r}: {reason}", field=name) from None
def _shown(value: Any) -> str:
    """``repr(value)`` for a message, cut to 60 characters; never raising: a huge int, ``NaN`` read from JSON
    (``story.NonFinite``) and deep nesting are shown as ``story.shown`` shows them."""
    from .story import NonFinite, shown  # story imports this module

    if isinstance(value, (int, NonFinite)) and not isinstance(value, bool):
        return shown(value)
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return shown(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} = {_shown(value)}: must be an integer between {low} and {high}")


def _check_range(name: str, value: Any, low: float, high: float, unit: str = "") -> None:
    try:
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer beyond float range, read from a plan
        finite = False
    if not finite or not low <= value <= high:
        shown = f"{value:g}" if finite else _shown(value)
        raise InputError(f"{name} = {shown}: must be between {low:g} and {high:g}{' ' + unit if unit else ''}")
