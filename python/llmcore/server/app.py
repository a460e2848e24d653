"""The FastAPI application: OpenAI endpoints, /health, /version, /tokenize, /detokenize, API-key
checks and OpenAI-shaped errors for everything that goes wrong (validation errors are 400, as
OpenAI answers them, not FastAPI's 422)."""

from __future__ import annotations

import hmac
from typing import Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine import EngineDeadError
from ..llm import LLM
from .errors import APIError, bad_request
from .protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, DetokenizeResponse,
                       ErrorResponse, ModelCard, ModelList, TokenizeRequest, TokenizeResponse, VersionResponse)
from .serving import OpenAIServing

# Paths open without the API key (load balancers probe them).
_OPEN_PATHS = ("/health", "/version")

_ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 503)}


def _validation_param(loc: Sequence) -> Optional[str]:
    """pydantic's error location ("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def create_app(llm: LLM, served_model_names: Optional[Sequence[str]] = None, api_key: Optional[str] = None,
               chat_template: Optional[str] = None, model_path: Optional[str] = None) -> FastAPI:
    """An app serving `llm` under `served_model_names` (the first is reported in responses;
    default: model_path). With api_key, every endpoint but /health and /version needs
    `Authorization: Bearer <api_key>`."""
    names = list(served_model_names or [model_path or "llmcore"])
    serving = OpenAIServing(llm, names, chat_template=chat_template)
    app = FastAPI(title="llmcore OpenAI-compatible server", version=__version__)
    app.state.serving = serving

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _validation_param(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
            param = None
        else:
            message = "; ".join(f"{_validation_param(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors)
        return bad_request(message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response()

    @app.exception_handler(EngineDeadError)
    async def _engine_dead(_: Request, exc: EngineDeadError) -> JSONResponse:
        return APIError(503, f"the engine has stopped: {exc}", type="server_error").response()

    # -- auth -------------------------------------------------------------------------------
    if api_key:
        expected = f"Bearer {api_key}".encode("utf-8")

        @app.middleware("http")
        async def _check_key(request: Request, call_next):
            if request.method == "OPTIONS" or request.url.path in _OPEN_PATHS:
                return await call_next(request)
            given = request.headers.get("authorization", "").encode("utf-8")
            if not hmac.compare_digest(given, expected):
                return APIError(401, "Incorrect or missing API key: pass it as 'Authorization: Bearer <key>'.",
                                code="invalid_api_key").response()
            return await call_next(request)

    # -- endpoints --------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        """200 while the engine serves requests, 503 once it has stopped."""
        return Response(status_code=200 if serving.engine.is_healthy() else 503)

    @app.get("/version", response_model=VersionResponse)
    async def version() -> VersionResponse:
        return VersionResponse(version=__version__)

    @app.get("/v1/models", response_model=ModelList, responses=_ERROR_RESPONSES)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, root=model_path or name, max_model_len=serving.max_model_len)
                               for name in names])

    @app.post("/v1/completions", responses=_ERROR_RESPONSES)
    async def completions(req: CompletionRequest):
        result = await serving.create_completion(req)
        if req.stream:
            return StreamingResponse(result, media_type="text/event-stream")
        return JSONResponse(content=result.model_dump())

    @app.post("/v1/chat/completions", responses=_ERROR_RESPONSES)
    async def chat_completions(req: ChatCompletionRequest):
        result = await serving.create_chat_completion(req)
        if req.stream:
            return StreamingResponse(result, media_type="text/event-stream")
        return JSONResponse(content=result.model_dump())

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERROR_RESPONSES)
    async def tokenize(req: TokenizeRequest) -> TokenizeResponse:
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
        serving.check_model(req.model)
        bad = [t for t in req.tokens if not 0 <= t < serving.vocab_size]
        if bad:
            raise bad_request(f"token id {bad[0]} is outside the vocabulary [0, {serving.vocab_size})",
                              param="tokens")
        return DetokenizeResponse(prompt=serving.tokenizer.decode(req.tokens))

    return app
