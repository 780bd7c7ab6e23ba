"""A real ``audiostory studio`` process on 127.0.0.1 (a free port), started and stopped by the tests that use it."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 180  # importing torch and gradio on a busy 2-core machine


@contextmanager
def studio_server(outdir: Path, planner: str, decoder: str, *extra: str, cwd: Path | None = None):
    """Run ``audiostory studio`` on the tiny models; yield (url, process, stderr path); stop it after."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", AUDIOSTORY_CHECKPOINTS=str(outdir.parent / "no-checkpoints"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH")])))  # fmt: skip
    env.pop("GRADIO_TEMP_DIR", None)
    log = outdir.parent / f"{outdir.name}-server.log"
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "audiostory_cli", "studio", "--planner", planner, "--decoder", decoder,
             "-o", str(outdir), "--port", "0", "--device", "cpu", *extra],
            stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd or outdir.parent,
        )  # fmt: skip
    try:
        url = _first_line(process, log)
        yield url.rstrip("/"), process, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_line(process: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline().decode().strip()
            if line.startswith("http"):
                return line
        if process.poll() is not None:
            break
    raise RuntimeError(f"the studio did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
