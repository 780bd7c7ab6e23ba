"""The ``audiostory`` command: ``app.py`` (the commands), ``dub.py`` (``dub``, registered on the same app),
``edit.py`` (``edit`` and ``extend``), ``studio.py`` (``studio``, the same), ``options.py`` (shared options ->
RenderOptions), ``display.py`` (errors, progress, tables)."""

from . import dub as _dub  # noqa: F401  (registers the dub command on app)
from . import edit as _edit  # noqa: F401  (registers edit and extend)
from . import studio as _studio  # noqa: F401  (registers the studio command on app)
from .app import app


def main() -> None:
    app(prog_name="audiostory")


__all__ = ["app", "main"]
