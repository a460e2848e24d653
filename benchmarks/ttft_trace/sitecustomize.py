"""Per-request timestamps inside the OpenAI server, for benchmarks/ttft_trace/report.py.

Python imports this file at startup when its folder is on PYTHONPATH (it is a `sitecustomize`);
with LLMCORE_TTFT_TRACE=<file> set it wraps a few of the server's functions and appends one JSON
line per stamp to <file>. Stamps (seconds since the epoch, as the engine's own):
  A handler entry (create_completion)      B add_request (AsyncLLM.generate)
  C engine arrival, S first scheduled, D first token (the engine's RequestMetrics)
  R the router thread hands the first delta to the event loop
  E the event loop has it                  G the handler's start() returns
  I cancel_on_disconnect returns           J StreamingResponse is called
  H the stream body begins                 F the first chunk with text is yielded
LLMCORE_TTFT_TRACE_LOOP=asyncio|uvloop forces uvicorn's event loop. A measuring aid: it patches
internals and follows them by name; run it, never import it from the package.

    LLMCORE_TTFT_TRACE=/tmp/t.jsonl PYTHONPATH=benchmarks/ttft_trace:$PYTHONPATH \\
        python3 benchmarks/serving.py --launch-server ... --save-detailed --output-json /tmp/s.json
    python3 benchmarks/ttft_trace/report.py /tmp/t.jsonl /tmp/s.json
"""

import json
import os
import time

_PATH = os.environ.get("LLMCORE_TTFT_TRACE")


def _write(rid, **stamps):
    if rid is not None:
        with open(_PATH, "a") as f:
            f.write(json.dumps({"rid": rid, **stamps}) + "\n")


def _stamp(rid, key):
    _write(rid, **{key: time.time()})


def _install():
    import contextvars

    import starlette.responses as responses

    import llmcore.async_engine as async_engine
    import llmcore.engine as engine
    import llmcore.server.app as app
    import llmcore.server.serving as serving

    entry = contextvars.ContextVar("llmcore_ttft_entry", default=None)
    routed = {}
    last = {}  # the rid of the call whose start() returned last (the stamps after it run elsewhere)

    generate = async_engine.AsyncLLM.generate

    async def traced_generate(self, ids, params, request_id=None, prompt=None):
        if entry.get() is not None:
            _write(request_id, A=entry.get())
        _stamp(request_id, "B")
        first = True
        async for out in generate(self, ids, params, request_id, prompt):
            if first:
                first = False
                m = out.metrics
                _write(request_id, E=time.time(), C=m.arrival_time, S=m.first_scheduled_time,
                       D=m.first_token_time, R=routed.pop(request_id, None))
            yield out

    async_engine.AsyncLLM.generate = traced_generate

    create_completion = serving.OpenAIServing.create_completion

    async def traced_create_completion(self, req):
        entry.set(time.time())
        return await create_completion(self, req)

    serving.OpenAIServing.create_completion = traced_create_completion

    start = serving.OpenAIServing.start

    async def traced_start(self, request_id, *args, **kwargs):
        run = await start(self, request_id, *args, **kwargs)
        last["rid"] = request_id + "-0"
        _stamp(last["rid"], "G")
        return run

    serving.OpenAIServing.start = traced_start

    cancel_on_disconnect = app.cancel_on_disconnect

    async def traced_cancel_on_disconnect(request, work):
        result = await cancel_on_disconnect(request, work)
        _stamp(last.get("rid"), "I")
        return result

    app.cancel_on_disconnect = traced_cancel_on_disconnect

    call = responses.StreamingResponse.__call__

    async def traced_call(self, scope, receive, send):
        _stamp(last.get("rid"), "J")
        return await call(self, scope, receive, send)

    responses.StreamingResponse.__call__ = traced_call

    stream = serving.OpenAIServing._stream_completion

    async def traced_stream(self, req, run, rid, *args, **kwargs):
        _stamp(rid + "-0", "H")
        first = True
        async for chunk in stream(self, req, run, rid, *args, **kwargs):
            if first and '"text"' in chunk:
                first = False
                _stamp(rid + "-0", "F")
            yield chunk

    serving.OpenAIServing._stream_completion = traced_stream

    asyncio_sink = engine.LLMEngine.asyncio_sink

    def traced_sink(self, loop):
        q, sink = asyncio_sink(self, loop)
        put = sink.put

        def put_first(d):
            rid = getattr(d, "request_id", None)
            if rid is not None and rid not in routed:
                routed[rid] = time.time()
            put(d)

        sink.put = put_first
        return q, sink

    engine.LLMEngine.asyncio_sink = traced_sink

    loop = os.environ.get("LLMCORE_TTFT_TRACE_LOOP")
    if loop:
        import uvicorn

        init = uvicorn.Config.__init__

        def config(self, *args, **kwargs):
            kwargs["loop"] = loop
            init(self, *args, **kwargs)

        uvicorn.Config.__init__ = config


if _PATH:
    _install()
