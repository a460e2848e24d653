"""LLMEngine: the Python face of the native engine. A router thread waits on the native output
queue (without the GIL) and hands each request's deltas to whoever consumes that request: a
thread-safe queue for blocking callers, or an asyncio queue for coroutines."""

from __future__ import annotations

import asyncio
import atexit
import itertools
import queue
import threading
import weakref
from typing import Callable, Dict, List, Optional, Tuple

from . import _C


class EngineDeadError(RuntimeError):
    """The native step loop stopped after an internal error; the engine serves no more requests."""


class _Sink:
    """Where a request's deltas go: put(delta) from the router thread."""

    def __init__(self, put: Callable[[object], None]) -> None:
        self.put = put


# Engines still open at interpreter exit are shut down before Python finalizes: a daemon router
# thread returning from native code into a finalizing interpreter would be killed mid-C++ frame.
_live_engines: "weakref.WeakSet[LLMEngine]" = weakref.WeakSet()


@atexit.register
def _shutdown_live_engines() -> None:
    for engine in list(_live_engines):
        engine.shutdown()


class LLMEngine:
    """Owns a native engine and routes its outputs per request."""

    def __init__(self, **native_kwargs) -> None:
        self._native = _C.Engine(**native_kwargs)
        self._sinks: Dict[str, _Sink] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._router = threading.Thread(target=self._route, name="llmcore-router", daemon=True)
        self._router.start()
        _live_engines.add(self)

    # -- requests ---------------------------------------------------------------------------
    def new_request_id(self) -> str:
        return str(next(self._ids))

    def add_request(self, request_id: str, prompt_token_ids: List[int], params, sink: _Sink) -> None:
        """Queues a request whose deltas go to `sink`. Raises ValueError for invalid input."""
        if not self._native.is_healthy():
            raise EngineDeadError(f"the engine has stopped: {self._native.error()}")
        with self._lock:
            if request_id in self._sinks:
                raise ValueError(f"request_id '{request_id}' is already in use")
            self._sinks[request_id] = sink
        try:
            self._native.add_request(request_id, prompt_token_ids, params)
        except BaseException:
            with self._lock:
                self._sinks.pop(request_id, None)
            raise

    def abort_request(self, request_id: str) -> None:
        """Stops a request; its final delta (finish_reason "abort") still reaches its sink."""
        self._native.abort_request(request_id)

    def abort_all(self) -> int:
        """Aborts every live request (each still gets its final "abort" delta); returns how many."""
        with self._lock:
            ids = list(self._sinks)
        for rid in ids:
            self._native.abort_request(rid)
        return len(ids)

    def queue_sink(self) -> Tuple["queue.SimpleQueue", _Sink]:
        """A thread-safe queue and the sink that feeds it."""
        q: "queue.SimpleQueue" = queue.SimpleQueue()
        return q, _Sink(q.put)

    def asyncio_sink(self, loop: asyncio.AbstractEventLoop) -> Tuple[asyncio.Queue, _Sink]:
        """An asyncio queue of `loop` and the sink that feeds it from the router thread."""
        q: asyncio.Queue = asyncio.Queue()
        return q, _Sink(lambda d: loop.call_soon_threadsafe(q.put_nowait, d))

    # -- state ------------------------------------------------------------------------------
    def get_stats(self) -> dict:
        """Scheduler and KV-cache counters: num_running, num_waiting, num_total_blocks,
        num_free_blocks, kv_cache_usage, num_preemptions, prefix_cache_queries,
        prefix_cache_hits, num_prompt_tokens, num_generation_tokens, num_steps,
        num_requests_finished, num_requests_aborted (finished by abort_request)."""
        return self._native.get_stats()

    def is_healthy(self) -> bool:
        return self._native.is_healthy()

    def has_unfinished_requests(self) -> bool:
        return self._native.has_unfinished_requests()

    @property
    def native(self):
        return self._native

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._native.shutdown()
        self._router.join(timeout=5)

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass

    # -- routing ----------------------------------------------------------------------------
    def _route(self) -> None:
        while not self._closed:
            deltas = self._native.get_outputs(0.2)
            for d in deltas:
                with self._lock:
                    sink = self._sinks.get(d.request_id)
                    if d.finished:
                        self._sinks.pop(d.request_id, None)
                if sink is not None:
                    try:
                        sink.put(d)
                    except RuntimeError:
                        # The consumer is gone (its event loop closed after it abandoned the
                        # request): drop the delta; the router must keep serving everyone else.
                        pass
            if not self._native.is_healthy() and not deltas:
                # The native loop failed every live request (their error deltas were routed
                # above); anything registered since gets the same error.
                with self._lock:
                    orphans = list(self._sinks.items())
                    self._sinks.clear()
                for _, sink in orphans:
                    try:
                        sink.put(EngineDeadError(self._native.error()))
                    except RuntimeError:
                        pass
                if self._closed or not orphans:
                    return
