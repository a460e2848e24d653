"""The FastAPI application: OpenAI endpoints, Triton's /v2 endpoints (triton.py), /health, /version,
/tokenize, /detokenize, /metrics, API-key checks, a request-body size limit, optional CORS and
OpenAI-shaped errors for everything that goes wrong (validation errors are 400, as OpenAI answers
them, not FastAPI's 422)."""

from __future__ import annotations

import hmac
from typing import Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine import EngineDeadError
from ..llm import LLM
from .errors import APIError, bad_request
from .lifecycle import DEFAULT_SHUTDOWN_TIMEOUT_S, cancel_on_disconnect, install_lifecycle
from .metrics import ServerMetrics
from .protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse,
                       DetokenizeRequest, DetokenizeResponse,
                       ErrorResponse, ModelCard, ModelList, TokenizeRequest, TokenizeResponse, VersionResponse)
from .serving import OpenAIServing
from .triton import OPEN_PATHS as _TRITON_OPEN_PATHS, create_triton_router
from .validation import check_text, describe_body_error, document_errors_as_sent, validation_error
from .web import add_web_chat, is_web_path

# Paths open without the API key (load balancers and Prometheus probe them); the web chat page
# (web.is_web_path) is open too and asks for the key itself.
_OPEN_PATHS = ("/health", "/version", "/metrics") + _TRITON_OPEN_PATHS

_ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 503)}


def _generation_responses(model) -> dict:
    """A generation endpoint's documented answers: `model` as JSON, or with stream=true an SSE
    stream of chunks (text/event-stream), and the OpenAI errors."""
    # Before OpenAPI 3.2 an event stream's schema describes one event: here a `data` line holding
    # a JSON chunk, an error object or the final [DONE].
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    ok = {"model": model, "description": "The response; with stream=true, server-sent events of chunks",
          "content": {"text/event-stream": {"schema": event}}}
    return {200: ok, **_ERROR_RESPONSES}

DEFAULT_MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024


