"""Every planner engine through the tiny random planner, offline: transformers (its folder, and its GGUF file
through transformers' own loader), llama.cpp (the GGUF file), and a real llama-cpp-python OpenAI-compatible
server on 127.0.0.1 that a session fixture starts and stops. Each server failure a user can meet (stopped,
wrong model, bad key, no /v1, context too long) is met against a real server; a stdlib stub stands in only
for what llama-cpp-python's server never does (non-JSON replies, refusing response_format)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_planner import assert_fills_total
from typer.testing import CliRunner

from audiostory_cli.cli import app
from audiostory_cli.errors import (
    InputError,
    ModelLoadError,
    ModelNotFoundError,
    PlanError,
)
from audiostory_cli.planners import engine_for, load_planner
from audiostory_cli.planners.llama_cpp import LlamaCppPlanner
from audiostory_cli.planners.openai_http import HttpSettings, OpenAIHttpPlanner
from audiostory_cli.registry import load_planner as registry_load_planner
from audiostory_cli.story import StoryRequest

CPU = torch.device("cpu")
KEY = "sk-test-0123456789"  # the test server's API key
ALIAS = "tiny-planner"  # the model id the test server lists
STORY = "a storm reaches a quiet harbor, a ship's bell rings, the rain stops and gulls return"
ENGINES = ("transformers", "transformers-gguf", "llama_cpp", "openai_http")
FAST = HttpSettings(timeout_s=60.0, list_timeout_s=10.0, retries=1, backoff_s=0.1)  # failures in a second


def needs_llama():
    """llama-cpp-python (the llama and server extras), or the test is skipped with the install command."""
    return pytest.importorskip("llama_cpp", reason='the llama extra is not installed: pip install -e ".[server]"')


def needs_server():
    """llama-cpp-python's OpenAI-compatible server (the server extra), or the test is skipped saying so."""
    needs_llama()
    pytest.importorskip("llama_cpp.server.app", reason='the server extra is not installed: pip install -e ".[server]"')


# --- a real llama-cpp-python server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def llama_server(gguf: Path, log: Path, *, n_ctx: int = 8192, api_key: str | None = KEY):
    """``python -m llama_cpp.server`` on a free 127.0.0.1 port; yields its base URL, stops it at the end."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "1",
               "--n_threads_batch", "1", *(["--api_key", api_key] if api_key else [])]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_up(server, url, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_up(server: subprocess.Popen, url: str, log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s:g} s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def server_url(tiny_planner_gguf, tmp_path_factory):
    needs_server()
    with llama_server(tiny_planner_gguf, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("AUDIOSTORY_PLANNER_API_KEY", KEY)
    return KEY


# --- the engines' contract ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def planners(request, tiny_planner, tiny_planner_gguf):
    """Each engine's planner over the same tiny model, loaded once (the server one with the right key)."""
    loaded = {}

    def get(engine: str):
        if engine in ("llama_cpp", "openai_http"):
            needs_llama()
        if engine not in loaded:
            server_url = request.getfixturevalue("server_url") if engine == "openai_http" else None
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("AUDIOSTORY_PLANNER_API_KEY", KEY)
                ref = {"transformers": tiny_planner, "transformers-gguf": tiny_planner_gguf,
                       "llama_cpp": tiny_planner_gguf, "openai_http": server_url}[engine]  # fmt: skip
                override = "transformers" if engine == "transformers-gguf" else None
                loaded[engine] = load_planner(str(ref), device=CPU, dtype=torch.float32, engine=override)
        return loaded[engine]

    return get


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "request_",
    [StoryRequest(STORY, 60.0, max_event_s=28.9), StoryRequest("rain on a tin roof", 7.3, max_events=5, tone="calm")],
    ids=["60s", "7.3s-calm"],
)
def test_every_engine_plans_a_valid_plan_that_fills_the_total(planners, engine, request_):
    plan = planners(engine).plan(request_)
    assert_fills_total(plan, request_)
    if request_.tone:
        assert plan.tone == request_.tone


