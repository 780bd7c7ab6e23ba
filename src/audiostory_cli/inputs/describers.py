"""Describers: a vision-language model looks at a few frames of a shot and says what is SEEN, in one sentence;
the planner's slots mode then turns that into what is heard. ``load_describer`` picks the engine from the
reference, like ``--planner``:

    ``http(s)://…/v1``     -> an OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp's server with a
                              vision projector): frames as base64 JPEG ``image_url`` parts, the answer under a
                              JSON schema where the server takes one
    a folder or a hub id   -> a transformers vision-language model (e.g. Qwen/Qwen2.5-VL-3B-Instruct): greedy,
                              decoded under a regex of one printable sentence (llguidance), so even a random
                              model writes a valid description

    frames (JPEG bytes) -> chat with images -> the model's text -> one clean line (3..MAX_DESCRIPTION_CHARS)
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import checkpoints
from ..errors import InputError, ModelLoadError, ModelNotFoundError, PlanError
from ..story import ProgressFn, no_progress

if TYPE_CHECKING:
    import torch

DESCRIBER_KIND = checkpoints.ModelKind(
    role="describer",
    required=("config.json",),
    layout="a Hugging Face vision-language model folder (config.json, weights, processor with a chat template), or "
    "an OpenAI-compatible server URL (http://…/v1) serving a vision model",
)
DESCRIBE_PROMPT = (
    "These are {n} frames from one shot of a video, in order. In one sentence, describe what is seen: who or what "
    "is there, what they do and where. Only the sentence."
)
MAX_DESCRIPTION_CHARS = 200  # one sentence; longer answers are cut at a word
MIN_DESCRIPTION_CHARS = 3
_DESCRIPTION = r"[A-Za-z][ !#-\[\]-~]{1,%d}[!#-\[\]-~]" % (MAX_DESCRIPTION_CHARS - 2)  # printable ASCII, no '"' '\'
DESCRIPTION_SCHEMA = {  # what a server is asked to answer
    "type": "object",
    "properties": {"description": {"type": "string", "pattern": f"^{_DESCRIPTION}$"}},
    "required": ["description"],
    "additionalProperties": False,
}
MAX_NEW_TOKENS = MAX_DESCRIPTION_CHARS + 1  # every token adds at least one character (+ the stop token)


class Describer(Protocol):
    """Anything that says what a few frames of one shot show."""

    ref: str  # the reference it was loaded from (errors name it)

    def describe(self, images: list[bytes], *, progress: ProgressFn = no_progress) -> str:
        """One sentence about ``images`` (JPEG bytes, in time order)."""
        ...


def load_describer(ref: str, *, device: torch.device, dtype: torch.dtype, model_name: str | None = None) -> Describer:
    """The describer ``ref`` names: a server URL, else a transformers vision-language model folder or hub id."""
    from ..planners.openai_http import is_http_ref

    if is_http_ref(ref):
        return HttpDescriber.load(ref, model_name=model_name)
    if model_name is not None:
        raise InputError(f"--describer-model {model_name!r} names a model on a server; the describer {ref!r} is "
                         "not one")
    return TransformersDescriber.load(ref, device=device, dtype=dtype)


def clean_description(text: str, ref: str) -> str:
    """The model's answer as one line: the JSON's description if it wrote JSON, markdown and quotes dropped,
    cut at a word to ``MAX_DESCRIPTION_CHARS``; an answer with no words is a ``PlanError`` naming ``ref``."""
    text = text.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        text = data["description"]
    words = " ".join(re.sub(r"[*_#`\"]+", " ", text).split())
    if len(words) > MAX_DESCRIPTION_CHARS:
        words = words[:MAX_DESCRIPTION_CHARS].rsplit(" ", 1)[0].rstrip(",;:")
    if len(words) < MIN_DESCRIPTION_CHARS or not re.search(r"[A-Za-z]", words):
        raise PlanError(f"describer {ref} answered with no description ({text[:40]!r})",
                        hint="try another describer model")  # fmt: skip
    return words


# --- a server ------------------------------------------------------------------------------------------


class HttpDescriber:
    """A vision model on an OpenAI-compatible server: frames as ``image_url`` parts with base64 JPEG data."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine  # a planners.openai_http.OpenAIHttpEngine with role "describer"
        self.ref = engine.ref

    @classmethod
    def load(cls, url: str, *, model_name: str | None = None) -> HttpDescriber:
        from ..planners.openai_http import OpenAIHttpEngine, api_key, public_url

        engine = OpenAIHttpEngine(url, model_name or "", key=api_key())
        engine.role = "describer"
        models = engine.list_models()
        if model_name is None and not models:
            raise ModelNotFoundError(f"describer server {public_url(url)} lists no models",
                                     hint="name one with --describer-model")  # fmt: skip
        if model_name is not None and model_name not in models:
            raise ModelNotFoundError(f"describer server {public_url(url)} has no model {model_name!r} (it lists: "
                                     f"{', '.join(models[:8]) or 'none'})", hint="pick one with --describer-model")
        engine.model = model_name or models[0]
        return cls(engine)

    def describe(self, images: list[bytes], *, progress: ProgressFn = no_progress) -> str:
        content: list[dict[str, Any]] = [{"type": "text", "text": DESCRIBE_PROMPT.format(n=len(images))}]
        content += [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(image).decode()}}
            for image in images
        ]
        messages = [{"role": "user", "content": content}]
        answer = self.engine.complete(messages, DESCRIPTION_SCHEMA, max_tokens=MAX_NEW_TOKENS + 16,
                                      progress=_quiet(progress))  # fmt: skip
        return clean_description(answer, self.ref)