class _BodySizeLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 with an OpenAI error body.

    A declared Content-Length over the limit is refused before reading; otherwise the body
    (chunked or not) is read into memory up to the limit and replayed to the app, which reads
    whole JSON bodies anyway."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, scope, receive, send, size: str) -> None:
        err = APIError(413, f"the request body is {size} bytes, over the limit of {self.limit} bytes "
                            f"(--max-request-body-bytes)", code="request_too_large")
        await err.response()(scope, receive, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.limit:
                    await self._refuse(scope, receive, send, str(declared))
                    return
        chunks = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                replay = [message]
                break
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._refuse(scope, receive, send, f"more than {self.limit}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replayed():
            if replay:
                return replay.pop(0)
            return await receive()

        await self.app(scope, replayed, send)


def create_app(llm: LLM, served_model_names: Optional[Sequence[str]] = None, api_key: Optional[str] = None,
               chat_template: Optional[str] = None, model_path: Optional[str] = None,
               max_num_queued_requests: Optional[int] = None,
               max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
               allowed_origins: Optional[Sequence[str]] = None,
               shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> FastAPI:
    """An app serving `llm` under `served_model_names` (the first is reported in responses;
    default: model_path). With api_key, every endpoint but /health, /version, /metrics, /v2/health/live,
    /v2/health/ready and the web chat page (/ and /static/...) needs
    `Authorization: Bearer <api_key>`. max_num_queued_requests: engine requests in flight beyond
    which calls get 503 + Retry-After (None: no limit). Bodies over max_request_body_bytes get
    413. CORS headers are sent only for allowed_origins (["*"] for any). shutdown_timeout: seconds
    a SIGTERM drain waits for requests in flight (lifecycle.py; app.state.lifecycle)."""
    if max_request_body_bytes < 1:
        raise ValueError(f"max_request_body_bytes must be >= 1; got {max_request_body_bytes}")
    names = list(served_model_names or [model_path or "llmcore"])
    metrics = ServerMetrics(llm.llm_engine, names[0])
    serving = OpenAIServing(llm, names, chat_template=chat_template,
                            max_num_queued_requests=max_num_queued_requests, metrics=metrics)
    app = FastAPI(title="llmcore OpenAI-compatible server", version=__version__)
    document_errors_as_sent(app)
    app.state.serving = serving
    app.state.metrics = metrics

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(request, exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # Starlette's headers (the Allow list of a 405) stay on the response.
        message = describe_body_error(str(exc.detail), exc.__cause__)
        return APIError(exc.status_code, message, type=kind, headers=exc.headers).response()

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(_: Request, exc: EngineDeadError) -> JSONResponse:
        return APIError(503, f"the engine has stopped: {exc}", type="server_error").response()

    # -- auth -------------------------------------------------------------------------------
    if api_key:
        expected = f"Bearer {api_key}".encode("utf-8")

        @app.middleware("http")
        async def _check_key(request: Request, call_next):
            if request.method == "OPTIONS" or request.url.path in _OPEN_PATHS or is_web_path(request.url.path):
                return await call_next(request)
            given = request.headers.get("authorization", "").encode("utf-8")
            if not hmac.compare_digest(given, expected):
                return APIError(401, "Incorrect or missing API key: pass it as 'Authorization: Bearer <key>'.",
                                code="invalid_api_key").response()
            return await call_next(request)

    # Added last, so outermost: oversized bodies are refused before auth reads anything, and
    # CORS headers also go on error responses.
    app.add_middleware(_BodySizeLimit, limit=max_request_body_bytes)
    # Outside the size limit: while draining, new requests get 503 before their body is read.
    lifecycle = install_lifecycle(app, serving.engine, _OPEN_PATHS, shutdown_timeout=shutdown_timeout)
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])

    # -- endpoints --------------------------------------------------------------------------
    add_web_chat(app)  # GET / and /static/...: the chat page

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(content=metrics.exposition(), media_type=metrics.content_type)

    @app.get("/health", response_class=Response,
             responses={200: {"description": "serving (no body)"}, 503: {"description": "not serving (no body)"}})
    async def health() -> Response:
        """200 while the engine serves requests, 503 once it has stopped or the server drains."""
        return Response(status_code=200 if lifecycle.healthy() else 503)

    @app.get("/version", response_model=VersionResponse)
    async def version() -> VersionResponse:
        return VersionResponse(version=__version__)

    @app.get("/v1/models", response_model=ModelList, responses=_ERROR_RESPONSES)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, root=model_path or name, max_model_len=serving.max_model_len)
                               for name in names])

    async def respond(raw: Request, stream: bool, work):
        """The generation's result as SSE (a stream) or JSON; a client that hangs up aborts it."""
        result = await cancel_on_disconnect(raw, work)
        if stream:
            return StreamingResponse(result, media_type="text/event-stream")
        return JSONResponse(content=result.model_dump())

    @app.post("/v1/completions", responses=_generation_responses(CompletionResponse))
    async def completions(req: CompletionRequest, raw: Request):
        return await respond(raw, req.stream, serving.create_completion(req))

    @app.post("/v1/chat/completions", responses=_generation_responses(ChatCompletionResponse))
    async def chat_completions(req: ChatCompletionRequest, raw: Request):
        return await respond(raw, req.stream, serving.create_chat_completion(req))

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERROR_RESPONSES)
    async def tokenize(req: TokenizeRequest) -> TokenizeResponse:
        check_text(req)
        serving.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise bad_request("give exactly one of prompt and messages", param="prompt")
        if req.prompt is not None:
            ids = serving.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        else:
            _, ids = serving.chat_prompt(req)
        return TokenizeResponse(count=len(ids), max_model_len=serving.max_model_len, tokens=ids)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERROR_RESPONSES)
    async def detokenize(req: DetokenizeRequest) -> DetokenizeResponse:
        check_text(req)
        serving.check_model(req.model)
        bad = [t for t in req.tokens if not 0 <= t < serving.vocab_size]
        if bad:
            raise bad_request(f"token id {bad[0]} is outside the vocabulary [0, {serving.vocab_size})",
                              param="tokens")
        return DetokenizeResponse(prompt=serving.tokenizer.decode(req.tokens))

    app.include_router(create_triton_router(serving, names, healthy=lifecycle.healthy))  # /v2: triton.py
    return app
