"""The ``audiostory`` command: ``app.py`` (the commands), ``dub.py`` (``dub``, registered on the same app),
``options.py`` (shared options -> RenderOptions), ``display.py`` (errors, progress, tables)."""

from . import dub as _dub  # noqa: F401  (registers the dub command on app)
from .app import app


def main() -> None:
    app(prog_name="audiostory")


__all__ = ["app", "main"]
