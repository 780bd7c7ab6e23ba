"""Editing a rendered story: redo one event, vary it, inpaint a range, extend the story, continue a recording.

The plan file is the project file of a story: beside ``story.plan.json`` lie the audio and
``story.latents.safetensors`` (every clip's final latents, ``latents.py``), so an edit denoises only what it
changes (``operations.py``) and splices the result into the old samples (``splice.py``); the plan records each
edit (``records.py``), so ``render story.plan.json`` replays them and gets the edited file back sample for sample.
"""

from .records import Change, ContinueFrom, EventEdit, Extend, History, Inpaint, Vary

_LAZY = {"Story", "apply_edit", "extend_story", "load_story"}  # from .stories: they import the decoders' parts

__all__ = [
    "Change", "ContinueFrom", "EventEdit", "Extend", "History", "Inpaint", "Story", "Vary",
    "apply_edit", "extend_story", "load_story",
]  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        from . import stories

        return getattr(stories, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
