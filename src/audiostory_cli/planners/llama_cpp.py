"""The llama.cpp engine (llama-cpp-python): the default for a ``.gguf`` file. It runs the quantized weights as
they are (no de-quantizing at load), so a 1.5B Q4_K_M planner loads in about a second and writes a plan in
seconds on a laptop CPU. Greedy decoding under the plan schema with llguidance, as the transformers engine.

    messages -> the file's chat template -> ids -> decode_json(llama.cpp eval with its KV cache) -> answer text

Much of a plan's CPU time is the prompt: the rules and the example exchanges (~800 tokens) are the same for
every story, so their KV cache is kept between plans in memory and, once computed, on disk (``cache_dir()``,
~15 MB per model), with the model's token table that llguidance needs. A later run starts from the story.

The engine runs in a child process (``llama_process``) that loads the model once and answers every chat of
a run: a native crash in llama.cpp (SIGSEGV, SIGABRT) ends that process, not the command, and comes back
as one ``ModelLoadError`` naming the signal. On CPUs with AMX, llama.cpp's AMX weight buffer crashes on
Q4_K models (llama.cpp issue #20824), so there the weights stay out of the extra buffer types
(``use_extra_bufts``, see ``extra_bufts_wanted``); elsewhere the extra buffer (the CPU repack buffer on
AVX2) is kept, as it makes tokens faster.

Installed with ``pip install "audiostory-cli[llama]"`` (llama-cpp-python builds llama.cpp from source).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import checkpoints
from ..errors import InputError, ModelLoadError
from ..story import ProgressFn
from .base import LIMITS, PLANNER_KIND, JsonPlanner, PlanLimits
from .grammar import decode_json

if TYPE_CHECKING:
    from .llama_process import LlamaCppProcess

LLAMA_EXTRA = 'pip install "audiostory-cli[llama]"'  # what this engine needs: llama-cpp-python
CONTEXT_TOKENS = 8192  # KV cache allocated: the chat (~1k tokens) and a plan of up to ~40 events
BATCH_TOKENS = 512  # prompt tokens evaluated per llama.cpp batch
_MIN_CACHED_PREFIX = 32  # a shorter shared prefix is not worth a file
EXTRA_BUFTS_ENV = "AUDIOSTORY_LLAMA_EXTRA_BUFTS"  # 1: weights in llama.cpp's extra buffers, 0: not; unset: by CPU
CPUINFO = Path("/proc/cpuinfo")  # where Linux lists the CPU's flags (no such file elsewhere: no AMX assumed)
AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")  # Intel AMX (Xeon Sapphire Rapids and later)


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or one line saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise _not_installed() from None
    return llama_cpp


def _not_installed() -> ModelLoadError:
    return ModelLoadError(
        "the llama.cpp planner engine needs llama-cpp-python, which is not installed",
        hint=f"install it with `{LLAMA_EXTRA}` (it builds llama.cpp, a few minutes)",
    )


def cpu_has_amx(cpuinfo: Path | None = None) -> bool:
    """Whether the CPU lists an AMX flag in ``/proc/cpuinfo`` (False where there is no such file)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}
    return any(flag in flags for flag in AMX_FLAGS)


