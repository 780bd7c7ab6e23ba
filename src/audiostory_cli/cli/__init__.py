"""The ``audiostory`` command: ``app.py`` (the commands), ``options.py`` (shared options -> RenderOptions),
``display.py`` (errors, progress, tables)."""

from .app import app


def main() -> None:
    app(prog_name="audiostory")


__all__ = ["app", "main"]
