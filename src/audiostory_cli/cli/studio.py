"""``audiostory studio``: a local web page (Gradio) to plan, render, edit and extend stories, over the same
library calls as the other commands (``studio/``). Needs the studio extra."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from ..errors import AudiostoryError
from .app import _notify, app
from .display import errors, stderr
from .options import (
    BatchSizeOpt,
    BridgeOpt,
    CoherenceOpt,
    ContinuationOpt,
    CrossfadeOpt,
    DecoderOpt,
    DeviceOpt,
    DtypeOpt,
    GuidanceOpt,
    LoudnessOpt,
    ModelOpt,
    PlannerEngineOpt,
    PlannerModelOpt,
    PlannerOpt,
    SeedOpt,
    StepsOpt,
    WindowOpt,
    model_ref,
)

LOCAL_HOST = "127.0.0.1"  # the only address the page binds to unless --host says otherwise


@app.command()
def studio(
    outdir: Annotated[Path, typer.Option("--outdir", "-o", help="The studio's folder (created if missing): every "
                      "version made on the page is written here (story-NNN.wav, .plan.json, .latents.safetensors, "
                      ".png), plans are loaded from here, and the page serves files from nowhere else.")] = Path("studio"),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to serve on; 0: any free one (the "
                    "URL is printed on stdout).")] = 7860,
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but 127.0.0.1 lets other machines "
                    "use the page, its models and its folder (a warning says so).")] = LOCAL_HOST,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    crossfade: CrossfadeOpt = None,
    window: WindowOpt = None,
    batch_size: BatchSizeOpt = "auto",
    loudness: LoudnessOpt = None,
    coherence: CoherenceOpt = None,
    continuation: ContinuationOpt = None,
    bridge_path: BridgeOpt = None,
    planner: PlannerOpt = None,
    planner_model: PlannerModelOpt = None,
    planner_engine: PlannerEngineOpt = None,
    decoder: DecoderOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Serve a local page to plan a story, edit its plan as a table, render it, listen to each event, reroll,
    vary or re-caption one event, extend the story and undo; the models load once (on first use) and serve
    every browser tab, one render at a time. Needs the studio extra."""
    from ..run_setup import setup_run
    from ..studio.app import build_page, import_gradio
    from ..studio.files import StudioFolder
    from ..studio.session import Studio

    given = dict(seed=seed, steps=steps, guidance=guidance, crossfade_s=crossfade, coherence=coherence,
                 continuation=continuation, window=window, loudness_lufs=loudness, batch_size=batch_size,
                 planner=planner, decoder=decoder, bridge=model_ref(bridge_path), model=model)  # fmt: skip
    with errors():
        import_gradio()  # a missing extra is one line, before anything else
        setup = setup_run(given, outdir=outdir, device=device, dtype=dtype, notify=_notify)
        setup.outdir.mkdir(parents=True, exist_ok=True)
        folder = StudioFolder(setup.outdir)
        _gradio_files_inside(folder)
        if host != LOCAL_HOST:
            stderr.print(f"audiostory: warning: --host {host}: the page, its models and the files in {folder.root} "
                         "are open to every machine that reaches this address (no login)", soft_wrap=True)  # fmt: skip
        shared = Studio(setup, given, folder, planner_model=planner_model, planner_engine=planner_engine,
                         status=_loading)  # fmt: skip
        page = build_page(shared)
        page.queue(default_concurrency_limit=1)
        try:
            page.launch(
                server_name=host, server_port=port or _free_port(host), share=False, allowed_paths=[str(folder.root)],
                blocked_paths=[], prevent_thread_lock=True, quiet=True, ssr_mode=False, show_error=False,
                max_file_size="16mb", inbrowser=False,
            )  # fmt: skip
        except OSError as err:  # the port taken, an address this machine does not have
            why = "the port is in use" if "empty port" in str(err) else err.strerror or err
            raise AudiostoryError(f"cannot serve on {host} port {port}: {why}",
                                  hint="choose another --port (0: any free one) or --host") from None
    typer.echo(page.local_url, nl=True)
    stderr.print(f"audiostory studio: serving {page.local_url} (files in {folder.root}); Ctrl+C stops it",
                 soft_wrap=True)  # fmt: skip
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()


def _gradio_files_inside(folder) -> None:
    """Gradio serves the files it caches (its temp folder, its examples cache) besides ``allowed_paths``: both go
    inside the studio's folder, so nothing outside it can be served."""
    server = folder.server_folder()
    os.environ["GRADIO_TEMP_DIR"] = str(server / "cache")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(server / "examples")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    (server / "cache").mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _loading(message: str):
    """Each model load (on the page's first Plan or Render), as a line on stderr: once per process."""
    stderr.print(f"audiostory: {message}", soft_wrap=True)
    yield


def _free_port(host: str) -> int:
    """A port nobody listens on now (``--port 0``)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