@pytest.mark.parametrize("engine", ENGINES[:3])  # a server may reuse its KV cache between requests, which moves
def test_every_local_engine_is_deterministic(planners, engine):  # near-ties of a random model
    request = StoryRequest(STORY, 30.0, max_events=4)
    assert planners(engine).plan(request) == planners(engine).plan(request)


def test_engines_record_the_reference_they_were_loaded_from(planners, tiny_planner, tiny_planner_gguf, server_url):
    needs_llama()
    assert planners("transformers").ref == str(tiny_planner)
    assert planners("llama_cpp").ref == str(tiny_planner_gguf)
    assert planners("openai_http").ref == server_url


def test_tiny_gguf_holds_the_same_model_for_llama_cpp_and_transformers(planners, tiny_planner_gguf):
    """The GGUF writer keeps weights and tokenizer: next-token logits of a chat agree across loaders."""
    llama_cpp = needs_llama()
    folder, from_gguf = planners("transformers"), planners("transformers-gguf")
    llama = LlamaCppPlanner.load(str(tiny_planner_gguf), isolated=False)  # its llm, in this process
    text = folder.tokenizer.apply_chat_template([{"role": "user", "content": STORY}], tokenize=False,
                                                add_generation_prompt=True)  # fmt: skip
    ids = folder.tokenizer(text, add_special_tokens=False).input_ids
    assert from_gguf.tokenizer(text, add_special_tokens=False).input_ids == ids
    assert llama.engine.llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    with torch.inference_mode():
        expected = folder.model(torch.tensor([ids])).logits[0, -1].numpy()
        np.testing.assert_allclose(from_gguf.model(torch.tensor([ids])).logits[0, -1].numpy(), expected, atol=1e-4)
    llm = llama.engine.llm
    llm.reset()
    llm.eval(ids)
    got = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
    assert np.argsort(got)[-5:].tolist() == np.argsort(expected)[-5:].tolist()  # the same top 5, in order
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()  # llama.cpp keeps its KV cache in fp16


def test_llama_cpp_prompt_cache_is_reused_and_a_bad_one_is_recomputed(tiny_planner_gguf, tmp_path):
    needs_llama()
    request = StoryRequest(STORY, 20.0, max_events=3)
    first = LlamaCppPlanner.load(str(tiny_planner_gguf), cache=tmp_path).plan(request)
    states = sorted(tmp_path.glob("prompt-*.bin"))
    assert len(states) == 1 and sorted(tmp_path.glob("vocab-*.pkl"))
    assert LlamaCppPlanner.load(str(tiny_planner_gguf), cache=tmp_path).plan(request) == first  # from the files
    states[0].write_bytes(b"not a state")
    assert LlamaCppPlanner.load(str(tiny_planner_gguf), cache=tmp_path).plan(request) == first
    assert LlamaCppPlanner.load(str(tiny_planner_gguf), cache=None).plan(request) == first


def test_llama_cpp_evaluates_a_story_the_same_way_whatever_the_context_held(tiny_planner_gguf, tmp_path):
    """llama.cpp's numbers depend on how tokens are batched: a story planned again in the same process (after
    itself, after another story) is evaluated in the same batches as in a fresh process, so it gets its plan."""
    needs_llama()
    request, other = StoryRequest(STORY, 20.0, max_events=3), StoryRequest("a door creaks open in the wind", 20.0)

    def plan_and_batches(planner):
        batches, evaluate = [], planner.engine.llm.eval
        planner.engine.llm.eval = lambda ids: (batches.append(list(ids)), evaluate(ids))[1]
        plan = planner.plan(request)
        planner.engine.llm.eval = evaluate
        return plan, batches

    def load(cache):  # in this process: the test reads the engine's llm
        return LlamaCppPlanner.load(str(tiny_planner_gguf), cache=cache, isolated=False)

    load(tmp_path).plan(request)  # the prompt cache on disk
    fresh = plan_and_batches(load(tmp_path))
    reused = load(tmp_path)
    assert plan_and_batches(reused) == fresh
    assert plan_and_batches(reused) == fresh  # the whole prompt was in the context already
    reused.plan(other)
    assert plan_and_batches(reused) == fresh  # its first words were
    assert plan_and_batches(load(None))[0] == fresh[0]


