"""The OpenAI-compatible HTTP engine: a planner reference ``http://…/v1`` or ``https://…`` is the base URL of a
chat-completions server (the llama.cpp server, Ollama's ``/v1``, vLLM, LM Studio, OpenAI itself).

    GET {url}/models (the model: --planner-model, else the first listed)
    POST {url}/chat/completions  temperature 0, response_format json_schema -> answer text

The key comes from ``AUDIOSTORY_PLANNER_API_KEY`` or ``OPENAI_API_KEY`` and goes only into the
``Authorization`` header: never into a message, a log or a plan (the reference recorded is the URL without
any user:password part). A server that rejects ``response_format`` is asked again without it, and what it
writes is validated like any answer. Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, ModelLoadError, ModelNotFoundError, PlanError
from ..story import Progress, ProgressFn
from .base import LIMITS, JsonPlanner, PlanLimits

KEY_VARIABLES = ("AUDIOSTORY_PLANNER_API_KEY", "OPENAI_API_KEY")  # read in this order
SCHEMA_NAME = "audiostory_plan"  # the name response_format gives the plan schema
RESPONSE_FORMATS = ("json_schema", "json_object", None)  # tried in order: OpenAI's form, llama-cpp-python's, none
_RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}  # worth asking again after a pause
_CONTEXT_WORDS = ("context length", "context window", "context_length", "maximum context", "too many tokens",
                  "exceed")  # fmt: skip


@dataclass(frozen=True)
class HttpSettings:
    """How patiently the engine talks to the server."""

    timeout_s: float = 300.0  # longest wait for one reply (a CPU server may take a minute for a long plan)
    list_timeout_s: float = 10.0  # longest wait for the model list at load
    retries: int = 2  # further tries after a refused connection, a timeout, 429 or 5xx
    backoff_s: float = 0.5  # pause before the first retry; doubled before each next one


def is_http_ref(ref: str) -> bool:
    """A planner reference that names a server rather than a model."""
    return ref.startswith(("http://", "https://"))


def public_url(url: str) -> str:
    """``url`` without user:password, query or fragment, and without a trailing slash: safe to show and save."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def api_key() -> str | None:
    """The key from the environment, or None (local servers need none)."""
    for name in KEY_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class OpenAIHttpEngine:
    """One model on an OpenAI-compatible server, answering chats under a JSON schema where it can."""

    role = "planner"  # what the server is to the user, in errors ("describer" for a video describer)

    def __init__(self, url: str, model: str, *, key: str | None = None, settings: HttpSettings = HttpSettings()):
        self.url = public_url(url)  # base URL, e.g. http://127.0.0.1:8080/v1
        self.ref = self.url  # what plans record and errors name (never the key)
        self.model = model  # the server's model id
        self.settings = settings
        self.constrained = True  # False once the server has refused every form of response_format
        self._format = 0  # index in RESPONSE_FORMATS of the form this server takes
        self._key = key

    def complete(
        self, messages: list[dict[str, str]], schema: dict[str, Any], *, max_tokens: int, progress: ProgressFn
    ) -> str:
        progress(Progress("plan", 0, max_tokens, f"asking {self.model} at {self.url}"))
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        while True:
            style = RESPONSE_FORMATS[self._format]
            if style is None:
                body.pop("response_format", None)
            else:
                body["response_format"] = _response_format(style, schema)
            try:
                reply = self._request("POST", "/chat/completions", body, self.settings.timeout_s)
                break
            except _HttpError as err:
                if style is None or err.status not in (400, 422, 500) or not _mentions_format(err.message):
                    raise self._error(err) from None
                self._format += 1  # the server does not take this form of the schema: try the next one
                self.constrained = RESPONSE_FORMATS[self._format] is not None
        text = _message_text(reply)
        if text is None:
            raise PlanError(f"{self.role} server {self.url} sent a reply without a message (model {self.model})")
        progress(Progress("plan", max_tokens, max_tokens, "plan written"))
        return text

    def list_models(self) -> list[str]:
        """The model ids the server lists at ``GET /models``."""
        try:
            reply = self._request("GET", "/models", None, self.settings.list_timeout_s)
        except _HttpError as err:
            raise self._error(err, loading=True) from None
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            raise ModelLoadError(f"{self.role} server {self.url} sent a model list without 'data' (GET /models)",
                                 hint="is it an OpenAI-compatible server? the URL usually ends in /v1")  # fmt: skip
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    # --- HTTP -------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None, timeout_s: float) -> Any:
        """One call with retries on a refused connection, a timeout, 429 and 5xx; the reply's JSON."""
        headers = {"Accept": "application/json", "User-Agent": "audiostory-cli"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        pause = self.settings.backoff_s
        for attempt in range(self.settings.retries + 1):
            try:
                return self._once(urllib.request.Request(self.url + path, data, headers, method=method), timeout_s)
            except _HttpError as err:
                if not err.retry or attempt == self.settings.retries or _mentions_format(err.message):
                    raise
            time.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")

    def _once(self, request: urllib.request.Request, timeout_s: float) -> Any:
        where = f"{request.get_method()} {request.selector}"
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            status = err.code
            raise _HttpError(where, status, _error_text(err.read()), retry=status in _RETRY_STATUSES) from None
        except TimeoutError:
            raise _HttpError(where, None, f"no reply within {timeout_s:g} s", retry=True) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _HttpError(where, None, f"no reply within {timeout_s:g} s", retry=True) from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise _HttpError(where, None, f"cannot connect: {text}", retry=True, connect=True) from None
        except (ConnectionError, OSError) as err:  # a reset connection, a server gone mid-reply
            raise _HttpError(where, None, f"connection failed: {err}", retry=True, connect=True) from None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = raw[:80].decode("utf-8", "replace").strip()
            raise _HttpError(where, 200, f"the reply is not JSON: {snippet!r}", retry=False, not_json=True) from None

    def _error(self, err: _HttpError, *, loading: bool = False) -> Exception:
        """The one line a user sees for a failed call: what failed, at which URL, and what to do."""
        at = f"{self.role} server {self.url}"
        if err.connect:
            return ModelLoadError(f"{at}: {err.message} ({err.where})",
                                  hint=f"is the server running? start it or check --{self.role}")  # fmt: skip
        if err.status in (401, 403):
            key = "no key was sent" if not self._key else "the key was refused"
            return ModelLoadError(f"{at} refused the request ({err.status}: {err.message}); {key}",
                                  hint=f"set {' or '.join(KEY_VARIABLES)} to a key this server accepts")  # fmt: skip
        if err.status == 404:
            if loading:
                return ModelLoadError(f"{at} has no {err.where.split()[-1]} endpoint (404)",
                                      hint="an OpenAI-compatible base URL usually ends in /v1")  # fmt: skip
            return ModelNotFoundError(f"{at} has no model {self.model!r} (404: {err.message})",
                                      hint="pick one it lists with --planner-model")  # fmt: skip
        if err.status in (400, 413, 422) and any(word in err.message.lower() for word in _CONTEXT_WORDS):
            return PlanError(f"{at}: the plan request does not fit the context of {self.model} ({err.message})",
                             hint="start the server with a larger context, or ask for fewer --max-events")  # fmt: skip
        if err.not_json:
            return (ModelLoadError if loading else PlanError)(
                f"{at} answered {err.where} with something that is not JSON: {err.message.split(': ', 1)[-1]}",
                hint="is it an OpenAI-compatible server? the URL usually ends in /v1",
            )
        what = f"HTTP {err.status}" if err.status else "no reply"
        kind = ModelLoadError if loading else PlanError
        return kind(f"{at}: {err.where} failed, {what}: {err.message}")


@dataclass
class _HttpError(Exception):
    """A failed call, before it becomes the user's one line."""

    where: str  # "POST /v1/chat/completions"
    status: int | None  # HTTP status, None when no reply came
    message: str  # the server's error message, or what went wrong
    retry: bool = False  # worth asking again
    connect: bool = False  # the server could not be reached at all
    not_json: bool = False  # a reply came, but not as JSON


def _error_text(raw: bytes) -> str:
    """The server's error message: OpenAI's ``{"error": {"message": ...}}``, FastAPI's ``detail``, or the text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:200] or "no message"
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if isinstance(error, list) and error and isinstance(error[0], dict):  # FastAPI validation errors
            error = "; ".join(str(e.get("msg", e)) for e in error[:3])
        if error is not None:
            return str(error)[:300]
    return text[:200]


def _response_format(style: str, schema: dict[str, Any]) -> dict[str, Any]:
    if style == "json_schema":  # OpenAI, vLLM, Ollama's /v1, LM Studio, llama.cpp's own server
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": _bounded_integers_as_enums(schema)}  # llama-cpp-python's server


def _bounded_integers_as_enums(schema: Any) -> Any:
    """llama-cpp-python's schema-to-grammar converter drops ``minimum``/``maximum`` (a random model then writes
    -722 s) but keeps an ``enum``: bounded integers become the list of their values."""
    if isinstance(schema, list):
        return [_bounded_integers_as_enums(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = schema.get("type") == "integer" and "minimum" in schema and "maximum" in schema
    if bounded and schema["maximum"] - schema["minimum"] <= 1000:
        return {"enum": list(range(schema["minimum"], schema["maximum"] + 1))}
    return {key: _bounded_integers_as_enums(value) for key, value in schema.items()}


def _mentions_format(message: str) -> bool:
    text = message.lower()
    return "response_format" in text or "json_schema" in text


def _message_text(reply: Any) -> str | None:
    """``choices[0].message.content`` of a chat-completions reply."""
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class OpenAIHttpPlanner(JsonPlanner):
    """The JSON planner on a server; ``load`` checks the server and picks the model."""

    engine: OpenAIHttpEngine

    @classmethod
    def load(
        cls, url: str, *, model_name: str | None = None, settings: HttpSettings = HttpSettings(),
        limits: PlanLimits = LIMITS,
    ) -> OpenAIHttpPlanner:  # fmt: skip
        """Connect to ``url``: the model is ``model_name`` when the server lists it, else the first listed."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"planner URL {public_url(url)!r} is not an http(s):// address with a host")
        if parts.username or parts.password or parts.query:  # it would be shown and saved in every plan
            raise InputError(f"planner URL {public_url(url)} carries credentials or a query",
                             hint=f"put the key in {KEY_VARIABLES[0]} or {KEY_VARIABLES[1]}, not in the URL")
        engine = OpenAIHttpEngine(url, model_name or "", key=api_key(), settings=settings)
        models = engine.list_models()
        if model_name is None:
            if not models:
                raise ModelNotFoundError(f"planner server {engine.url} lists no models",
                                         hint="name one with --planner-model")  # fmt: skip
            engine.model = models[0]
        elif model_name not in models:
            listed = ", ".join(models[:8]) + (" ..." if len(models) > 8 else "") if models else "none"
            raise ModelNotFoundError(f"planner server {engine.url} has no model {model_name!r} (it lists: {listed})",
                                     hint="pick one it lists with --planner-model")  # fmt: skip
        return cls(engine, limits)
