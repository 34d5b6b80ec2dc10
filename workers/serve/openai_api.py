"""The OpenAI-compatible request and answer shapes of a replica (no HTTP, no engine loop).

    request = parse_text_request(body, Endpoint.CHAT)        # ApiError (400) naming the field
    params = request.completion_params(block_size, prompt_tokens)
    body = completion_body(request, response_id, created, model_name, choices, usage)

Field policy (what we do with each body field):

- Implemented: ``prompt`` (a string, or a list of one string), ``messages`` (roles system,
  user, assistant), ``max_tokens`` (``max_completion_tokens`` is its chat alias),
  ``temperature``, ``top_p``, ``stop`` (a string or up to 4), ``n``, ``seed``, ``stream``, ``stream_options.include_usage``, ``user`` (kept in the
  archive), ``model`` (any value: the replica serves one model and answers with its
  ``"<model>:v<version>"``); our extensions ``truncate`` (drop the prompt's oldest tokens
  instead of a 400), ``top_k``, ``repetition_penalty``. The sampling fields' types and
  bounds are the engine's (engine.serve.params.CompletionParams.validate: temperature 0
  or 1e-6 to 2, top_p 1e-6 to 1, repetition_penalty 1e-6 to 10, seed an int64, n 1-16);
  its ServeError becomes the 400 naming the field.
- Accepted when harmless, i.e. at their OpenAI default: ``logprobs`` (null/false/0),
  ``top_logprobs`` (null/0), ``echo`` (false), ``best_of`` (null or equal to n),
  ``presence_penalty`` / ``frequency_penalty`` (0), ``logit_bias`` (null or {}),
  ``suffix`` (null), ``response_format`` {"type": "text"} (chat), ``parallel_tool_calls``,
  ``tool_choice`` "none", ``tools`` [] , ``metadata``, ``store`` false,
  ``service_tier`` (null/"auto"/"default"). Any other value: 400 ``unsupported_parameter``
  naming the field (the caller would otherwise get an answer that ignores what they asked).
- Anything else: 400 ``unknown_parameter`` naming the field (as OpenAI's "Unrecognized
  request argument supplied").
- Token-id prompts (a list of integers) are refused: the guardrails read text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from engine.serve.params import MAX_STOP_SEQUENCES, CompletionParams, ServeError
from workers.serve.protocol import Endpoint, error_shape

MAX_IMAGES_PER_REQUEST = 16


class ApiError(Exception):
    """An answer in the serve endpoints' error shape (see :meth:`body`)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.detail = detail or message  # the message under `fields`, without the name
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_shape(
            self.status, self.code, self.message, param=self.param, detail=self.detail
        )

    def summary(self) -> dict[str, Any]:
        """What an archive record keeps of it."""
        return {"status": self.status, "code": self.code, "message": self.message}


def invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, code, f"{param}: {message}", param=param, detail=message)


_PARAM_IN_MESSAGE = re.compile(r"^([a-z_]+)((?:\[\d+\])?(?:\.[a-z_]+)?)")


def from_serve_error(error: ServeError) -> ApiError:
    """A ServeError of the engine as a 400 naming the field its message starts with."""
    message = str(error)
    match = _PARAM_IN_MESSAGE.match(message)
    param = detail = None
    if match and match.group(1) in KNOWN_PARAMS | {"messages", "prompt", "digits"}:
        param = match.group(1) + match.group(2).replace("[", ".").replace("]", "")
        detail = message[match.end() :].lstrip(": ") or None  # "must be ...", as invalid()
    return ApiError(400, "invalid_value", message, param=param, detail=detail)


# -- request bodies ---------------------------------------------------------------------
TEXT_PARAMS = {
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "seed",
    "stream",
    "stream_options",
    "user",
    "truncate",
    "top_k",
    "repetition_penalty",
}
IMAGE_PARAMS = {"model", "prompt", "n", "seed", "guidance", "steps", "response_format", "user"}
KNOWN_PARAMS = TEXT_PARAMS | IMAGE_PARAMS
# Fields accepted at these values only (their OpenAI defaults): see the module docstring.
_HARMLESS: dict[str, Any] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "parallel_tool_calls": (None, True, False),
    "tool_choice": (None, "none"),
    "tools": (None, []),
    "metadata": None,  # any value: ours to keep in the archive, changes nothing
    "store": (None, False),
    "service_tier": (None, "auto", "default"),
}


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid UTF-8") from None
    except (json.JSONDecodeError, ValueError) as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _check_fields(body: dict[str, Any], allowed: set[str], chat: bool) -> None:
    for name, value in body.items():
        if name in allowed:
            continue
        if name == "best_of" and value in (None, body.get("n", 1)):
            continue
        if chat and name == "response_format" and value in (None, {"type": "text"}):
            continue
        if name in _HARMLESS:
            harmless = _HARMLESS[name]
            if harmless is None or any(value == h and type(value) is type(h) for h in harmless):
                continue
            if value is None:
                continue
            raise invalid(name, "is not supported by this server", "unsupported_parameter")
        if name in {"best_of", "response_format"}:
            raise invalid(name, "is not supported by this server", "unsupported_parameter")
        raise invalid(name, "unknown parameter", "unknown_parameter")


