"""Request bodies of the OpenAI API as tether serve reads them (pydantic, strict types), and its error JSON.

Fields tether serve cannot honour (logprobs, tools, response_format, penalties, ...) are refused with a 400 when
they ask for anything but their neutral value, rather than silently ignored; other unknown fields (user,
metadata, store, ...) are ignored, as clients send them freely.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NEUTRAL: dict[str, tuple] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "functions": (None, []), "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "best_of": (None, 1),
    "echo": (None, False), "suffix": (None, ""), "audio": (None,), "prediction": (None,),
}  # fmt: skip
"""Fields tether serve does not support -> the values that ask for nothing (and so are accepted)."""
MAX_STOP = 4
"""Most stop strings a request may give (OpenAI's limit)."""
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "TextPart", "function-after"}


class ApiError(Exception):
    """An error answered as OpenAI's error JSON: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> dict:
        """{"role", "content"} as tether.chat takes it: OpenAI's "developer" role is the system role, text parts
        are joined."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(_Strict):
    include_usage: bool = False
    """Send a last chunk with the usage counts."""


class _Sampled(_Strict):
    """The fields both endpoints share."""

    model: str
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, neutral in NEUTRAL.items():
                if key in data and not any(_same(data[key], v) for v in neutral):
                    raise ValueError(f"{key}: not supported by tether serve (leave it out)")
        return data

    @property
    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise ApiError(400, f"stop: {len(stops)} strings, at most {MAX_STOP}", "stop")
        if any(s == "" for s in stops):
            raise ApiError(400, "stop: an empty string cannot be a stop string", "stop")
        return tuple(stops)


class ChatRequest(_Sampled):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    """The newer name of max_tokens."""


class CompletionRequest(_Sampled):
    prompt: str | Annotated[list[str], Field(min_length=1)]

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def _same(value: Any, neutral: Any) -> bool:
    """Equal, with booleans apart from numbers (so that 0 does not stand for False, nor True for 1)."""
    if isinstance(value, bool) or isinstance(neutral, bool):
        return type(value) is type(neutral) and value == neutral
    return value == neutral


def parse(model: type[BaseModel], body: bytes):
    """The request body as `model`, or an ApiError(400) naming the first bad field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        param = _param(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "json_invalid":
            message, param = f"body: not valid JSON ({first['msg'].removeprefix('Invalid JSON: ')})", None
        elif param:
            message = f"{param}: {message}"
        raise ApiError(400, message, param) from None


def _param(loc: tuple) -> str | None:
    """("messages", 0, "content", "str") -> "messages[0].content" (union member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out or None
