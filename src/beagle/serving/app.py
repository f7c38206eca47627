"""OpenAI-compatible HTTP API over a :class:`~beagle.decoding.engine.SpeculativeGenerator`.

Endpoints::

    POST /v1/chat/completions   messages -> assistant reply (chat template), streaming or not
    POST /v1/completions        prompt (string / token ids) -> continuation, streaming or not
    GET  /v1/models             the one served model
    GET  /health                liveness + queue state
    GET  /openapi.json          the OpenAPI 3.1 document of these endpoints (beagle.serving.openapi)

Streaming uses server-sent events (``data: {...}\\n\\n`` ... ``data: [DONE]``). Responses carry
``usage`` (in streams: a last chunk when ``stream_options.include_usage``) and Beagle's decoding
statistics in the extension field ``"beagle"``. Extensions to OpenAI's request fields: ``top_k``
and ``ignore_eos``. Requests are served one at a time, in order, by a worker thread
(:mod:`beagle.serving.queue`); a client that disconnects cancels its generation.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for requests
that cannot be served (n > 1, prompt longer than the context, max_tokens over the server's cap,
malformed JSON, a seed outside 64 bits, a Host header the server does not answer to), 401 for a
missing / wrong API key (on every path, unknown ones included), 404 for an unknown model or path,
408 for a body that stalls, 413 for a body over ``max_body_bytes``, 415 for a body that is not
``application/json``, 422 for unknown fields and wrong types, 503 when the queue is full or the
server is shutting down. The checks before the endpoints are :mod:`beagle.serving.guard`'s.

Work on the event loop stays small: bodies are bounded, and parsing and tokenizing run on one
helper thread, so a large prompt never stalls ``/health`` or a stream. The cheap checks (model,
n, max_tokens) come first; a prompt far longer than the context is refused after tokenizing a
prefix of it (:meth:`~beagle.target_model.model.TargetModel.encode`). A temperature below 1e-5 decodes
greedily (``beagle.decoding.sampling.MIN_SAMPLING_TEMPERATURE``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from beagle.errors import BeagleError, PromptTooLongError
from beagle.serving.guard import HostPolicy, RequestGuard
from beagle.serving.openapi import openapi_document
from beagle.serving.queue import GenerationJob, GenerationWorker, QueueFull, WorkerClosed
from beagle.serving.schemas import ApiError, ChatCompletionRequest, CompletionRequest, error_body, parse_body

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.2  # how often a waiting request checks whether its client is still there
MAX_STOP_STRINGS = 16
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "length": "length"}
DEFAULT_MAX_BODY_BYTES = 4 * 2**20  # ~1M tokens of English as a JSON string: far beyond any context
DEFAULT_BODY_TIMEOUT_S = 15.0


def create_app(generator, model_name: str, max_tokens_limit: int, api_key: str | None = None, *,
               max_queue: int = 64, host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] | list[str] = (),
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, body_timeout: float = DEFAULT_BODY_TIMEOUT_S) -> FastAPI:
    """Build the ASGI app serving ``generator`` as model ``model_name``.

    max_tokens_limit caps max_tokens per request (also the default when a request omits it,
    within the context); api_key, when set, is required as ``Authorization: Bearer <key>``
    on every request; max_queue bounds the requests waiting or running (503 beyond).
    host: the address the server binds (its Host header policy, see :mod:`beagle.serving.guard`),
    widened by allowed_hosts ('*' = any); max_body_bytes bounds request bodies (413);
    body_timeout: seconds a request body may stall (408).
    """
    if max_tokens_limit < 1:
        raise BeagleError(f"max_tokens_limit must be ≥ 1, got {max_tokens_limit}")
    if max_body_bytes < 1:
        raise BeagleError(f"max_body_bytes must be ≥ 1, got {max_body_bytes}")
    worker = GenerationWorker(generator, max_pending=max_queue)
    helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="beagle-tokenize")
    server = _Server(generator, worker, model_name, max_tokens_limit, helper)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.close)
            helper.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Beagle", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuard, api_key=api_key or None, hosts=HostPolicy.for_bind(host, tuple(allowed_hosts)),
                       max_body_bytes=max_body_bytes, body_timeout=body_timeout)
    app.state.worker = worker
    app.state.generator = generator
    app.state.model_name = model_name
    _add_exception_handlers(app)

    @app.get("/health")
    async def health():
        return server.health()

    document = openapi_document()

    @app.get("/openapi.json")
    async def openapi():
        return document

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        server.check_model(model_id)
        return server.model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await server.off_loop(parse_body, await request.body(), ChatCompletionRequest)
        return await server.chat(request, body)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await server.off_loop(parse_body, await request.body(), CompletionRequest)
        return await server.complete(request, body)

    return app


class _Server:
    def __init__(self, generator, worker: GenerationWorker, model_name: str, max_tokens_limit: int,
                 helper: ThreadPoolExecutor):
        self.generator = generator
        self.target = generator.target
        self.worker = worker
        self.model_name = model_name
        self.max_tokens_limit = max_tokens_limit
        self.helper = helper  # one thread: parsing and tokenizing, off the event loop, one request at a time
        self.created = int(time.time())

    async def off_loop(self, function, *args, **kwargs):
        """Run ``function`` on the helper thread (the event loop keeps serving other requests meanwhile)."""
        return await asyncio.get_running_loop().run_in_executor(self.helper, functools.partial(function, *args,
                                                                                               **kwargs))

    # ------------------------------------------------------------------ info
    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "beagle",
                "context_length": self.target.max_length, "max_tokens_limit": self.max_tokens_limit,
                "speculative": self.generator.draft is not None}

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_name, "speculative": self.generator.draft is not None,
                "queue": self.worker.state()}

    def check_model(self, model: str | None) -> None:
        if model and model != self.model_name:
            raise ApiError(404, f"the model {model!r} does not exist here; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    # --------------------------------------------------------------- requests
    async def chat(self, request: Request, body: ChatCompletionRequest):
        if body.max_tokens is not None and body.max_completion_tokens is not None \
                and body.max_tokens != body.max_completion_tokens:
            raise ApiError(400, "max_tokens and max_completion_tokens differ; send one of them", param="max_tokens")
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        self._check_common(body, requested)
        if body.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        try:
            prompt_ids = await self.off_loop(self.target.encode_chat, messages, limit=self.target.max_length - 1)
        except PromptTooLongError as error:
            raise self._too_long(error, "messages") from None
        except BeagleError as error:
            raise ApiError(400, str(error), param="messages") from None
        except Exception as error:  # noqa: BLE001 - jinja errors of the model's chat template
            raise ApiError(400, f"cannot apply the model's chat template to these messages: {error}",
                           param="messages") from None
        settings = self._settings(body, prompt_ids, requested, "messages")
        return await self._respond(request, "chat", body, prompt_ids, settings)

    async def complete(self, request: Request, body: CompletionRequest):
        self._check_common(body, body.max_tokens)
        if body.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        if body.echo:
            raise ApiError(400, "echo is not supported", param="echo")
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, f"one prompt per request is supported, got {len(prompt)}", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            try:
                prompt_ids = await self.off_loop(self.target.encode, prompt, limit=self.target.max_length - 1) \
                    if prompt else []
            except PromptTooLongError as error:
                raise self._too_long(error, "prompt") from None
            except BeagleError as error:
                raise ApiError(400, str(error), param="prompt") from None
        else:
            prompt_ids = list(prompt)
            vocab = self.target.vocab_size
            if prompt_ids and (min(prompt_ids) < 0 or max(prompt_ids) >= vocab):
                raise ApiError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        settings = self._settings(body, prompt_ids, body.max_tokens, "prompt")
        return await self._respond(request, "completion", body, prompt_ids, settings)

    def _too_long(self, error: PromptTooLongError, param: str) -> ApiError:
        count = f"{error.tokens} tokens" if error.exact else f"more than {error.tokens} tokens"
        return ApiError(400, f"the prompt is {count} but this model's context is {self.target.max_length} tokens "
                             "(prompt + completion); shorten the prompt", param=param, code="context_length_exceeded")

    def _check_common(self, body, requested: int | None) -> None:
        """The checks that need no tokenizing, done before it."""
        self.check_model(body.model)
        if requested is not None and requested > self.max_tokens_limit:
            raise ApiError(400, f"max_tokens={requested} exceeds this server's limit of {self.max_tokens_limit}",
                           param="max_tokens")
        if body.n is not None and body.n != 1:
            raise ApiError(400, f"only n=1 is supported, got n={body.n}", param="n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(body, name):
                raise ApiError(400, f"{name} is not supported (Beagle decodes losslessly; use 0)", param=name)
        if body.stream_options is not None and not body.stream:
            raise ApiError(400, "stream_options is only allowed with stream=true", param="stream_options")

    def _settings(self, body, prompt_ids: list[int], requested: int | None, prompt_param: str):
        from beagle.decoding.sampling import GenerationSettings

        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param=prompt_param)
        context = self.target.max_length
        prompt_length = len(prompt_ids)
        if prompt_length >= context:
            raise ApiError(400, f"the prompt is {prompt_length} tokens but this model's context is {context} tokens "
                                f"(prompt + completion); shorten the prompt", param=prompt_param,
                           code="context_length_exceeded")
        limit = self.max_tokens_limit
        if requested is not None and requested > limit:
            raise ApiError(400, f"max_tokens={requested} exceeds this server's limit of {limit}", param="max_tokens")
        room = context - prompt_length
        if requested is None:
            requested = min(limit, room)
        elif requested > room:
            raise ApiError(400, f"the prompt ({prompt_length} tokens) + max_tokens ({requested}) exceeds this model's "
                                f"context of {context} tokens; lower max_tokens to at most {room}",
                           param="max_tokens", code="context_length_exceeded")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings are supported, got {len(stop)}", param="stop")
        try:
            return GenerationSettings(
                max_new_tokens=requested,
                temperature=1.0 if body.temperature is None else float(body.temperature),  # OpenAI's default
                top_p=1.0 if body.top_p is None else float(body.top_p),
                top_k=body.top_k or 0,
                seed=body.seed,
                stop=[s for s in stop if s],
                ignore_eos=bool(body.ignore_eos),
            ).validate()
        except BeagleError as error:
            raise ApiError(400, str(error)) from None

    # -------------------------------------------------------------- responses
    async def _respond(self, request: Request, kind: str, body, prompt_ids: list[int], settings):
        try:
            job = self.worker.submit(prompt_ids, settings)
        except QueueFull as error:
            raise ApiError(503, f"the server is busy ({error}); retry later", code="queue_full") from None
        except WorkerClosed as error:
            raise ApiError(503, str(error), code="shutting_down") from None
        try:
            first = await _next_or_disconnect(request, job)
            if first is None:  # the client left while queued / during prefill
                return JSONResponse(error_body("client disconnected"), status_code=499)
            if first[0] == "error":
                raise _generation_error(first[1])
            reply = _Reply(self, kind, body, job)
            if body.stream:
                return _JobStreamingResponse(reply.sse(first), job, media_type="text/event-stream",
                                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            event = first
            while event[0] == "text":
                reply.text.append(event[1])
                event = await _next_or_disconnect(request, job)
                if event is None:
                    return JSONResponse(error_body("client disconnected"), status_code=499)
            if event[0] == "error":
                raise _generation_error(event[1])
            return JSONResponse(reply.full(event[1]))
        except BaseException:
            job.cancel()
            raise


class _Reply:
    """Builds one request's response objects (chat or text completion)."""

    def __init__(self, server: _Server, kind: str, body, job: GenerationJob):
        self.server = server
        self.kind = kind
        self.body = body
        self.job = job
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.text: list[str] = []
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def usage(self, stats) -> dict:
        prompt = len(self.job.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": stats.new_tokens,
                "total_tokens": prompt + stats.new_tokens}

    def beagle(self, stats) -> dict:
        return {
            "speculative": self.server.generator.draft is not None,
            "tau": round(stats.tau, 4),
            "target_passes": stats.target_passes,
            "new_tokens": stats.new_tokens,
            "tokens_per_s": round(stats.tokens_per_s, 3),
            "acceptance_by_depth": [round(rate, 4) for rate in stats.acceptance_by_depth()],
            "stop_reason": stats.stop_reason,
            "queue_wait_s": round(self.job.queue_wait_s, 4),
        }

    def _head(self, chunk: bool) -> dict:
        if self.kind == "chat":
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.server.model_name,
                "system_fingerprint": None}

    def _choice(self, text: str | None, finish_reason: str | None, chunk: bool, role: bool = False) -> dict:
        if self.kind == "chat":
            if chunk:
                delta = {} if text is None else {"content": text}
                if role:
                    delta = {"role": "assistant", **delta}
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def full(self, stats) -> dict:
        finish = FINISH_REASONS.get(stats.stop_reason, "stop")
        return {**self._head(False), "choices": [self._choice("".join(self.text), finish, False)],
                "usage": self.usage(stats), "beagle": self.beagle(stats)}

    def _chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False, **extra) -> str:
        payload = {**self._head(True), "choices": [self._choice(text, finish_reason, True, role)], **extra}
        if self.include_usage and "usage" not in payload:
            payload["usage"] = None
        return _sse(payload)

    async def sse(self, first: tuple[str, object]):
        event = first
        if self.kind == "chat":
            yield self._chunk("", role=True)
        while event[0] == "text":
            if event[1]:
                yield self._chunk(event[1])
            event = await self.job.next_event()
        if event[0] == "error":
            error = _generation_error(event[1])
            yield _sse(error.body())
            yield "data: [DONE]\n\n"
            return
        stats = event[1]
        finish = FINISH_REASONS.get(stats.stop_reason, "stop")
        yield self._chunk(None, finish, beagle=self.beagle(stats))
        if self.include_usage:
            yield _sse({**self._head(True), "choices": [], "usage": self.usage(stats), "beagle": self.beagle(stats)})
        yield "data: [DONE]\n\n"


class _JobStreamingResponse(StreamingResponse):
    """A streamed reply that cancels its generation however the response ends (client gone included)."""

    def __init__(self, content, job: GenerationJob, **kwargs):
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.job.finished:
                self.job.cancel()


async def _next_or_disconnect(request: Request, job: GenerationJob):
    """The job's next event; None (and the job cancelled) once the client has disconnected."""
    while True:
        event = await job.next_event(timeout=DISCONNECT_POLL_S)
        if event is not None:
            return event
        if await request.is_disconnected():
            logger.info("client disconnected; cancelling its request")
            job.cancel()
            return None


def _generation_error(error: object) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, BeagleError):
        return ApiError(400, str(error))
    if isinstance(error, WorkerClosed):
        return ApiError(503, str(error), code="shutting_down")
    return ApiError(500, f"generation failed: {type(error).__name__}: {error}")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        if error.status in (408, 413):  # raised while the body was still arriving: the connection is spent
            headers = {"Connection": "close"}
        if error.status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, error.message)
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        if error.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return JSONResponse(error_body(message, code=str(error.status_code)), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return JSONResponse(error_body(f"invalid request: {problems}"), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error: {type(error).__name__}: {error}", "server_error"),
                            status_code=500)
