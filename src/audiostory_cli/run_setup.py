"""One run, set up before any model loads; every caller (the CLI's generate, render and batch, ``batch.local``,
the Ray actors) goes through here, and none repeats it.

    1. settings: command line > plan > defaults (``settings.merge_options``), each range checked once
    2. outputs: the audio file and the plan beside it (or a batch's folder) can be written, with names the
       file system takes, and the plan path is free or an overwritable file
    3. capabilities: what the decoder cannot honour is refused from its config files (``DecoderCaps.check``)
    4. hardware: the device and dtype, resolved once (``devices``)

``setup_run`` returns a frozen ``RunSetup``; ``story_request`` sizes a story's request for the decoder (most
events, longest event). A setting the user gave wrong is an ``OptionError`` naming it (the CLI: exit 2);
anything else a user can fix is another ``AudiostoryError`` (exit 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import audio_io
from .checkpoints import DEFAULT_DECODER
from .errors import AudiostoryError, OptionError
from .pipeline import check_story_output, longest_event_s
from .settings import RenderOptions, merge_options
from .story import StoryRequest, default_max_events
from .paths import expand_user

if TYPE_CHECKING:
    import torch

    from .decoders.base import DecoderCaps

Notify = Callable[[str], None]  # where the library's remarks go (the CLI: a line on stderr)


@dataclass(frozen=True)
class RunSetup:
    """What a run decided before any model loads."""

    options: RenderOptions  # merged (command line > plan > defaults); steps, guidance, batch size None: the
    #                         decoder's and the device's own, filled in by pipeline.resolve_options at render
    caps: DecoderCaps | None  # the decoder's, read from its config files; None with --model (known once loaded)
    device: torch.device | None  # where the models run; None: not resolved here (a Ray run: each actor does)
    dtype: torch.dtype | None  # what they compute in; None with device None
    output: Path | None = None  # the audio file to write, checked and absolute; None: a dry run or a batch
    plan_path: Path | None = None  # the plan beside it, checked and absolute
    outdir: Path | None = None  # a batch's output folder, checked and absolute

    def story_request(
        self, prompt: str, total_s: float, *, tone: str | None = None, max_events: int | None = None,
        seed: int | None = None, window_s: float | None = None,
    ) -> StoryRequest:  # fmt: skip
        """``story_request`` for this run's decoder; ``window_s``: the loaded decoder's (with --model, whose
        caps are known only once loaded); ``seed``: a batch line's own."""
        window_s = window_s if window_s is not None else self.caps.window_s
        seed = self.options.seed if seed is None else seed
        return story_request(prompt, total_s, seed=seed, tone=tone, max_events=max_events, window_s=window_s,
                             crossfade_s=self.options.crossfade_s)  # fmt: skip


def setup_run(
    given: dict[str, Any],
    *,
    saved: RenderOptions | None = None,
    output: str | os.PathLike[str] | None = None,
    outdir: str | os.PathLike[str] | None = None,
    device: str | None = "auto",
    dtype: str = "auto",
    dry_run: bool = False,
    notify: Notify | None = None,
) -> RunSetup:
    """Set up one run. ``given``: RenderOptions fields from the command line (None: not given); ``saved``: a
    plan's render block (render); ``output``: the audio file to write; ``outdir``: a batch's folder;
    ``device``/``dtype``: the user's words (``device`` None: leave both to the Ray actors); ``dry_run``: only
    planning follows, so the default decoder's files need not be on this machine."""
    # 1. Settings: command line > plan > defaults.
    options = merge_options(saved, **given)
    # 2. Outputs, before anything is computed.
    audio = plan_path = folder = None
    if output is not None:
        audio, plan_path = _as_option_error("output", check_story_output, output)
    if outdir is not None:
        folder = check_output_folder(outdir)
    # 3. What the decoder can do.
    caps = check_capabilities(options, dry_run=dry_run)
    # 4. Device and dtype.
    torch_device, torch_dtype = resolve_hardware(device, dtype, notify=notify) if device is not None else (None, None)
    return RunSetup(options, caps, torch_device, torch_dtype, audio, plan_path, folder)


def story_request(
    prompt: str, total_s: float, *, seed: int, tone: str | None, max_events: int | None, window_s: float,
    crossfade_s: float,
) -> StoryRequest:  # fmt: skip
    """A request sized for a decoder whose window is ``window_s``: no event longer than the window less the
    crossfade tail (``pipeline.longest_event_s``), and ``max_events`` (None: 8, or as many as the story needs)."""
    max_event_s = longest_event_s(window_s, crossfade_s)
    return StoryRequest(
        prompt=prompt,
        total_s=total_s,
        seed=seed,
        tone=tone,
        max_events=max_events or default_max_events(total_s, max_event_s),
        max_event_s=max_event_s,
    )


def check_capabilities(options: RenderOptions, *, dry_run: bool = False) -> DecoderCaps | None:
    """Refuse what the decoder cannot honour before any weight loads; return its caps (None for --model,
    whose decoder is known only once loaded). A dry run of the default decoder, whose files need not be
    here, gets the published Stable Audio 3 Small-SFX's caps without looking for them; a run that renders
    finds (or downloads) them here, so a gated or missing default decoder stops before any model loads."""
    from .decoders import stable_audio_3
    from .registry import describe_decoder

    if options.model is not None:
        return None
    if dry_run and options.decoder is None:
        caps = stable_audio_3.default_caps()
    else:
        caps = describe_decoder(options.decoder or DEFAULT_DECODER)
    bridge_width = None
    if options.bridge is not None:
        from .conditioning.trained_bridge import BridgeAdapter

        bridge_width = BridgeAdapter.read_config(options.bridge).text_dim
    caps.check(options, bridge_width=bridge_width)
    return caps


def resolve_hardware(device: str, dtype: str, *, notify: Notify | None = None) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype the user's words name (``auto`` says what it chose to ``notify``)."""
    from .devices import resolve_device, resolve_dtype

    torch_device = resolve_device(device, notify=notify)
    return torch_device, resolve_dtype(dtype, torch_device, notify=notify)


def check_output_folder(outdir: str | os.PathLike[str]) -> Path:
    """A batch's output folder, absolute: a folder it can write into, or one it can create (the nearest
    existing folder above it can be written into, and each new name fits the file system)."""
    text = os.fspath(outdir)
    if "\x00" in text:
        raise OptionError(f"output folder {text!r} holds a NUL byte", field="outdir")
    try:
        folder = expand_user(text).resolve()
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        is_folder = existing.is_dir()
    except OSError as err:  # a name too long for the file system, a loop of links
        raise OptionError(f"output folder {text[:80]!r}: {err.strerror or err}", field="outdir") from None
    if not is_folder:
        what = f"{folder} is a file" if existing == folder else f"cannot create {folder}: {existing} is a file"
        raise OptionError(what, hint="give a folder", field="outdir")
    _as_option_error("outdir", audio_io.check_writable_folder, existing)
    return folder


def _as_option_error(field: str, check: Callable, *args):
    """``check(*args)``, with any user error it raises as an ``OptionError`` for ``field``."""
    try:
        return check(*args)
    except OptionError:
        raise
    except AudiostoryError as err:
        raise OptionError(err.args[0], hint=err.hint, field=field) from None