def extra_bufts_wanted() -> bool:
    """Whether llama.cpp may put the weights in its extra buffer types (``use_extra_bufts``): the
    ``AUDIOSTORY_LLAMA_EXTRA_BUFTS`` setting (0 or 1) when set, else not on a CPU with AMX, whose AMX buffer
    crashes on Q4_K models (llama.cpp #20824), and yes elsewhere (the repack buffer makes tokens faster)."""
    value = os.environ.get(EXTRA_BUFTS_ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise InputError(f"{EXTRA_BUFTS_ENV}={value!r}: must be 0 (weights out of llama.cpp's extra buffers), 1, "
                         "or unset (decided by the CPU)")  # fmt: skip
    return not cpu_has_amx()


_PARAMS_LOCK = threading.Lock()  # the default-params patch is process-wide: one model load at a time


@contextlib.contextmanager
def _model_params(llama_cpp: Any, extra_bufts: bool) -> Iterator[None]:
    """``Llama(...)`` with ``use_extra_bufts`` set: llama-cpp-python (0.3.x) has no argument for it and swallows
    unknown ones, so its model params are taken from ``llama_model_default_params``, patched while it loads."""
    native = llama_cpp.llama_cpp
    default = native.llama_model_default_params

    def params() -> Any:
        made = default()
        if hasattr(made, "use_extra_bufts"):  # llama.cpp builds older than the field have no extra buffers
            made.use_extra_bufts = extra_bufts
        return made

    with _PARAMS_LOCK:
        native.llama_model_default_params = params
        try:
            yield
        finally:
            native.llama_model_default_params = default


def open_llama(path: Path, *, gpu: bool, threads: int, extra_bufts: bool) -> Any:
    """``llama_cpp.Llama`` on ``path`` with this engine's settings; a file llama.cpp refuses is a
    ``ModelLoadError``."""
    llama_cpp = import_llama_cpp()
    try:
        with _model_params(llama_cpp, extra_bufts):
            return llama_cpp.Llama(
                model_path=str(path), n_ctx=CONTEXT_TOKENS, n_batch=BATCH_TOKENS, n_threads=threads,
                n_threads_batch=threads, n_gpu_layers=-1 if gpu else 0, verbose=False,
            )  # fmt: skip
    except (ValueError, RuntimeError, OSError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(f"cannot load the planner {path} with llama.cpp: {reason}") from None


def open_engine(
    ref: str, path: Path, *, gpu: bool, threads: int, cache: Path | None, extra_bufts: bool
) -> LlamaCppEngine:
    """Load ``path`` into an engine in this process (the child process calls this too)."""
    llm = open_llama(path, gpu=gpu, threads=threads, extra_bufts=extra_bufts)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelLoadError(
            f"planner {path} has no chat template (tokenizer.chat_template)",
            hint="the planner must be an instruction-tuned chat model (e.g. a Qwen2.5 Instruct GGUF)",
        )
    return LlamaCppEngine(ref, llm, path, template, cache)


def cache_dir() -> Path:
    """Where prompt caches live: ``$AUDIOSTORY_CACHE/llama-cpp``, else ``$XDG_CACHE_HOME/audiostory/llama-cpp``."""
    from ..checkpoints import cache_dir as root

    return root() / "llama-cpp"


class LlamaCppEngine:
    """A GGUF model in llama.cpp, answering chats under a JSON schema."""

    constrained = True  # every answer is decoded under the schema

    def __init__(self, ref: str, llm: Any, path: Path, template: str, cache: Path | None) -> None:
        llama_cpp = import_llama_cpp()
        self.ref = ref  # the reference it was loaded from
        self.llm = llm  # llama_cpp.Llama
        self.cache = cache  # folder of prompt caches, None: none on disk
        self.extra_bufts = bool(getattr(llm.model_params, "use_extra_bufts", False))  # what llama.cpp loaded with
        stat = path.resolve().stat()
        buffers = "extra-bufts" if self.extra_bufts else "plain"  # other kernels: other numbers in the KV cache
        self._model_key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{llm.n_ctx()}:{buffers}"
        self._vocab = self._llguidance_tokenizer(llama_cpp)
        metadata = llm.metadata
        eos = self._piece(llm.token_eos())
        bos_id = int(metadata.get("tokenizer.ggml.bos_token_id", -1))
        self._format = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=eos, bos_token=self._piece(bos_id) if bos_id >= 0 else ""
        )
        self._add_bos = metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"

    def complete(
        self, messages: list[dict[str, str]], schema: dict[str, Any], *, max_tokens: int, progress: ProgressFn
    ) -> str:
        llama_cpp = import_llama_cpp()
        prompt_ids = self._tokens(messages)
        # The rules and the example are every chat's first tokens: from memory or disk when already computed.
        fixed = _common_prefix(prompt_ids, self._tokens([*messages[:-1], {"role": "user", "content": "."}]))
        start = self._restore(prompt_ids, fixed)
        n_vocab = self.llm.n_vocab()

        def next_logits(ids: list[int]) -> np.ndarray:
            self.llm.eval(ids)
            if self.llm.n_tokens == fixed and start < fixed:
                self._save(prompt_ids[:fixed])
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(n_vocab,)).copy()

        first = prompt_ids[start:]
        if start < fixed < len(prompt_ids):  # the fixed part alone (so it can be saved), then the story from it
            next_logits(prompt_ids[start:fixed])
            first = prompt_ids[fixed:]
        room = self.llm.n_ctx() - len(prompt_ids)  # the KV cache ends there
        return decode_json(next_logits, first, self._vocab, schema, ref=self.ref,
                           budget=max(1, min(max_tokens, room)), progress=progress)  # fmt: skip

    # --- the prompt cache --------------------------------------------------------------------------------

    def _tokens(self, messages: list[dict[str, str]]) -> list[int]:
        prompt = self._format(messages=messages).prompt
        return self.llm.tokenize(prompt.encode(), add_bos=self._add_bos, special=True)

    def _restore(self, prompt_ids: list[int], fixed: int) -> int:
        """Put the longest known prefix of ``prompt_ids`` up to ``fixed`` (at least one token short) in the KV
        cache; its length. Never more than ``fixed``: llama.cpp's numbers depend on how tokens are batched, so
        the story is always evaluated in one batch from there, and a story planned twice in one process gets
        the plan of a fresh run (not one from a longer reused prefix)."""
        llm = self.llm
        kept = min(_common_prefix(prompt_ids, llm.input_ids[: llm.n_tokens].tolist()), fixed, len(prompt_ids) - 1)
        if kept < fixed <= len(prompt_ids) - 1 and self._load(prompt_ids[:fixed]):
            return fixed
        llm.n_tokens = kept  # eval() drops the KV cells past n_tokens
        return kept

    def _state_file(self, tokens: list[int]) -> Path | None:
        if self.cache is None or len(tokens) < _MIN_CACHED_PREFIX:
            return None
        digest = hashlib.sha256(f"{self._model_key}:{tokens}".encode()).hexdigest()[:32]
        return self.cache / f"prompt-{digest}.bin"

    def _load(self, tokens: list[int]) -> bool:
        llama_cpp = import_llama_cpp()
        file = self._state_file(tokens)
        if file is None or not file.is_file():
            return False
        self.llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
        out = (llama_cpp.llama_token * len(tokens))()
        count = ctypes.c_size_t(0)
        read = llama_cpp.llama_state_seq_load_file(self.llm.ctx, str(file).encode(), 0, out, len(tokens), ctypes.byref(count))
        if read == 0 or list(out[: count.value]) != tokens:  # unreadable or another prompt: compute it again
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
            return False
        self.llm.input_ids[: len(tokens)] = tokens
        self.llm.n_tokens = len(tokens)
        return True

    def _save(self, tokens: list[int]) -> None:
        """Write the KV cache of ``tokens`` (what the context holds now) under a temporary name, then rename."""
        llama_cpp = import_llama_cpp()
        file = self._state_file(tokens)
        if file is None:
            return
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
            array = (llama_cpp.llama_token * len(tokens))(*tokens)
            if llama_cpp.llama_state_seq_save_file(self.llm.ctx, str(partial).encode(), 0, array, len(tokens)):
                partial.replace(file)
            else:
                partial.unlink(missing_ok=True)
        except OSError:  # a read-only or full cache folder only costs speed
            pass

    def _llguidance_tokenizer(self, llama_cpp: Any) -> Any:
        """llguidance's view of the vocabulary; the token table (~1.5 s to read for 152k tokens) is cached."""
        import llguidance

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        file = None if self.cache is None else self.cache / f"vocab-{hashlib.sha256(self._model_key.encode()).hexdigest()[:32]}.pkl"
        tokens = None
        if file is not None and file.is_file():
            try:
                tokens = pickle.loads(file.read_bytes())
            except (OSError, pickle.UnpicklingError, EOFError):
                tokens = None
        if not isinstance(tokens, list) or len(tokens) != self.llm.n_vocab():
            tokens = _token_table(llama_cpp, vocab, self.llm.n_vocab())
            if file is not None:
                _write_atomically(file, pickle.dumps(tokens))
        tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
        return llguidance.LLTokenizer.from_llamacpp(  # no slices: built 3x faster, and masks no slower here
            tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=llama_cpp.llama_vocab_eos(vocab),
            slices=[],
        )

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")