# --- llama.cpp on every CPU: AMX, and a native crash as one line ------------------------------------------

AMX_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n"
AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """``cpuinfo(text)``: the CPU flags the llama.cpp engine reads, as if /proc/cpuinfo said ``text``."""
    from audiostory_cli.planners import llama_cpp as engine

    monkeypatch.delenv(engine.EXTRA_BUFTS_ENV, raising=False)

    def fake(text: str) -> None:
        file = tmp_path / "cpuinfo"
        file.write_text(text)
        monkeypatch.setattr(engine, "CPUINFO", file)

    return fake


def test_weights_stay_out_of_the_extra_buffers_only_on_amx_cpus_unless_the_setting_says(cpuinfo, monkeypatch):
    from audiostory_cli.planners.llama_cpp import EXTRA_BUFTS_ENV, cpu_has_amx, extra_bufts_wanted

    cpuinfo(AVX2_CPUINFO)
    assert not cpu_has_amx() and extra_bufts_wanted()  # the repack buffer: faster tokens on AVX2
    cpuinfo(AMX_CPUINFO)
    assert cpu_has_amx() and not extra_bufts_wanted()  # llama.cpp #20824: the AMX buffer crashes on Q4_K
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "1")
    assert extra_bufts_wanted()
    cpuinfo(AVX2_CPUINFO)
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "0")
    assert not extra_bufts_wanted()
    monkeypatch.setenv(EXTRA_BUFTS_ENV, "off")
    with pytest.raises(InputError, match=rf"{EXTRA_BUFTS_ENV}='off': must be 0 .*, 1, or unset"):
        extra_bufts_wanted()


@pytest.mark.parametrize("cpu, expected", [(AMX_CPUINFO, False), (AVX2_CPUINFO, True)], ids=["amx", "avx2"])
def test_what_reaches_llama_cpp_follows_the_cpu(tiny_planner_gguf, cpuinfo, monkeypatch, cpu, expected):
    """The model params llama.cpp loads with (recorded at its C call), in this process and in the child."""
    llama_cpp = needs_llama()
    cpuinfo(cpu)
    native, seen = llama_cpp.llama_cpp, []
    load = native.llama_model_load_from_file
    monkeypatch.setattr(native, "llama_model_load_from_file",
                        lambda path, params: (seen.append(params.use_extra_bufts), load(path, params))[1])  # fmt: skip
    planner = LlamaCppPlanner.load(str(tiny_planner_gguf), isolated=False)
    assert seen == [expected] and planner.engine.extra_bufts is expected
    assert native.llama_model_default_params().use_extra_bufts  # the library's own default is left as it was
    assert LlamaCppPlanner.load(str(tiny_planner_gguf)).engine.extra_bufts is expected  # as the child loaded it


