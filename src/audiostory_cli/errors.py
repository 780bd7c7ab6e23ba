"""One exception family for everything a user can get wrong or a run can hit.

The CLI maps these to one line on stderr and exit code 1 (see ``cli.main``); anything that is not an
``AudiostoryError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class AudiostoryError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user, ``hint`` says how to fix it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        message = super().__str__()
        return f"{message} ({self.hint})" if self.hint else message


class InputError(AudiostoryError):
    """A value given by the user (prompt, duration, path, option) is out of range or malformed."""


class OptionError(InputError):
    """A value given for one setting (a command-line option, the output path) is malformed or out of range.
    ``field`` names the setting (a ``RenderOptions`` field, "output", "outdir", "batch_size"); the CLI shows
    it as a usage error naming its option (exit 2)."""

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


class PlanError(AudiostoryError):
    """A plan file or a planner's answer does not satisfy the plan schema."""


class ModelNotFoundError(AudiostoryError):
    """A model reference resolved to nothing: no folder, no file, not in the hub cache, hub offline."""


class ModelLoadError(AudiostoryError):
    """Model files were found but could not be loaded (bad layout, missing or unexpected keys)."""


class AudioIOError(AudiostoryError):
    """Audio could not be written or read (unsupported format, missing encoder, disk error)."""