def _quiet(progress: ProgressFn) -> ProgressFn:
    """The engine reports as a planner ("plan"); a describer's progress is per shot, reported by the caller."""
    return lambda report: None if report.stage == "plan" else progress(report)


# --- transformers ----------------------------------------------------------------------------------------


@dataclass
class TransformersDescriber:
    """A transformers image-text-to-text model, its tokenizer and image processor, answering greedily under the
    sentence regex. Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) are prompted here from their tokenizer and
    image processor (their transformers processor needs torchvision for videos); others through AutoProcessor."""

    ref: str  # the reference it was loaded from
    model: Any  # an AutoModelForImageTextToText
    tokenizer: Any  # its fast tokenizer, with the chat template
    processor: Any  # its AutoProcessor, or its image processor (Qwen-VL)
    vocabulary: Any  # llguidance's view of the tokenizer

    @classmethod
    def load(cls, ref: str, *, device: torch.device, dtype: torch.dtype) -> TransformersDescriber:
        import llguidance.hf
        import transformers

        path = checkpoints.resolve(ref, DESCRIBER_KIND)
        if path.is_file():
            raise ModelLoadError(f"describer {path} is a file", hint=f"expected {DESCRIBER_KIND.layout}")
        with checkpoints.quiet_loading():
            try:
                model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                if _is_qwen_vl(model.config):
                    processor = transformers.AutoImageProcessor.from_pretrained(path)
                else:
                    processor = transformers.AutoProcessor.from_pretrained(path)
            except Exception as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise ModelLoadError(f"cannot load the describer from {path}: {reason}",
                                     hint=f"expected {DESCRIBER_KIND.layout}") from err  # fmt: skip
        if not getattr(tokenizer, "chat_template", None) and not getattr(processor, "chat_template", None):
            raise ModelLoadError(f"describer {path} has no chat template",
                                 hint="the describer must be an instruction-tuned vision-language model")  # fmt: skip
        if not isinstance(tokenizer, transformers.PreTrainedTokenizerFast):
            raise ModelLoadError(f"describer {path} has no fast tokenizer (tokenizer.json), which the sentence "
                                 "constraint needs")  # fmt: skip
        model = model.to(device=device).eval()
        vocab_size = model.get_output_embeddings().weight.shape[0]
        vocabulary = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, slices=[])
        return cls(ref, model, tokenizer, processor, vocabulary)

    def describe(self, images: list[bytes], *, progress: ProgressFn = no_progress) -> str:
        import torch

        inputs = self._inputs(images).to(self.model.device)
        prompt_length = inputs["input_ids"].shape[1]
        constraint = _SentenceConstraint(self.vocabulary, prompt_length)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, logits_processor=[constraint],
                eos_token_id=self.vocabulary.eos_token, pad_token_id=self.vocabulary.eos_token,
            )  # fmt: skip
        answer = self.tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)
        return clean_description(answer, self.ref)

    def _inputs(self, images: list[bytes]) -> Any:
        """The model's inputs: the chat with one image part per frame, the frames as pixel values."""
        try:
            from PIL import Image
        except ImportError:
            from .timelines import VIDEO_EXTRA

            raise InputError("a transformers describer needs pillow, which is not installed",
                             hint=f"install it with `{VIDEO_EXTRA}`") from None

        pictures = [Image.open(io.BytesIO(image)).convert("RGB") for image in images]
        question = {"type": "text", "text": DESCRIBE_PROMPT.format(n=len(pictures))}
        content = [*({"type": "image"} for _ in pictures), question]
        chat = [{"role": "user", "content": content}]
        if not _is_qwen_vl(self.model.config):
            text = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            return self.processor(text=[text], images=pictures, return_tensors="pt")
        # Qwen-VL: each image's one pad token becomes one per merged patch of its grid (what its processor does)
        import transformers

        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        pixels = self.processor(images=pictures, return_tensors="pt")
        pad = self.tokenizer.convert_ids_to_tokens(self.model.config.image_token_id)
        merge = self.processor.merge_size**2
        pieces = text.split(pad)
        if len(pieces) != len(pictures) + 1:
            raise ModelLoadError(f"describer {self.ref}: its chat template wrote {len(pieces) - 1} image tokens for "
                                 f"{len(pictures)} frames")  # fmt: skip
        counts = [int(grid.prod()) // merge for grid in pixels["image_grid_thw"]]
        text = pieces[0] + "".join(pad * n + piece for n, piece in zip(counts, pieces[1:]))
        encoded = self.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        return transformers.BatchFeature({**encoded, **pixels})


def _is_qwen_vl(config: Any) -> bool:
    """A Qwen-VL model: image tokens expanded per grid of merged patches (``image_grid_thw``)."""
    return str(getattr(config, "model_type", "")).startswith(("qwen2_vl", "qwen2_5_vl", "qwen3_vl"))


class _SentenceConstraint:
    """A transformers logits processor that allows only tokens continuing one description sentence (llguidance)."""

    def __init__(self, vocabulary: Any, prompt_length: int) -> None:
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_regex(_DESCRIPTION)
        self.matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"llguidance refused the description regex: {self.matcher.get_error()}")
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np
        import torch

        if input_ids.shape[1] > self.prompt_length and not self.matcher.is_stopped():
            self.matcher.consume_token(int(input_ids[0, -1]))
        allowed = np.frombuffer(self.matcher.compute_logit_bias(), dtype=np.uint8) != 0
        mask = torch.zeros(scores.shape[-1], dtype=torch.bool)
        size = min(len(allowed), scores.shape[-1])
        mask[:size] = torch.from_numpy(allowed[:size].copy())
        return scores.masked_fill(~mask.to(scores.device), float("-inf"))