@pytest.mark.parametrize("cpu, expected", [(AMX_CPUINFO, False), (AVX2_CPUINFO, True)], ids=["amx", "avx2"])
def test_the_default_planner_on_a_cpu_keeps_its_q4_k_weights_out_of_the_amx_buffer(
    tiny_planner_gguf, cpuinfo, tmp_path, cpu, expected
):  # fmt: skip
    """A first run on a CPU loads the 1.5B Q4_K_M GGUF (here the tiny one under its name in checkpoints/): on an
    AMX CPU without llama.cpp's extra buffers (llama.cpp #20824 crashes there), elsewhere with them."""
    from audiostory_cli.checkpoints import LLAMA_PLANNER
    from audiostory_cli.registry import load_models
    from audiostory_cli.settings import RenderOptions

    needs_llama()
    cpuinfo(cpu)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / LLAMA_PLANNER.rsplit("/", 1)[1]).symlink_to(tiny_planner_gguf)
    planner = load_models(RenderOptions(), device=CPU, dtype=torch.float32, need_decoder=False).planner
    assert isinstance(planner, LlamaCppPlanner) and planner.ref == LLAMA_PLANNER
    assert planner.engine.extra_bufts is expected  # as the child process loaded it
    planner.engine.close()


def test_the_child_process_plans_what_the_in_process_engine_plans_and_loads_once(tiny_planner_gguf, tmp_path):
    needs_llama()
    from audiostory_cli.planners.llama_process import LlamaCppProcess

    requests = [StoryRequest(STORY, 20.0, max_events=3), StoryRequest("a door creaks open in the wind", 12.0)]
    here = LlamaCppPlanner.load(str(tiny_planner_gguf), cache=tmp_path / "here", isolated=False)
    child = LlamaCppPlanner.load(str(tiny_planner_gguf), cache=tmp_path / "child")
    assert isinstance(child.engine, LlamaCppProcess)
    pid, reports = child.engine.pid, []
    for request in requests + requests[:1]:
        assert child.plan(request, progress=reports.append) == here.plan(request)
    assert child.engine.pid == pid  # one process, one load, for every plan
    assert {r.stage for r in reports} == {"plan"} and max(r.done for r in reports) > 0  # progress came through
    cached = [sorted(p.name for p in (tmp_path / side).glob("prompt-*.bin")) for side in ("here", "child")]
    assert cached[0] == cached[1] and cached[0]  # the same prompt cache on disk
    child.engine.close()
    assert child.plan(requests[1]) == here.plan(requests[1])  # a new child when asked again
    assert child.engine.pid != pid


def test_a_crash_while_planning_is_one_line_and_the_next_plan_starts_a_new_process(tiny_planner_gguf, monkeypatch):
    needs_llama()
    from audiostory_cli.planners.llama_process import CRASH_ENV

    monkeypatch.delenv("AUDIOSTORY_LLAMA_EXTRA_BUFTS", raising=False)
    monkeypatch.setattr("audiostory_cli.planners.llama_cpp.cpu_has_amx", lambda *_: False)
    monkeypatch.setenv(CRASH_ENV, "plan")  # the child reads address 0 when asked for a plan: a real SIGSEGV
    planner = LlamaCppPlanner.load(str(tiny_planner_gguf))
    with pytest.raises(ModelLoadError) as caught:
        planner.plan(StoryRequest(STORY, 20.0))
    message = str(caught.value)
    assert message.startswith(
        f"the llama.cpp planner crashed (signal 11 SIGSEGV) while writing a plan with {tiny_planner_gguf}"
    )
    assert "\n" not in message and "AUDIOSTORY_LLAMA_EXTRA_BUFTS=0" in message
    monkeypatch.delenv(CRASH_ENV)
    request = StoryRequest(STORY, 20.0)
    assert_fills_total(planner.plan(request), request)


def test_a_crash_while_loading_names_the_file_and_what_was_already_tried(tiny_planner_gguf, monkeypatch):
    needs_llama()
    from audiostory_cli.planners.llama_process import CRASH_ENV

    monkeypatch.setenv(CRASH_ENV, "load")
    monkeypatch.setenv("AUDIOSTORY_LLAMA_EXTRA_BUFTS", "0")
    expected = (rf"crashed \(signal 11 SIGSEGV\) while loading {tiny_planner_gguf} "
                r"\(the weights were already out of llama.cpp's extra buffers")  # fmt: skip
    with pytest.raises(ModelLoadError, match=expected):
        LlamaCppPlanner.load(str(tiny_planner_gguf))


