"""AsyncLLM: the asyncio interface to the native engine (what the server builds on)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, List, Optional, Union

from .engine import EngineDeadError, LLMEngine
from .outputs import RequestOutput, RequestState


class AsyncLLM:
    """Streams requests from coroutines. Wraps an LLMEngine (e.g. ``LLM(...).llm_engine``)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine

    async def generate(
        self,
        prompt_token_ids: List[int],
        sampling_params,
        request_id: Optional[str] = None,
        prompt: Optional[str] = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields a cumulative RequestOutput after each engine step that changed the request.
        Cancelling the consumer (or closing the generator) aborts the request.
        Raises ValueError at once for invalid input."""
        loop = asyncio.get_running_loop()
        q, sink = self.engine.asyncio_sink(loop)
        rid = request_id if request_id is not None else self.engine.new_request_id()
        self.engine.add_request(rid, prompt_token_ids, sampling_params, sink)
        st = RequestState(rid, prompt, prompt_token_ids, sampling_params)
        try:
            while not st.output.finished:
                delta = await q.get()
                if isinstance(delta, Exception):
                    raise delta
                st.apply(delta)
                if st.output.error:  # only the step loop's death fails a request
                    raise EngineDeadError(f"request {rid} failed in the engine: {st.output.error}")
                yield st.snapshot()
        finally:
            if not st.output.finished:
                self.engine.abort_request(rid)

    async def abort(self, request_id: Union[str, List[str]]) -> None:
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            self.engine.abort_request(rid)