def _integer(body: dict, name: str, low: int | None = None, high: int | None = None):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"must be an integer, got {json.dumps(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid(name, f"must be {bounds}, got {value}")
    return value


def _number(body: dict, name: str, check, requirement: str):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(name, f"must be a number, got {json.dumps(value)}")
    if not check(value):
        raise invalid(name, f"must be {requirement}, got {value}")
    return float(value)


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false, got {json.dumps(value)}")
    return value


@dataclass
class TextRequest:
    endpoint: Endpoint
    body: dict[str, Any]  # as received (the archive keeps it, with the input redacted)
    prompt: str | None = None  # completions
    messages: list[dict[str, str]] | None = None  # chat
    max_tokens: int | None = None  # None: the endpoint's default (see completion_params)
    stream: bool = False
    include_usage: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # CompletionParams fields

    @property
    def chat(self) -> bool:
        return self.endpoint == Endpoint.CHAT

    def texts(self) -> list[str]:
        """The text the guardrails read: the prompt, or each message's content."""
        if self.chat:
            return [m["content"] for m in self.messages or []]
        return [self.prompt or ""]

    def with_texts(self, texts: list[str]) -> None:
        if self.chat:
            self.messages = [
                {**m, "content": t} for m, t in zip(self.messages or [], texts, strict=True)
            ]
        else:
            self.prompt = texts[0]

    def completion_params(self, block_size: int, prompt_tokens: int) -> CompletionParams:
        """The engine's parameters. max_tokens defaults as OpenAI's: 16 for completions, the
        rest of the context for chat."""
        max_tokens = self.max_tokens
        if max_tokens is None:
            max_tokens = 16
            if self.chat and prompt_tokens < block_size:
                max_tokens = block_size - prompt_tokens
        try:
            return CompletionParams(max_tokens=max_tokens, **self.options)
        except ServeError as error:
            raise from_serve_error(error) from None

    def archived(self) -> dict[str, Any]:
        """The request as the model saw it: the body with the input after the guardrails."""
        body = dict(self.body)
        if self.chat:
            body["messages"] = self.messages
        else:
            body["prompt"] = self.prompt
        return body


def parse_text_request(body: dict[str, Any], endpoint: Endpoint) -> TextRequest:
    chat = endpoint == Endpoint.CHAT
    required = "messages" if chat else "prompt"
    _check_fields(body, TEXT_PARAMS | {required}, chat)
    request = TextRequest(endpoint=endpoint, body=body)
    if required not in body:
        raise invalid(required, "is required", "missing_required_parameter")
    if chat:
        request.messages = _messages(body["messages"])
    else:
        request.prompt = _prompt(body["prompt"])
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model", "must be a string")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("user", "must be a string")
    max_tokens = _integer(body, "max_tokens", 1)
    alias = _integer(body, "max_completion_tokens", 1)
    if chat and max_tokens is None:
        max_tokens = alias
    elif alias is not None and not chat:
        raise invalid("max_completion_tokens", "is for chat; use max_tokens", "unknown_parameter")
    request.max_tokens = max_tokens
    # The sampling fields go to the engine as sent: CompletionParams checks their types and
    # the bounds that keep its float32 sampler finite (one definition, engine/serve/params.py).
    options: dict[str, Any] = {
        name: body[name]
        for name in ("temperature", "top_p", "n", "seed", "top_k", "repetition_penalty")
        if body.get(name) is not None
    }
    options["stop"] = _stop(body.get("stop"))
    options["truncate"] = _boolean(body, "truncate")
    try:  # now, before the guardrails read the input: a bad value is not archived
        CompletionParams(**({} if max_tokens is None else {"max_tokens": max_tokens}), **options)
    except ServeError as error:
        raise from_serve_error(error) from None
    request.stream = _boolean(body, "stream")
    stream_options = body.get("stream_options")
    if stream_options is not None:
        if not request.stream:
            raise invalid("stream_options", "is only allowed when stream is true")
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
            raise invalid("stream_options", 'must be {"include_usage": true|false}')
        request.include_usage = _boolean(stream_options, "include_usage")
    request.options = options
    return request


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        if "\x00" in value:
            raise invalid("prompt", "must not contain NUL characters")
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        raise invalid(
            "prompt", "token-id prompts are not supported: send text", "unsupported_parameter"
        )
    if isinstance(value, list) and len(value) > 1:
        raise invalid(
            "prompt", "one prompt per request (use n for several completions)", "invalid_value"
        )
    raise invalid("prompt", "must be a string")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid("messages", "must be a non-empty list of {role, content} objects")
    messages = []
    for index, message in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise invalid(where, "must be an object with role and content")
        unknown = set(message) - {"role", "content", "name"}
        if unknown:
            raise invalid(f"{where}.{sorted(unknown)[0]}", "is not supported", "unknown_parameter")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise invalid(f"{where}.content", "only text content parts are supported")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise invalid(f"{where}.content", "must be a string")
        if "\x00" in content:
            raise invalid(f"{where}.content", "must not contain NUL characters")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise invalid(
                f"{where}.role", f"must be system, user or assistant, got {json.dumps(role)}"
            )
        messages.append({"role": role, "content": content})
    return messages


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise invalid("stop", "must be a non-empty string or a list of them")
    if len(value) > MAX_STOP_SEQUENCES:
        raise invalid("stop", f"at most {MAX_STOP_SEQUENCES} sequences, got {len(value)}")
    return value