def test_an_error_in_the_child_comes_back_as_the_same_one_line_error(tmp_path):
    needs_llama()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF, but not really")
    with pytest.raises(ModelLoadError, match=rf"cannot load the planner {broken} with llama.cpp"):
        LlamaCppPlanner.load(str(broken))


def test_generate_whose_planner_crashes_prints_one_line_and_exits_1(tiny_planner_gguf, tmp_path):
    """As a user runs it (its own process): llama.cpp's SIGSEGV is one error line, exit 1, not a bare 139."""
    needs_llama()
    from audiostory_cli.planners.llama_process import CRASH_ENV

    env = {**os.environ, CRASH_ENV: "plan", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "audiostory_cli", "generate", STORY, "--planner",
                           str(tiny_planner_gguf), "--dry-run", "--json", "--duration", "20", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the llama.cpp planner crashed (signal 11 SIGSEGV)" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "Fatal Python error" not in done.stderr


# --- choosing the engine ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, engine, expected",
    [
        ("models/planner.gguf", None, "llama_cpp"),
        ("Qwen/Qwen2.5-1.5B-Instruct", None, "transformers"),
        ("./checkpoints/Qwen2.5-1.5B-Instruct", None, "transformers"),
        ("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", None, "llama_cpp"),
        ("http://127.0.0.1:8080/v1", None, "openai_http"),
        ("https://api.openai.com/v1", None, "openai_http"),
        ("models/planner.gguf", "transformers", "transformers"),
    ],
)
def test_the_engine_is_picked_from_the_reference(ref, engine, expected):
    assert engine_for(ref, engine) == expected


def test_a_wrong_engine_override_is_refused():
    with pytest.raises(InputError, match="must be one of transformers, llama_cpp, openai_http"):
        engine_for("planner.gguf", "vllm")
    with pytest.raises(InputError, match="openai_http needs an http"):
        engine_for("planner.gguf", "openai_http")
    with pytest.raises(InputError, match="--planner-model 'qwen' names a model on a server"):
        load_planner("planner.gguf", device=CPU, dtype=torch.float32, model_name="qwen")


def test_missing_llama_extra_names_the_install_command(tiny_planner_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(ModelLoadError, match=r'needs llama-cpp-python.*pip install "audiostory-cli\[llama\]"'):
        load_planner(str(tiny_planner_gguf), device=CPU, dtype=torch.float32)


def test_transformers_gguf_path_without_accelerate_names_the_install_command(tiny_planner_gguf, monkeypatch):
    from audiostory_cli.planners import transformers as engine

    real = engine.importlib.util.find_spec
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None if name == "accelerate" else real(name))
    with pytest.raises(ModelLoadError, match=r'needs accelerate .*pip install "audiostory-cli\[gguf\]"'):
        load_planner(str(tiny_planner_gguf), device=CPU, dtype=torch.float32, engine="transformers")


def test_a_bridge_gets_a_transformers_planner_and_refuses_a_server(tiny_planner_gguf, server_url):
    planner = registry_load_planner(str(tiny_planner_gguf), device=CPU, dtype=torch.float32, hidden_states=True)
    assert planner.model.config.model_type == "qwen2"  # the bridge reads its hidden states
    with pytest.raises(InputError, match="hidden states, which the openai_http engine does not give"):
        registry_load_planner(server_url, device=CPU, dtype=torch.float32, hidden_states=True)


# --- the server: what a user meets ------------------------------------------------------------------------


def test_server_model_defaults_to_the_first_listed_and_can_be_named(server_url, key):
    assert OpenAIHttpPlanner.load(server_url).engine.model == ALIAS
    assert OpenAIHttpPlanner.load(server_url + "/", model_name=ALIAS).ref == server_url


