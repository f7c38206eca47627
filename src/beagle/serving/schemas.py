"""Request bodies of the OpenAI-compatible API (pydantic, strict: unknown fields and wrong types are rejected).

Bodies are parsed with :func:`parse_body`, which turns malformed JSON into a 400 and validation
failures into a 422, each with a readable message in OpenAI's error format.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or _default_kind(status)

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _default_kind(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 503:
        return "server_busy"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _Sampling(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="extension: 0 = off")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = Field(default=None, description="extension: generate past EOS up to max_tokens")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    logprobs: int | None = None
    echo: bool | None = None


Body = TypeVar("Body", bound=BaseModel)


def parse_body(raw: bytes, schema: type[Body]) -> Body:
    """Validate a JSON body; raises :class:`ApiError` (400 malformed JSON, 422 invalid fields)."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as error:
        raise _validation_error(error) from None


def _validation_error(error: ValidationError) -> ApiError:
    problems = error.errors(include_url=False)
    if any(problem["type"] == "json_invalid" for problem in problems):
        detail = next(p for p in problems if p["type"] == "json_invalid").get("ctx", {}).get("error", "")
        return ApiError(400, f"malformed JSON body: {detail or 'cannot parse'}", code="invalid_json")
    messages = []
    for problem in problems[:8]:
        location = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            messages.append(f"unknown field {location!r}")
        elif not location and problem["type"] in ("model_type", "model_attributes_type"):
            messages.append("the request body must be a JSON object")
        elif problem["type"] == "missing":
            messages.append(f"missing required field {location!r}")
        else:
            messages.append(f"{location or 'body'}: {problem['msg']}")
    first = problems[0]["loc"] if problems else ()
    param = str(first[0]) if first else None
    return ApiError(422, "invalid request: " + "; ".join(dict.fromkeys(messages)), param=param,
                    code="invalid_request")
