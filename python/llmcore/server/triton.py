"""Triton Inference Server's HTTP endpoints, answered as TensorRT-LLM's Triton models answer
them, so clients of TensorRT-LLM behind Triton work unchanged:

  POST /v2/models/{model}[/versions/{v}]/generate          one JSON response
  POST /v2/models/{model}[/versions/{v}]/generate_stream   server-sent events, one JSON each
  GET  /v2/models/{model}[/versions/{v}]/stats, /v2/models/stats   the statistics extension
  GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/{model}[/versions/{v}][/ready]

Generation runs on the OpenAI endpoints' path (OpenAIServing.start, _Run): the queue limit
(503 + Retry-After), /metrics and aborts on client disconnect apply. Errors are Triton's
{"error": "message"}: 400 for bad parameters, 404 for an unknown model or version, 503 when the
queue is full or the engine has stopped.

The request is the generate extension's: "text_input" plus the inputs of TensorRT-LLM's
`ensemble` / `tensorrt_llm_bls` models, at the top level or inside "parameters". Other fields are
ignored, as Triton hands them to the model as request parameters that these models do not read.
A body is read as JSON whatever its Content-Type (`curl -d` sends a form type). Semantics follow
TensorRT-LLM:
- text_input is tokenized with special tokens (BOS), as the preprocessing model does.
- Decoding is greedy unless top_k > 0 or top_p > 0 (TensorRT-LLM's top_k = top_p = 0 is greedy
  whatever the temperature); the model's generation_config.json does not apply. Without
  max_tokens the output may fill the rest of the context (TensorRT-LLM requires it).
- text_output is the prompt followed by the generated text unless exclude_input_in_output is
  true (the tensorrt_llm model's default is false); the prompt part is text_input as sent.
  Streamed events carry only new text: TensorRT-LLM never repeats the input when streaming.
- stop_words end the output after the first occurrence of any of them, which stays in the
  output (TensorRT-LLM keeps a stop word's tokens); they are matched in the text, so also across
  token boundaries.
- bad_words are never generated: see triton_generation.py for how, and for the limits.
- end_id replaces the model's end-of-sequence tokens and is left out of the text; pad_id is
  checked against the vocabulary and has no effect (outputs are not padded).
- embedding_bias_words / embedding_bias_weights add each weight to the logits of its word's tokens
  (tokenized without special tokens); each token's total must lie in [-100, 100].
- beam_width, num_return_sequences: only 1. return_context_logits / return_generation_logits:
  refused (400) when true. seed and random_seed are the same input; uint64 values are accepted.

The pydantic models are in triton_protocol.py. Errors raised before a route runs (401 for a
missing API key, 413 for a body over the limit, 503 while draining) keep the OpenAI shape of the
app's middleware; their status codes are the same.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from .. import SamplingParams, __version__
from ..engine import EngineDeadError
from .errors import APIError, from_value_error
from .lifecycle import ClientDisconnected, cancel_on_disconnect
from .protocol import random_id
from .triton_generation import BAN_BIAS, RENAMES, TritonGeneration, check_bad_words_supported
from .triton_protocol import (EXTENSIONS, GENERATE_INPUTS, GENERATE_OUTPUTS, TritonError, TritonGenerateRequest,
                              TritonGenerateResponse, TritonModelMetadata, TritonModelStats, TritonServerMetadata,
                              TritonStatsResponse, TritonTensorMetadata, WordList)

MODEL_VERSION = "1"
_LOGIT_BIAS_LIMIT = 100.0
# JSON has no -inf: an impossible token's log-probability is reported as this (as on /v1).
_MIN_LOGPROB = -9999.0


# -- errors --------------------------------------------------------------------------------------
class _Failure(Exception):
    """A Triton error response: {"error": message} with `status` (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    @classmethod
    def of(cls, exc: BaseException) -> "_Failure":
        if isinstance(exc, _Failure):
            return exc
        if isinstance(exc, APIError):
            return cls(exc.status, exc.message, exc.headers)
        if isinstance(exc, EngineDeadError):
            return cls(503, f"the engine has stopped: {exc}")
        return cls(500, str(exc) or type(exc).__name__)

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content={"error": self.message}, headers=self.headers)