def test_wrong_model_name_lists_what_the_server_has(server_url, key):
    with pytest.raises(ModelNotFoundError, match=rf"{server_url} has no model 'qwen-72b' \(it lists: {ALIAS}\)"):
        OpenAIHttpPlanner.load(server_url, model_name="qwen-72b")


def test_a_refused_key_is_a_401_naming_the_url_and_never_shows_the_key(server_url, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key")
    with pytest.raises(ModelLoadError, match=rf"{server_url} refused the request \(401") as caught:
        OpenAIHttpPlanner.load(server_url)
    assert "the key was refused" in str(caught.value) and "sk-wrong-key" not in str(caught.value)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ModelLoadError, match="no key was sent.*AUDIOSTORY_PLANNER_API_KEY or OPENAI_API_KEY"):
        OpenAIHttpPlanner.load(server_url)


def test_a_url_without_v1_says_where_the_api_usually_is(server_url, key):
    bare = server_url.removesuffix("/v1")
    with pytest.raises(ModelLoadError, match=rf"{bare} has no /models endpoint \(404\).*ends in /v1"):
        OpenAIHttpPlanner.load(bare)


def test_credentials_in_the_url_are_refused_without_showing_them(server_url):
    with pytest.raises(InputError, match="carries credentials") as caught:
        OpenAIHttpPlanner.load(server_url.replace("http://", "http://me:sk-secret@"))
    assert "sk-secret" not in str(caught.value)


def test_context_too_long_and_a_stopped_server_are_one_line_naming_the_url(tiny_planner_gguf, tmp_path, key):
    needs_server()  # this test starts a server of its own (a small context), not the session's
    with llama_server(tiny_planner_gguf, tmp_path / "small.log", n_ctx=256) as url:
        planner = OpenAIHttpPlanner.load(url, settings=FAST)
        with pytest.raises(PlanError, match=rf"{url}: the plan request does not fit the context of {ALIAS}"):
            planner.plan(StoryRequest(STORY, 20.0))
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=rf"planner server {url}: cannot connect.*is the server running"):
        planner.plan(StoryRequest(STORY, 20.0))
    with pytest.raises(ModelLoadError, match=rf"planner server {url}: cannot connect"):
        OpenAIHttpPlanner.load(url, settings=FAST)
    assert time.monotonic() - started < 10  # a refused connection is retried briefly, not for minutes


