"""The server's OpenAPI 3.1 document (``GET /openapi.json``): request bodies from the strict pydantic
models of :mod:`beagle.serving.schemas`, the response bodies below, and every status an endpoint answers.

The endpoints read their bodies themselves (parsing off the event loop, OpenAI-style errors), so FastAPI
cannot see these schemas; this module states them once. ``tests/test_serving_fuzz.py`` fuzzes the API
from this document (schemathesis): no 5xx, and every response valid against it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from beagle.serving.schemas import ChatCompletionRequest, CompletionRequest

REF_TEMPLATE = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int
    max_tokens_limit: int
    speculative: bool


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class QueueState(BaseModel):
    running: int
    waiting: int
    completed: int
    cancelled: int


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    speculative: bool
    queue: QueueState


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class BeagleStats(BaseModel):
    """Extension: how the reply was decoded."""

    speculative: bool
    tau: float
    target_passes: int
    new_tokens: int
    tokens_per_s: float
    acceptance_by_depth: list[float]
    stop_reason: str
    queue_wait_s: float


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"]


class _Completion(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: None
    usage: Usage
    beagle: BeagleStats


class ChatCompletion(_Completion):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]


class TextCompletion(_Completion):
    object: Literal["text_completion"]
    choices: list[TextChoice]


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class TextChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class _Chunk(BaseModel):
    """One server-sent event of a stream; the last carries ``beagle`` (and ``usage`` when asked for)."""

    id: str
    created: int
    model: str
    system_fingerprint: None
    usage: Usage | None = None
    beagle: BeagleStats | None = None


class ChatCompletionChunk(_Chunk):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]


class TextCompletionChunk(_Chunk):
    object: Literal["text_completion"]
    choices: list[TextChunkChoice]


REQUESTS = (ChatCompletionRequest, CompletionRequest)
RESPONSES = (ErrorResponse, ModelCard, ModelList, Health, ChatCompletion, TextCompletion, ChatCompletionChunk,
             TextCompletionChunk)

# Every path: 400 (a Host header this server does not answer to), 401 (API key, when one is set).
GUARD_ERRORS = {400: "a Host header this server does not answer to", 401: "a missing or wrong API key"}
BODY_ERRORS = {
    400: "a request that cannot be served (n > 1, too long a prompt, malformed JSON, ...)",
    404: "an unknown model", 408: "a request body that stalled", 413: "a request body over the limit",
    415: "a body that is not application/json", 422: "unknown fields or wrong types",
    499: "the client disconnected", 503: "the queue is full or the server is shutting down",
}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(ErrorResponse)}}}


def _reply(model: type[BaseModel], description: str, chunk: type[BaseModel] | None = None) -> dict:
    content = {"application/json": {"schema": _ref(model)}}
    if chunk is not None:  # "stream": true: server-sent events, data: {chunk} ... data: {error}? data: [DONE]
        payload = {"type": "string", "contentMediaType": "application/json",
                   "contentSchema": {"anyOf": [_ref(chunk), _ref(ErrorResponse)]}}
        event = {"type": "object", "required": ["data"],
                 "properties": {"data": {"anyOf": [{"const": "[DONE]"}, payload]}}}
        content["text/event-stream"] = {"schema": event}  # OpenAPI 3.1: the schema of one event
    return {"description": description, "content": content}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _operation(summary: str, reply: dict, errors: dict[int, str], body: type[BaseModel] | None = None,
               parameters: list | None = None) -> dict:
    responses = {"200": reply}
    for status, description in sorted({**GUARD_ERRORS, **errors}.items()):
        responses[str(status)] = _error(description)
    operation: dict = {"summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(body)}}}
    if parameters:
        operation["parameters"] = parameters
    return operation


def openapi_document(title: str = "Beagle", version: str = "0.1.0") -> dict:
    """The OpenAPI 3.1 document of :func:`beagle.serving.app.create_app`'s endpoints."""
    _, requests = models_json_schema([(model, "validation") for model in REQUESTS], ref_template=REF_TEMPLATE)
    _, responses = models_json_schema([(model, "serialization") for model in RESPONSES], ref_template=REF_TEMPLATE)
    schemas = {**requests.get("$defs", {}), **responses.get("$defs", {})}
    model_id = [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths = {
        "/health": {"get": _operation("liveness and queue state", _reply(Health, "the server is up"), {})},
        "/v1/models": {"get": _operation("the served model", _reply(ModelList, "one model"), {})},
        "/v1/models/{model_id}": {"get": _operation("one model", _reply(ModelCard, "the served model"),
                                                    {404: "an unknown model"}, parameters=model_id)},
        "/v1/chat/completions": {"post": _operation(
            "messages -> the assistant's reply", _reply(ChatCompletion, "the reply", ChatCompletionChunk), BODY_ERRORS,
            body=ChatCompletionRequest)},
        "/v1/completions": {"post": _operation(
            "prompt -> its continuation", _reply(TextCompletion, "the continuation", TextCompletionChunk), BODY_ERRORS,
            body=CompletionRequest)},
    }
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": schemas}}
