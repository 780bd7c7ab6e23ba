"""The llama.cpp engine in a child process: a native crash there (SIGSEGV, SIGABRT in llama.cpp) ends the
child, not the command, and comes back here as one ``ModelLoadError`` naming the signal.

The child (``python -m audiostory_cli.planners.llama_process FD``) loads the model once and answers every
chat of the run over a pipe, so a batch loads it once and the prompt cache stays in its memory; it runs the
same ``LlamaCppEngine`` as an in-process load, so it writes the same plans.

    parent                                   child
    ("load", settings)                  ->   open_engine(...)
                                        <-   ("ready", {"extra_bufts": ...}) | ("error", ...) | ("bug", ...)
    ("complete", messages, schema, n)   ->   engine.complete(...)
                                        <-   ("progress", Progress)*, then ("answer", text) | ("error", ...)
    (the pipe closes)                   ->   exits

The child's stdout and stderr go to an anonymous temporary file (its last line is quoted when it crashes), so
nothing it prints can reach the command's stdout (``--json``); with ``AUDIOSTORY_DEBUG=1`` it prints to the
command's stderr, with Python's fault handler on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import weakref
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import IO, Any

from .. import errors
from ..errors import AudiostoryError, ModelLoadError
from ..story import ProgressFn

DEBUG_ENV = "AUDIOSTORY_DEBUG"  # as the CLI's: "1" shows the child's own output and native tracebacks
CRASH_ENV = "AUDIOSTORY_LLAMA_TEST_CRASH"  # tests only: "load" or "plan" makes the child read address 0 there
_LOG_LINE_CHARS = 160  # how much of the child's last output line a crash message quotes


class LlamaCppProcess:
    """An ``Engine`` whose ``LlamaCppEngine`` lives in a child process (started by ``start``)."""

    constrained = True  # the child decodes every answer under the schema

    def __init__(self, ref: str, path: Path, settings: dict[str, Any]) -> None:
        self.ref = ref
        self.path = path
        self.settings = settings  # open_engine's keyword arguments: gpu, threads, cache, extra_bufts
        self.extra_bufts = bool(settings["extra_bufts"])  # as the child reports what llama.cpp loaded with
        self._lock = threading.Lock()  # one chat at a time (a batch's planner thread, the main thread)
        self._child: _Child | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def start(cls, ref: str, path: Path, **settings: Any) -> LlamaCppProcess:
        """Start the child and load ``path`` there; errors of the load (a crash included) are raised here."""
        engine = cls(ref, path, settings)
        engine._spawn()
        return engine

    @property
    def pid(self) -> int | None:
        """The child's process id (None when none runs)."""
        return self._child.process.pid if self._child else None

    def complete(
        self, messages: list[dict[str, str]], schema: dict[str, Any], *, max_tokens: int, progress: ProgressFn
    ) -> str:
        with self._lock:
            if self._child is None:  # the last one crashed: a fresh child loads the model again
                self._spawn()
            return self._exchange(("complete", messages, schema, max_tokens), "writing a plan with", progress)

    def close(self) -> None:
        """Stop the child (it exits when its pipe closes); the engine starts a new one if asked again."""
        if self._finalizer is not None:
            self._finalizer()
        self._child, self._finalizer = None, None

    # --- the parent's side -------------------------------------------------------------------------------

    def _spawn(self) -> None:
        child = _Child.start()
        self._child = child
        self._finalizer = weakref.finalize(self, child.stop)
        load = ("load", {"ref": self.ref, "path": str(self.path), **self.settings})
        try:
            info = self._exchange(load, "loading", lambda _: None)
        except BaseException:
            self.close()  # a child without a model is of no use
            raise
        self.extra_bufts = bool(info["extra_bufts"])

    def _exchange(self, message: tuple, doing: str, progress: ProgressFn) -> Any:
        """Send ``message``, pass progress reports on, return the reply; an error or a crash is raised."""
        child = self._child
        assert child is not None
        try:
            self._talk(child, doing, lambda: child.conn.send(message))
            while True:
                kind, *body = self._talk(child, doing, child.conn.recv)
                if kind != "progress":
                    break
                progress(body[0])
        except BaseException:  # a crash, or interrupted mid-answer (Ctrl-C, a failing progress callback): the
            child.process.kill()  # pipe may still hold the rest of that answer, so this child is ended (a new
            self.close()  # one starts if asked again)
            raise
        if kind == "error":
            name, text, hint = body
            error_class = getattr(errors, name, None)
            if not (isinstance(error_class, type) and issubclass(error_class, AudiostoryError)):
                error_class = ModelLoadError
            raise error_class(text, hint=hint)
        if kind == "bug":
            raise RuntimeError(f"the llama.cpp planner process failed while {doing} {self.ref}:\n{body[0]}")
        return body[0]

    def _talk(self, child: _Child, doing: str, act: Any) -> Any:
        """``act()`` on the pipe; the pipe closing (the child is gone) is raised as the crash it was."""
        try:
            return act()
        except (EOFError, OSError):
            raise self._crash_error(child, doing) from None

    def _crash_error(self, child: _Child, doing: str) -> ModelLoadError:
        code = child.wait()
        if code < 0:
            try:
                how = f"crashed (signal {-code} {signal.Signals(-code).name})"
            except ValueError:
                how = f"crashed (signal {-code})"
        else:
            how = f"exited with status {code}"
        said = child.last_line()
        said = f"; its last output: {said}" if said else ""
        if self.extra_bufts:
            hint = (f"on CPUs with AMX (Xeon Sapphire Rapids and later) try {_extra_bufts_env()}=0, which keeps the "
                    "weights out of llama.cpp's AMX buffer (llama.cpp issue #20824), or --planner-engine transformers")  # fmt: skip
        else:
            hint = ("the weights were already out of llama.cpp's extra buffers: try --planner-engine transformers or "
                    f"another llama-cpp-python build; {DEBUG_ENV}=1 shows llama.cpp's own output")  # fmt: skip
        return ModelLoadError(f"the llama.cpp planner {how} while {doing} {self.ref}{said}", hint=hint)