def test_generate_through_the_server_prints_the_plan_and_writes_audio(server_url, tiny_decoder, tmp_path, key):
    runner = CliRunner()
    common = ["--planner", server_url, "--decoder", str(tiny_decoder), "--device", "cpu", "--duration", "6"]
    result = runner.invoke(app, ["generate", STORY, "--dry-run", "--json", *common], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["total_s"] == 6 and plan["events"]
    output = tmp_path / "story.wav"
    result = runner.invoke(app, ["generate", STORY, "-o", str(output), "--steps", "2", *common], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    audio, rate = sf.read(output)
    assert len(audio) == round(6 * rate)
    saved = (tmp_path / "story.plan.json").read_text()
    assert json.loads(saved)["render"]["planner"] == server_url and KEY not in saved and KEY not in result.output


def test_generate_with_a_stopped_server_exits_1_naming_the_address_and_writes_nothing(tmp_path, tiny_decoder):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    output = tmp_path / "story.wav"
    result = CliRunner().invoke(app, ["generate", STORY, "-o", str(output), "--planner", url, "--decoder",
                                      str(tiny_decoder), "--device", "cpu"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip() and "using device" not in line]
    message = " ".join(lines)
    assert url in message and "cannot connect" in message
    assert list(tmp_path.iterdir()) == []


def test_generate_with_a_gguf_planner_prints_a_valid_plan(tiny_planner_gguf):
    needs_llama()
    result = CliRunner().invoke(app, ["generate", STORY, "--planner", str(tiny_planner_gguf), "--dry-run", "--json",
                                      "--duration", "20", "--device", "cpu"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["total_s"] == 20 and sum(e["duration_s"] for e in plan["events"] if e["layer"] == 0) == 20


# --- what llama-cpp-python's server never does: a stub ----------------------------------------------------


@contextlib.contextmanager
def stub_server(replies):
    """A stdlib HTTP server on 127.0.0.1: ``replies(path, body) -> (status, content type, bytes)``; the request
    bodies it got are in the yielded list."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body):
            seen.append({"path": self.path, **(body or {})})
            status, kind, data = replies(self.path, body)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._answer(None)

        def do_POST(self):
            self._answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


MODELS = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]}).encode()
FENCED_PLAN = "```json\n" + json.dumps({
    "reasoning": "rain, a bell, gulls", "tone": "calm",
    "events": [{"caption": "rain on the harbor", "duration_s": 8, "tone": "calm"},
               {"caption": "a ship's bell rings", "duration_s": 6, "tone": "calm"},
               {"caption": "gulls cry over the water", "duration_s": 6, "tone": "hopeful"}],
    "background_sound": "waves lap at the pier",
}) + "\n```"  # fmt: skip


def _chat(content: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


def test_a_server_that_refuses_response_format_is_asked_without_it_and_the_answer_validated():
    def replies(path, body):
        if path.endswith("/models"):
            return 200, "application/json", MODELS
        if "response_format" in body:
            kind = body["response_format"]["type"]
            return 400, "application/json", json.dumps({"error": {"message": f"response_format {kind} unsupported"}}).encode()
        return 200, "application/json", _chat(FENCED_PLAN)

    with stub_server(replies) as (url, seen):
        planner = OpenAIHttpPlanner.load(url, settings=FAST)
        request = StoryRequest(STORY, 20.0)
        assert_fills_total(planner.plan(request), request)
        formats = [s.get("response_format", {}).get("type") for s in seen if s["path"].endswith("/completions")]
        assert formats == ["json_schema", "json_object", None]
        assert not planner.engine.constrained and all(s.get("temperature") == 0 for s in seen[1:])


def test_a_reply_that_is_not_json_is_one_line_naming_the_url():
    with stub_server(lambda path, body: (200, "text/html", b"<html>a login page</html>")) as (url, _):
        with pytest.raises(ModelLoadError, match=rf"{url} answered GET /v1/models with something that is not JSON"):
            OpenAIHttpPlanner.load(url, settings=FAST)


def test_a_model_that_chats_instead_of_planning_is_retried_then_a_plan_error():
    def replies(path, body):
        if path.endswith("/models"):
            return 200, "application/json", MODELS
        return 200, "application/json", _chat("Sure! Here is a lovely story about a harbor.")

    with stub_server(replies) as (url, seen):
        with pytest.raises(PlanError, match=rf"planner {url} gave no valid plan in 2 tries.*not valid JSON"):
            OpenAIHttpPlanner.load(url, settings=FAST).plan(StoryRequest(STORY, 20.0))
        retry = seen[-1]["messages"][-1]["content"]
        assert "That plan was rejected: the answer is not valid JSON" in retry


def test_a_busy_server_is_retried():
    calls = []

    def replies(path, body):
        calls.append(path)
        if len(calls) == 1:
            return 503, "application/json", b'{"error": {"message": "loading model"}}'
        return 200, "application/json", MODELS

    with stub_server(replies) as (url, _):
        assert OpenAIHttpPlanner.load(url, settings=FAST).engine.model == "stub"
    assert len(calls) == 2


def test_the_key_goes_only_into_the_authorization_header(key):
    headers = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            headers.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", str(len(MODELS)))
            self.end_headers()
            self.wfile.write(MODELS)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    planner = OpenAIHttpPlanner.load(f"http://127.0.0.1:{httpd.server_address[1]}/v1", settings=FAST)
    httpd.server_close()
    assert headers[0]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in planner.ref and KEY not in repr(planner.engine.url)
