"""Request bodies of the OpenAI-compatible endpoints (pydantic); the bodies and stream
chunks of text responses (:class:`TextReply`); the error body and :class:`APIError`.

Fields follow OpenAI's API; reverie's extensions are ``sampler``, ``steps``, ``regex`` and
``grammar`` (text), ``sampler``, ``steps``, ``grid``, ``guidance``, ``guidance_scale``, ``label``,
``negative_prompt`` and ``seed`` (images). Unknown fields are refused (400) rather than silently
ignored; OpenAI fields that reverie does not implement are accepted only at their neutral value
(:data:`NEUTRAL`), so a client that asks for e.g. ``top_p=0.9`` learns it was not applied.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "APIError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "ImageRequest",
    "Message",
    "ResponseFormat",
    "TextReply",
    "TextResult",
    "error_body",
    "sse",
]

#: OpenAI fields accepted only at these values (reverie does not implement them).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "top_p": (None, 1, 1.0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, False, True),
}

Stop = str | list[str] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def unsupported(self) -> str | None:
        """The first OpenAI field set to a value reverie does not implement, if any."""
        for name, neutral in NEUTRAL.items():
            if name in type(self).model_fields and getattr(self, name) not in neutral:
                return name
        return None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    # ``schema`` shadows a BaseModel attribute, hence the alias
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``{"type": "text"}`` or ``{"type": "json_schema", "json_schema": {"schema": ...}}``
    (``json_object`` is refused: give a schema)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_schema", "json_object"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _TextFields(_Body):
    """Fields shared by completions and chat completions."""

    model: str
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # reverie extensions
    regex: str | None = Field(None, max_length=10_000)
    grammar: str | None = Field(None, max_length=20_000)
    sampler: str | None = None
    steps: int | None = Field(None, ge=1, le=4096)
    # accepted only at their neutral value (NEUTRAL)
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class CompletionRequest(_TextFields):
    """``POST /v1/completions``: ``prompt`` is a text, a list of texts, token ids or a list of
    token-id lists (one row each; ``n`` samples per prompt)."""

    prompt: str | list[str] | list[int] | list[list[int]] = ""
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name", "refusal": not used

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_TextFields):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None


class ImageRequest(_Body):
    """``POST /v1/images/generations``: ``prompt`` (text-to-image models; for class models a
    class name, or empty for unconditional samples), ``n``, ``size`` (``"HxW"``: the model's
    own size; pipelines take other multiples of their latent scale), ``response_format``
    ``b64_json``; extensions ``sampler``, ``steps``, ``grid`` (a name of
    :data:`reverie.grids.GRIDS`), ``guidance`` (a classifier-free method of
    :data:`reverie.guidance.METHODS`, default ``cfg``), ``guidance_scale``, ``label`` (class
    models: an index or a class name), ``negative_prompt``, ``seed``."""

    model: str
    prompt: str = Field("", max_length=10_000)
    n: int = Field(1, ge=1)
    size: str | None = Field(None, max_length=32)
    response_format: Literal["b64_json", "url"] | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    # reverie extensions
    sampler: str | None = None
    steps: int | None = Field(None, ge=1, le=1000)
    grid: str | None = Field(None, max_length=32)
    guidance: str | None = Field(None, max_length=64)
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    label: int | str | None = None
    negative_prompt: str | None = Field(None, max_length=10_000)
    seed: int | None = Field(None, ge=0, lt=2**63)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class APIError(Exception):
    """An error answered with OpenAI's body and ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = (
            status, message, param, type, code)


def sse(obj: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj)}\n\n"


@dataclass
class TextResult:
    """What a text job gives back: per row, its text, why it ended and its token count."""

    texts: list[str]
    finish_reasons: list[str]
    completion_tokens: list[int]


class TextReply:
    """OpenAI's response bodies and stream chunks for one text request."""

    def __init__(self, chat: bool, model: str, req: Any, prompt_tokens: int, rows: int) -> None:
        self.chat = chat
        self.model = model
        self.req = req
        self.prompt_tokens = prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.rows = rows
        self.object = "chat.completion" if chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _usage(self, result: TextResult) -> dict[str, int]:
        done = sum(result.completion_tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}

    def body(self, result: TextResult) -> dict[str, Any]:
        choices = []
        for i, (text, reason) in enumerate(zip(result.texts, result.finish_reasons)):
            if self.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": reason, "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": reason,
                                "logprobs": None})
        return {**self._head(self.object), "choices": choices, "usage": self._usage(result)}

    def _chunk(self, choices: list[dict]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": choices}

    def _choice(self, i: int, text: str | None, reason: str | None, role: bool = False) -> dict:
        if not self.chat:
            return {"index": i, "text": text or "", "finish_reason": reason, "logprobs": None}
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}

    def first(self) -> dict[str, Any]:
        """The opening chunk (chat: the assistant role of every choice)."""
        if self.chat:
            return self._chunk([self._choice(i, "", None, role=True) for i in range(self.rows)])
        return self._chunk([self._choice(i, "", None) for i in range(self.rows)])

    def chunk(self, row: int, text: str) -> dict[str, Any]:
        return self._chunk([self._choice(row, text, None)])

    def last(self, result: TextResult) -> list[dict[str, Any]]:
        out = [self._chunk([self._choice(i, None if self.chat else "", reason)
                            for i, reason in enumerate(result.finish_reasons)])]
        opts = self.req.stream_options
        if opts is not None and opts.include_usage:
            out.append({**self._chunk([]), "usage": self._usage(result)})
        return out