def _event(payload: Dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# -- statistics ----------------------------------------------------------------------------------
class _Timing:
    """One generate call's instants, nanoseconds since the epoch: arrival at the handler, request
    submitted to the engine, first scheduled, generation finished, response sent."""

    def __init__(self) -> None:
        self.arrival = time.time_ns()
        self.submitted: Optional[int] = None
        self.scheduled: Optional[int] = None
        self.finished: Optional[int] = None

    def take(self, gen: TritonGeneration) -> None:
        def ns(t: Optional[float]) -> Optional[int]:
            return int(t * 1e9) if t is not None else None

        self.submitted = ns(gen.submit_time)
        self.scheduled = ns(gen.first_scheduled_time)
        self.finished = ns(gen.finished_time)


class TritonStats:
    """Per served model name: Triton's inference statistics, measured by this server.

    success: calls answered in full, ns from arrival to the last byte handed to the server;
    it splits into compute_input (parsing, tokenizing, checks: arrival to submission), queue
    (submission to first scheduled by the engine), compute_infer (first scheduled to the last
    token) and compute_output (the rest: building and sending the response). fail: calls that
    failed after their body was parsed (bad parameters, a full queue, a disconnected client).
    Each call runs as its own engine request, so execution_count equals inference_count."""

    def __init__(self, names: Sequence[str], version: str) -> None:
        self._lock = threading.Lock()
        self._stats = {name: TritonModelStats(name=name, version=version) for name in names}

    def success(self, name: str, t: _Timing) -> None:
        end = time.time_ns()
        # Consecutive intervals, clamped so they never overlap and sum to the whole.
        points = [t.arrival]
        for p in (t.submitted, t.scheduled, t.finished):
            points.append(min(max(p if p is not None else points[-1], points[-1]), end))
        points.append(end)
        with self._lock:
            s = self._stats[name]
            st = s.inference_stats
            for stat, (a, b) in zip((st.compute_input, st.queue, st.compute_infer, st.compute_output),
                                    zip(points, points[1:])):
                stat.count += 1
                stat.ns += b - a
            st.success.count += 1
            st.success.ns += end - t.arrival
            s.inference_count += 1
            s.execution_count += 1
            s.last_inference = end // 1_000_000

    def fail(self, name: str, t: _Timing) -> None:
        end = time.time_ns()
        with self._lock:
            s = self._stats[name]
            s.inference_stats.fail.count += 1
            s.inference_stats.fail.ns += end - t.arrival
            s.last_inference = end // 1_000_000

    def snapshot(self, names: Sequence[str]) -> TritonStatsResponse:
        with self._lock:
            return TritonStatsResponse(model_stats=[self._stats[n].model_copy(deep=True) for n in names])


# -- requests -> engine --------------------------------------------------------------------------
def _words(value: Optional[WordList]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _one_of(req: TritonGenerateRequest, a: str, b: str) -> Any:
    va, vb = getattr(req, a), getattr(req, b)
    if va is not None and vb is not None and va != vb:
        raise _Failure(400, f"{a} ({va}) and {b} ({vb}) are the same input and differ")
    return va if va is not None else vb


class _Plan:
    """A validated request: prompt, engine parameters, bans and stops."""

    def __init__(self, prompt_ids: List[int], params: SamplingParams, bad_words: List[List[int]],
                 stop: List[str]) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.bad_words = bad_words
        self.stop = stop


def _plan(serving, req: TritonGenerateRequest) -> _Plan:
    """Checks the request and builds its engine parameters; _Failure(400) on bad values."""
    tok = serving.tokenizer
    vocab = serving.vocab_size
    for name in ("beam_width", "num_return_sequences"):
        value = getattr(req, name)
        if value is not None and value != 1:
            raise _Failure(400, f"{name} must be 1 (this server does not run beam search or return "
                                f"several sequences); got {value}")
    for name in ("return_context_logits", "return_generation_logits"):
        if getattr(req, name):
            raise _Failure(400, f"{name} is not supported")
    for name in ("end_id", "pad_id"):
        value = getattr(req, name)
        if value is not None and not 0 <= value < vocab:
            raise _Failure(400, f"{name} must be a token id in [0, {vocab}); got {value}")

    prompt_ids = tok.encode(req.text_input)
    if not prompt_ids:
        raise _Failure(400, "text_input must not be empty")
    stop = [w for w in _words(req.stop_words) if w]
    bad_words = [ids for ids in (tok.encode(w, add_special_tokens=False) for w in _words(req.bad_words)) if ids]

    bias: Dict[int, float] = {}
    words, weights = _words(req.embedding_bias_words), req.embedding_bias_weights
    weights = [] if weights is None else ([weights] if isinstance(weights, (int, float)) else list(weights))
    if len(words) != len(weights):
        raise _Failure(400, f"embedding_bias_words ({len(words)}) and embedding_bias_weights ({len(weights)}) "
                            f"must have the same length")
    for word, weight in zip(words, weights):
        if not math.isfinite(weight):
            raise _Failure(400, f"embedding_bias_weights must be finite numbers; got {weight}")
        for t in tok.encode(word, add_special_tokens=False):
            bias[t] = bias.get(t, 0.0) + weight
    for t, b in bias.items():
        if not -_LOGIT_BIAS_LIMIT <= b <= _LOGIT_BIAS_LIMIT:
            raise _Failure(400, f"embedding_bias_weights: token {t} would get a bias of {b}, outside "
                                f"[-{_LOGIT_BIAS_LIMIT:g}, {_LOGIT_BIAS_LIMIT:g}]")
    for ids in bad_words:
        if len(ids) == 1:
            bias[ids[0]] = BAN_BIAS

    top_k, top_p = req.top_k or 0, req.top_p or 0.0
    kwargs: Dict[str, Any] = {}
    if top_k == 0 and top_p == 0.0:  # TensorRT-LLM's greedy
        kwargs.update(temperature=0.0, top_k=0, top_p=1.0)
    else:
        temperature = 1.0 if req.temperature is None else req.temperature
        kwargs.update(temperature=temperature, top_k=min(top_k, vocab), top_p=top_p if top_p > 0 else 1.0)
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    for name, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise _Failure(400, f"{name} must be a finite number; got {value}")
    seed = _one_of(req, "seed", "random_seed")
    if seed is not None and seed >= 2 ** 63:  # TensorRT-LLM's seeds are uint64; the engine's int64
        seed -= 2 ** 64
    min_tokens = _one_of(req, "min_tokens", "min_length") or 0
    max_tokens = req.max_tokens if req.max_tokens is not None else max(serving.max_model_len - len(prompt_ids), 1)
    kwargs.update(max_tokens=max_tokens, min_tokens=min_tokens, seed=seed, stop=stop, logit_bias=bias or None,
                  logprobs=0 if req.return_log_probs else None)
    if req.end_id is not None:
        kwargs.update(stop_token_ids=[req.end_id], ignore_eos=True)
    check_bad_words_supported(bad_words, kwargs.get("presence_penalty", 0.0), kwargs.get("frequency_penalty", 0.0))
    try:
        params = SamplingParams(**kwargs)
        params.validate(vocab)
    except ValueError as e:
        raise _Failure.of(from_value_error(e, RENAMES, "text_input")) from None
    except (TypeError, OverflowError) as e:
        raise _Failure(400, str(e)) from None
    return _Plan(prompt_ids, params, bad_words, stop)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else _MIN_LOGPROB


def _payload(model: str, text: str, lps: Optional[List[float]], cum: float) -> Dict[str, Any]:
    out = TritonGenerateResponse(model_name=model, model_version=MODEL_VERSION, text_output=text)
    if lps is not None:
        out.cum_log_probs = _finite(cum)
        out.output_log_probs = [_finite(x) for x in lps]
    return out.model_dump(exclude_none=True)


# -- the router ----------------------------------------------------------------------------------
_ERRORS = {code: {"model": TritonError} for code in (400, 404, 503)}


def _generate_body_schema() -> Dict[str, Any]:
    schema = TritonGenerateRequest.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_triton_router(serving, model_names: Sequence[str],
                         healthy: Optional[Callable[[], bool]] = None) -> APIRouter:
    """The Triton endpoints on `serving` (OpenAIServing) for `model_names`. healthy() says whether
    /v2/health/ready and the models' ready answer 200 (default: the engine is alive); the router's
    `stats` attribute holds the statistics."""
    names = list(model_names)
    stats = TritonStats(names, MODEL_VERSION)
    is_ready = healthy or serving.engine.is_healthy
    router = APIRouter(tags=["triton"])
    router.stats = stats  # type: ignore[attr-defined]

    def resolve(model: str, version: Optional[str]) -> str:
        if model not in names:
            raise _Failure(404, f"Request for unknown model: '{model}' is not found")
        if version is not None and version not in ("", MODEL_VERSION):
            raise _Failure(404, f"Request for unknown model: '{model}' version {version} is not found")
        return model

    async def read_request(request: Request) -> TritonGenerateRequest:
        body = await request.body()
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise _Failure(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise _Failure(400, "the request body must be a JSON object")
        try:
            return TritonGenerateRequest.model_validate(data)
        except ValidationError as e:
            lines = []
            for err in e.errors():
                loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
                lines.append(f"{loc}: {err.get('msg')}")
            raise _Failure(400, "; ".join(dict.fromkeys(lines))) from None

    async def begin(request: Request, model: str, req: TritonGenerateRequest) -> TritonGeneration:
        plan = _plan(serving, req)
        gen = TritonGeneration(serving, random_id("triton"), req.text_input, plan.prompt_ids, plan.params,
                               plan.bad_words, plan.stop)
        await cancel_on_disconnect(request, gen.start())
        return gen

    async def run_to_end(gen: TritonGeneration) -> Tuple[str, List[float]]:
        try:
            async for _ in gen.pieces():
                pass
        finally:
            gen.abort()
        return gen.text, gen.logprobs

    def full_payload(model: str, req: TritonGenerateRequest, text: str, lps: List[float]) -> Dict[str, Any]:
        if not req.exclude_input_in_output:
            text = req.text_input + text
        return _payload(model, text, lps if req.return_log_probs else None, sum(lps))

    async def generate(request: Request, model: str, version: Optional[str], streaming: bool) -> Response:
        timing = _Timing()
        try:
            model = resolve(model, version)
            req = await read_request(request)
        except _Failure as f:
            return f.response()
        stream = req.stream if req.stream is not None else streaming
        try:
            if stream and not streaming:
                raise _Failure(400, "stream=true needs the generate_stream endpoint")
            gen = await begin(request, model, req)
        except ClientDisconnected:
            stats.fail(model, timing)
            raise
        except Exception as e:  # noqa: BLE001 -- every failure is answered as Triton does
            stats.fail(model, timing)
            return _Failure.of(e).response()
        if stream:
            return StreamingResponse(stream_events(model, req, gen, timing), media_type="text/event-stream")
        try:
            text, lps = await cancel_on_disconnect(request, run_to_end(gen))
        except ClientDisconnected:
            stats.fail(model, timing)
            raise
        except Exception as e:  # noqa: BLE001
            stats.fail(model, timing)
            return _Failure.of(e).response()
        timing.take(gen)
        payload = full_payload(model, req, text, lps)
        if streaming:  # generate_stream with stream=false: the whole response as one event
            body = _one_event(payload, lambda: stats.success(model, timing))
            return StreamingResponse(body, media_type="text/event-stream")
        response = JSONResponse(content=payload)
        stats.success(model, timing)
        return response

    async def stream_events(model: str, req: TritonGenerateRequest, gen: TritonGeneration,
                            timing: _Timing) -> AsyncIterator[str]:
        ok = False
        cum = 0.0
        try:
            async for piece in gen.pieces():
                cum += sum(piece.logprobs)
                yield _event(_payload(model, piece.text, piece.logprobs if req.return_log_probs else None, cum))
            ok = True
        except Exception as e:  # noqa: BLE001 -- the status is sent: the error goes in an event
            yield _event({"error": _Failure.of(e).message})
        finally:
            gen.abort()
            if ok:
                timing.take(gen)
                stats.success(model, timing)
            else:
                stats.fail(model, timing)

    gen_doc = {"responses": {200: {"model": TritonGenerateResponse}, **_ERRORS},
               "openapi_extra": _generate_body_schema()}
    stream_doc = {"responses": {200: {"description": "server-sent events, each `data: <TritonGenerateResponse>`",
                                      # Before OpenAPI 3.2 an event stream's schema describes one event.
                                      "content": {"text/event-stream": {"schema": {
                                          "type": "object", "required": ["data"],
                                          "properties": {"data": {"type": "string"}}}}}},
                                **_ERRORS},
                  "response_class": StreamingResponse, "openapi_extra": _generate_body_schema()}

    @router.post("/v2/models/{model}/generate", **gen_doc)
    async def generate_(model: str, request: Request) -> Response:
        """Triton's generate: one JSON response."""
        return await generate(request, model, None, streaming=False)

    @router.post("/v2/models/{model}/versions/{version}/generate", **gen_doc)
    async def generate_version(model: str, version: str, request: Request) -> Response:
        return await generate(request, model, version, streaming=False)

    @router.post("/v2/models/{model}/generate_stream", **stream_doc)
    async def generate_stream(model: str, request: Request) -> Response:
        """Triton's generate_stream: server-sent events, one JSON object (the new text) each."""
        return await generate(request, model, None, streaming=True)

    @router.post("/v2/models/{model}/versions/{version}/generate_stream", **stream_doc)
    async def generate_stream_version(model: str, version: str, request: Request) -> Response:
        return await generate(request, model, version, streaming=True)

    # -- statistics, metadata, health ---------------------------------------------------------
    stats_doc = {"response_model": TritonStatsResponse, "responses": _ERRORS}

    @router.get("/v2/models/stats", **stats_doc)
    async def all_stats() -> Any:
        """Triton's statistics extension for every served model."""
        return stats.snapshot(names)

    @router.get("/v2/models/{model}/stats", **stats_doc)
    async def model_stats(model: str) -> Any:
        try:
            return stats.snapshot([resolve(model, None)])
        except _Failure as f:
            return f.response()

    @router.get("/v2/models/{model}/versions/{version}/stats", **stats_doc)
    async def model_version_stats(model: str, version: str) -> Any:
        try:
            return stats.snapshot([resolve(model, version)])
        except _Failure as f:
            return f.response()

    def metadata(model: str) -> TritonModelMetadata:
        return TritonModelMetadata(
            name=model, versions=[MODEL_VERSION], platform="llmcore",
            inputs=[TritonTensorMetadata(name=n, datatype=d, shape=s) for n, d, s in GENERATE_INPUTS],
            outputs=[TritonTensorMetadata(name=n, datatype=d, shape=s) for n, d, s in GENERATE_OUTPUTS])

    meta_doc = {"response_model": TritonModelMetadata, "responses": _ERRORS}

    @router.get("/v2/models/{model}", **meta_doc)
    async def model_metadata(model: str) -> Any:
        """Triton's model metadata: the inputs the generate endpoints read, and the outputs."""
        try:
            return metadata(resolve(model, None))
        except _Failure as f:
            return f.response()

    @router.get("/v2/models/{model}/versions/{version}", **meta_doc)
    async def model_version_metadata(model: str, version: str) -> Any:
        try:
            return metadata(resolve(model, version))
        except _Failure as f:
            return f.response()

    ready_doc = {"response_class": Response,
                 "responses": {200: {"description": "ready (no body)"}, 503: {"description": "not ready (no body)"},
                               404: {"model": TritonError}}}

    @router.get("/v2/models/{model}/ready", **ready_doc)
    async def model_ready(model: str) -> Response:
        """200 while the model serves requests, 503 once the engine has stopped."""
        try:
            resolve(model, None)
        except _Failure as f:
            return f.response()
        return Response(status_code=200 if is_ready() else 503)

    @router.get("/v2/models/{model}/versions/{version}/ready", **ready_doc)
    async def model_version_ready(model: str, version: str) -> Response:
        try:
            resolve(model, version)
        except _Failure as f:
            return f.response()
        return Response(status_code=200 if is_ready() else 503)

    health_doc = {"response_class": Response,
                  "responses": {200: {"description": "yes (no body)"}, 503: {"description": "no (no body)"}}}

    @router.get("/v2/health/live", **health_doc)
    async def live() -> Response:
        """200 while the engine is alive, 503 once it has stopped."""
        return Response(status_code=200 if serving.engine.is_healthy() else 503)

    @router.get("/v2/health/ready", **health_doc)
    async def ready() -> Response:
        """200 while the server accepts requests, 503 once the engine has stopped (or it drains)."""
        return Response(status_code=200 if is_ready() else 503)

    @router.get("/v2", response_model=TritonServerMetadata)
    async def server_metadata() -> TritonServerMetadata:
        """Triton's server metadata."""
        return TritonServerMetadata(name="llmcore", version=__version__, extensions=EXTENSIONS)

    return router


async def _one_event(payload: Dict[str, Any], on_sent: Callable[[], None]) -> AsyncIterator[str]:
    yield _event(payload)
    on_sent()


# Triton health paths: open without the API key, as /health is.
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")

__all__ = ["create_triton_router", "TritonGenerateRequest", "TritonGenerateResponse", "TritonStats",
           "OPEN_PATHS", "MODEL_VERSION"]
