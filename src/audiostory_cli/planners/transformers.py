"""The transformers engine: any chat LLM in a Hugging Face folder or hub id (and, when asked for with
``--planner-engine transformers``, a ``.gguf`` file, which transformers de-quantizes at load: slow, needs
``accelerate`` and ``gguf``). Greedy decoding with the KV cache under the plan schema (llguidance).

    messages -> chat template -> ids -> decode_json(model forward with the KV cache) -> answer text

``model`` and ``tokenizer`` stay public: the trained bridge reads the planner's hidden states.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from .. import checkpoints
from ..errors import ModelLoadError
from ..story import ProgressFn
from .base import LIMITS, PLANNER_KIND, JsonPlanner, PlanLimits
from .grammar import decode_json

GGUF_EXTRA = 'pip install "audiostory-cli[gguf]"'  # what transformers' GGUF loader needs: gguf and accelerate


class TransformersEngine:
    """A transformers causal LM and its tokenizer, answering chats under a JSON schema."""

    constrained = True  # every answer is decoded under the schema

    def __init__(self, ref: str, model: transformers.PreTrainedModel, tokenizer: Any) -> None:
        import llguidance.hf

        self.ref = ref  # the reference it was loaded from
        self.model = model
        self.tokenizer = tokenizer
        # no slices: built 3x faster for a 152k vocabulary, and the plan's masks are no slower (measured)
        self._vocab = llguidance.hf.from_tokenizer(tokenizer, n_vocab=model.config.vocab_size, slices=[])
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def complete(
        self, messages: list[dict[str, str]], schema: dict[str, Any], *, max_tokens: int, progress: ProgressFn
    ) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = self.tokenizer(text, add_special_tokens=False).input_ids
        cache = transformers.DynamicCache(config=self.model.config)
        device = self.model.device

        def next_logits(ids: list[int]) -> np.ndarray:
            out = self.model(
                input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1,
                **{self._cache_arg: cache},
            )  # fmt: skip
            return out.logits[0, -1].float().cpu().numpy()

        with torch.inference_mode():
            return decode_json(next_logits, prompt_ids, self._vocab, schema, ref=self.ref, budget=max_tokens,
                               progress=progress)  # fmt: skip


class TransformersPlanner(JsonPlanner):
    """The JSON planner on a transformers model; ``model`` and ``tokenizer`` are the bridge's to read."""

    engine: TransformersEngine

    def __init__(self, engine: TransformersEngine, limits: PlanLimits = LIMITS) -> None:
        super().__init__(engine, limits)

    @property
    def model(self) -> transformers.PreTrainedModel:
        return self.engine.model

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @classmethod
    def load(cls, ref: str, *, device: torch.device, dtype: torch.dtype) -> TransformersPlanner:
        """Load a chat LLM from a folder, a hub id or a ``.gguf`` file (see ``checkpoints.resolve``)."""
        path = checkpoints.resolve(ref, PLANNER_KIND)
        if path.is_file() and path.suffix != ".gguf":
            raise ModelLoadError(f"planner file {path} is not a .gguf file", hint=f"expected {PLANNER_KIND.layout}")
        folder, gguf = (path.parent, path.name) if path.is_file() else (path, None)
        if gguf is not None:
            missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
            if missing:
                raise ModelLoadError(
                    f"the transformers engine needs {' and '.join(missing)} to load the GGUF file {path}",
                    hint=f"install them with `{GGUF_EXTRA}`, or drop --planner-engine to use llama.cpp",
                )
        with checkpoints.quiet_loading():
            tokenizer = _load_part(transformers.AutoTokenizer, path, folder, gguf)
            if len(tokenizer) < 2:  # transformers builds an empty tokenizer when the files are missing
                raise ModelLoadError(
                    f"cannot load the planner tokenizer from {path}: no tokenizer files",
                    hint=f"expected {PLANNER_KIND.layout}",
                )
            if not getattr(tokenizer, "chat_template", None):
                raise ModelLoadError(
                    f"planner {path} has no chat template",
                    hint="the planner must be an instruction-tuned chat model (e.g. Qwen/Qwen2.5-1.5B-Instruct)",
                )
            if not isinstance(tokenizer, transformers.PreTrainedTokenizerFast):
                raise ModelLoadError(f"planner {path} has no fast tokenizer (tokenizer.json), which the JSON "
                                     "constraint needs")  # fmt: skip
            model = _load_part(transformers.AutoModelForCausalLM, path, folder, gguf, dtype=dtype)
            model = model.to(device=device, dtype=dtype).eval()
        return cls(TransformersEngine(ref, model, tokenizer))


def _load_part(auto_class: Any, path: Path, folder: Path, gguf: str | None, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained`` with any failure turned into a ``ModelLoadError`` naming ``path``."""
    if gguf is not None:
        kwargs["gguf_file"] = gguf
    what = "tokenizer" if auto_class is transformers.AutoTokenizer else "model"
    try:
        return auto_class.from_pretrained(folder, **kwargs)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelLoadError(f"cannot load the planner {what} from {path}: {reason}") from err