@dataclass
class ImageRequest:
    body: dict[str, Any]
    prompt: str
    n: int = 1
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None

    def archived(self) -> dict[str, Any]:
        return {**self.body, "prompt": self.prompt}


def parse_image_request(body: dict[str, Any]) -> ImageRequest:
    _check_fields(body, IMAGE_PARAMS | {"size"}, chat=False)
    if "prompt" not in body:
        raise invalid("prompt", "is required", "missing_required_parameter")
    prompt = body["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", "must be a non-empty string naming a digit")
    if body.get("size") is not None:
        raise invalid("size", "is fixed by the model; leave it out", "unsupported_parameter")
    response_format = body.get("response_format")
    if response_format not in (None, "b64_json"):
        raise invalid(
            "response_format",
            'only "b64_json" is supported (this server stores no images to link to)',
            "unsupported_parameter",
        )
    return ImageRequest(
        body=body,
        prompt=prompt,
        n=_integer(body, "n", 1, MAX_IMAGES_PER_REQUEST) or 1,
        seed=_integer(body, "seed", 0, 2**63 - 1),
        guidance=_number(body, "guidance", lambda v: v >= 0, "at least 0"),
        steps=_integer(body, "steps", 1, 1000),
    )


# -- answers ----------------------------------------------------------------------------
def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_id(request: TextRequest, request_id: str) -> str:
    return ("chatcmpl-" if request.chat else "cmpl-") + request_id


def completion_body(
    request: TextRequest,
    ident: str,
    created: int,
    model: str,
    choices: list[tuple[str, str]],  # (text, finish_reason) per index
    usage: dict[str, int],
) -> dict[str, Any]:
    if request.chat:
        shaped = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason) in enumerate(choices)
        ]
        kind = "chat.completion"
    else:
        shaped = [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)
        ]
        kind = "text_completion"
    return {
        "id": ident,
        "object": kind,
        "created": created,
        "model": model,
        "choices": shaped,
        "usage": usage,
    }


def chunk_body(
    request: TextRequest,
    ident: str,
    created: int,
    model: str,
    index: int,
    text: str | None,
    finish_reason: str | None = None,
    *,
    role: bool = False,
) -> dict[str, Any]:
    """One streamed delta of one choice (chat: ``delta``; completions: ``text``)."""
    if request.chat:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        kind = "chat.completion.chunk"
    else:
        choice = {
            "index": index,
            "text": text or "",
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        kind = "text_completion"
    body = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
    if request.include_usage:
        body["usage"] = None
    return body


def usage_chunk(
    request: TextRequest, ident: str, created: int, model: str, usage: dict[str, int]
) -> dict[str, Any]:
    kind = "chat.completion.chunk" if request.chat else "text_completion"
    return {
        "id": ident,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def images_body(created: int, pngs_b64: list[str]) -> dict[str, Any]:
    return {"created": created, "data": [{"b64_json": data} for data in pngs_b64]}