def _token_table(llama_cpp: Any, vocab: Any, n_vocab: int) -> list[bytes]:
    """Each token's bytes, special tokens marked with a leading 0xff (as ``llguidance.llamacpp`` does)."""
    size = 16 * 1024
    buffer = ctypes.create_string_buffer(size + 1)
    tokens = []
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, True)
        piece = bytes(buffer[: max(n, 0)])
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (
            attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and piece.startswith(b"<") and piece.endswith(b">")
        ):
            piece = b"\xff" + piece
        tokens.append(piece)
    return tokens + [b""] * (n_vocab - len(tokens))


def _write_atomically(file: Path, data: bytes) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(file)
    except OSError:
        pass


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaCppPlanner(JsonPlanner):
    """The JSON planner on a GGUF file in llama.cpp."""

    engine: LlamaCppEngine | LlamaCppProcess  # in a child process unless loaded with isolated=False

    @classmethod
    def load(
        cls, ref: str, *, gpu: bool = False, threads: int | None = None, cache: Path | None | bool = True,
        limits: PlanLimits = LIMITS, isolated: bool = True,
    ) -> LlamaCppPlanner:  # fmt: skip
        """Load the ``.gguf`` file ``ref``. ``gpu`` offloads every layer (a CUDA or Metal build of llama.cpp);
        ``threads`` defaults to ``torch.get_num_threads()``; ``cache``: True for ``cache_dir()``, a folder,
        or None/False for no prompt cache on disk. ``isolated``: the model runs in a child process, where a
        native crash becomes a ``ModelLoadError`` here (False: in this process, for tests that read its
        state). Weights go to llama.cpp's extra buffers as ``extra_bufts_wanted()`` says."""
        import torch

        path = checkpoints.resolve(ref, PLANNER_KIND)
        if not path.is_file() or path.suffix != ".gguf":
            raise ModelLoadError(f"planner {path} is not a .gguf file", hint="the llama.cpp engine loads .gguf files")
        if importlib.util.find_spec("llama_cpp") is None:  # named here, without loading llama.cpp (~0.3 s)
            raise _not_installed()  # where the child process would load it
        extra_bufts = extra_bufts_wanted()
        threads = threads or torch.get_num_threads()  # the process's one thread setting (llama.cpp spins its own)
        folder = cache_dir() if cache is True else (cache or None)
        settings = {"gpu": gpu, "threads": threads, "cache": folder, "extra_bufts": extra_bufts}
        if isolated:
            from .llama_process import LlamaCppProcess

            return cls(LlamaCppProcess.start(ref, path, **settings), limits)
        return cls(open_engine(ref, path, **settings), limits)