def _extra_bufts_env() -> str:
    from .llama_cpp import EXTRA_BUFTS_ENV

    return EXTRA_BUFTS_ENV


class _Child:
    """The child process, its end of the pipe and the file its output goes to."""

    def __init__(self, process: subprocess.Popen, conn: Connection, log: IO[bytes] | None) -> None:
        self.process = process
        self.conn = conn
        self.log = log

    @classmethod
    def start(cls) -> _Child:
        ours, theirs = Pipe(duplex=True)
        debug = os.environ.get(DEBUG_ENV) == "1"
        log = None if debug else tempfile.TemporaryFile(prefix="audiostory-llama-")
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very audiostory_cli
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [sys.executable, *(["-X", "faulthandler"] if debug else []), "-m", __name__, str(theirs.fileno())]
        try:
            process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                       stdout=log or 2, stderr=subprocess.STDOUT)  # never the command's stdout  # fmt: skip
        except OSError as err:
            ours.close()
            if log:
                log.close()
            raise ModelLoadError(f"cannot start the llama.cpp planner process: {err}") from None
        finally:
            theirs.close()
        return cls(process, ours, log)

    def wait(self) -> int:
        """The child's exit status (negative: the signal that ended it), once it has ended."""
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the pipe broke but the child lives on: end it
            self.process.kill()
            return self.process.wait()

    def last_line(self) -> str:
        """The last line the child printed (llama.cpp's abort message, for one), shortened."""
        if self.log is None:
            return ""
        try:
            size = os.fstat(self.log.fileno()).st_size
            tail = os.pread(self.log.fileno(), 4096, max(0, size - 4096)).decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return lines[-1][:_LOG_LINE_CHARS] if lines else ""

    def stop(self) -> None:
        self.conn.close()  # the child reads EOF and exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.log:
            self.log.close()


# --- the child's side ------------------------------------------------------------------------------------


def _error_reply(err: BaseException) -> tuple:
    if isinstance(err, AudiostoryError):
        return ("error", type(err).__name__, err.args[0] if err.args else "", err.hint)
    return ("bug", "".join(traceback.format_exception(err)))


def _test_crash(where: str) -> None:
    """Tests: a real segmentation fault (reading address 0 in native code) where ``CRASH_ENV`` says."""
    if os.environ.get(CRASH_ENV) == where:
        import ctypes

        ctypes.string_at(0)


def serve(conn: Connection) -> None:
    """The child's loop: load on the first message, then answer chats until the pipe closes."""
    from .llama_cpp import open_engine

    engine = None
    while True:
        try:
            kind, *body = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if kind == "load":
                settings = dict(body[0])
                ref, path = settings.pop("ref"), Path(settings.pop("path"))
                cache = settings.pop("cache")
                _test_crash("load")
                engine = open_engine(ref, path, cache=None if cache is None else Path(cache), **settings)
                reply: tuple = ("ready", {"extra_bufts": engine.extra_bufts})
            elif kind == "complete" and engine is not None:
                messages, schema, max_tokens = body
                _test_crash("plan")
                answer = engine.complete(messages, schema, max_tokens=max_tokens,
                                         progress=lambda report: conn.send(("progress", report)))  # fmt: skip
                reply = ("answer", answer)
            else:
                reply = ("bug", f"unexpected message {kind!r} (model loaded: {engine is not None})")
        except Exception as err:  # noqa: BLE001 - every error goes back to the parent, which raises it
            reply = _error_reply(err)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; the pipe closing ends us
    with contextlib.closing(Connection(int(argv[0]))) as conn:
        serve(conn)


if __name__ == "__main__":
    main(sys.argv[1:])
