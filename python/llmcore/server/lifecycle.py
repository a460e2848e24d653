"""The server's life after start-up: draining on SIGTERM/SIGINT, exiting when the engine dies,
and aborting the engine work of clients that hang up.

States: serving -> draining (a signal) -> exit 0, or serving/draining -> engine dead -> exit 4.
While draining, requests already in flight run to completion for up to `shutdown_timeout`
seconds; new ones get 503 + Retry-After (the listener stays open, so clients and load balancers
get an answer rather than a refused connection) and /health answers 503. At the deadline every
engine request still live is aborted, so each client still gets a final chunk (finish_reason
"abort") or response, and the process exits 0. When the native step loop dies, its in-flight
requests get an error (503 or an SSE error event) and the process exits with ENGINE_DEAD_EXIT_CODE
instead of serving 503s forever; a supervisor restarts it.

uvicorn's own signal handling is kept, with its exit replaced: `LifecycleServer.handle_exit`
starts the drain instead of stopping at once, and `on_tick` (uvicorn's 0.1 s main-loop tick)
decides when to stop. A second signal ends the drain at once (abort what remains, then exit).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from typing import Any, Awaitable, Optional, Sequence, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .errors import APIError

logger = logging.getLogger("uvicorn.error")

T = TypeVar("T")

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
# Exit status after the engine died. Not 3: uvicorn exits 3 when it cannot start (port in use).
ENGINE_DEAD_EXIT_CODE = 4
# After the drain deadline's aborts, or after the engine died: how long requests still in flight
# get to send their last bytes before the server stops anyway.
FINAL_GRACE_S = 5.0
# Status logged for a request whose client left before its response (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client hung up before the response was ready; its engine requests were aborted."""


class ServerLifecycle:
    """Serving, draining or engine-dead; counts the HTTP requests in flight (through LifecycleGate)
    and says, at each tick, whether the server should stop now."""

    SERVING, DRAINING, ENGINE_DEAD = "serving", "draining", "engine_dead"

    def __init__(self, engine, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
                 retry_after_s: int = 1) -> None:
        if not (shutdown_timeout >= 0 and math.isfinite(shutdown_timeout)):
            raise ValueError(f"shutdown_timeout must be a finite number of seconds >= 0; got {shutdown_timeout}")
        self.engine = engine
        self.shutdown_timeout = float(shutdown_timeout)
        self.retry_after_s = retry_after_s
        self.state = self.SERVING
        self.num_active = 0  # HTTP requests admitted by the gate and not yet answered
        self.exit_code = 0
        # Set from a signal handler (so only plain assignments there); read at each tick.
        self._drain_reason: Optional[str] = None
        self._num_signals = 0
        self._deadline = math.inf
        self._final_deadline = math.inf  # stop even with requests in flight after this

    # -- called from uvicorn's signal handler: flags only -----------------------------------
    def request_drain(self, reason: str) -> None:
        """Starts the drain at the next tick; a second call ends it at once."""
        self._num_signals += 1
        self._drain_reason = reason

    # -- state --------------------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        return self.state == self.SERVING

    def healthy(self) -> bool:
        """What /health reports: serving and the engine alive."""
        return self.accepting and self.engine.is_healthy()

    def refusal(self) -> APIError:
        """The 503 for a request arriving while the server is not accepting work."""
        if self.state == self.ENGINE_DEAD:
            return APIError(503, f"the engine has stopped: {self.engine.native.error()}", type="server_error",
                            code="engine_dead")
        return APIError(503, "the server is shutting down and accepts no new requests; "
                             f"retry after {self.retry_after_s} s (on another replica or after the restart)",
                        type="server_error", code="shutting_down",
                        headers={"Retry-After": str(self.retry_after_s)})

    # -- the tick -----------------------------------------------------------------------------
    def poll(self, now: Optional[float] = None) -> bool:
        """Advances the state machine; True when the server should stop now."""
        now = time.monotonic() if now is None else now
        if self.state != self.ENGINE_DEAD and not self.engine.is_healthy():
            self.state = self.ENGINE_DEAD
            self.exit_code = ENGINE_DEAD_EXIT_CODE
            self._final_deadline = now + FINAL_GRACE_S
            logger.error("the engine has stopped (%s); answering %d request(s) in flight with errors and exiting "
                         "with status %d", self.engine.native.error(), self.num_active, ENGINE_DEAD_EXIT_CODE)
        if self.state == self.SERVING and self._drain_reason is not None:
            self.state = self.DRAINING
            self._deadline = now + self.shutdown_timeout
            logger.info("%s: draining %d request(s) in flight for up to %.1f s (--shutdown-timeout); "
                        "new requests get 503", self._drain_reason, self.num_active, self.shutdown_timeout)
        if self.state == self.SERVING:
            return False
        if self.state == self.DRAINING:
            if self._num_signals > 1 and self._deadline > now:
                logger.info("second signal: ending the drain now")
                self._deadline = now
            if now >= self._deadline and self.num_active > 0:
                # Every tick, so a request admitted before the drain that reaches the engine
                # only now is aborted too; each client still gets its final chunk/response.
                num_aborted = self.engine.abort_all()
                if self._final_deadline == math.inf:
                    logger.warning("drain deadline reached: aborted %d engine request(s)", num_aborted)
                    self._final_deadline = now + FINAL_GRACE_S
        if self.num_active == 0:
            return True
        if now >= self._final_deadline:
            logger.warning("stopping with %d request(s) still in flight", self.num_active)
            return True
        return False


class LifecycleGate:
    """ASGI middleware: counts the requests in flight and refuses new ones (503) once the server
    is draining or the engine is dead. `open_paths` (/health, /metrics, ...) always pass and are
    not counted: probes keep working during a drain and do not hold it up."""

    def __init__(self, app, lifecycle: ServerLifecycle, open_paths: Sequence[str] = ()) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        if not self.lifecycle.accepting:
            await self.lifecycle.refusal().response()(scope, receive, send)
            return
        self.lifecycle.num_active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.lifecycle.num_active -= 1


async def _wait_disconnect(request: Request) -> None:
    # The body has been read: the next message uvicorn delivers is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Runs `work` (a handler's coroutine) unless the client hangs up first: then `work` is
    cancelled, which aborts its engine requests and frees their KV blocks (their cleanup is
    synchronous), and ClientDisconnected is raised. Streams are watched by Starlette once their
    response starts; this covers non-streamed responses and the wait for a stream's first output."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server cancelled this handler (forced shutdown)
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # CancelledError, or the error it raised while being cancelled
        pass
    raise ClientDisconnected()


class LifecycleServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM/SIGINT drains (ServerLifecycle) instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, lifecycle: ServerLifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: Any) -> None:
        # The signal is not recorded in _captured_signals: uvicorn would raise it again after
        # shutting down and the process would die by it instead of exiting with exit_code.
        self.lifecycle.request_drain(signal.Signals(sig).name)

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        return self.lifecycle.poll() or should_exit


def install_lifecycle(app: FastAPI, engine, open_paths: Sequence[str],
                      shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S, retry_after_s: int = 1) -> ServerLifecycle:
    """Adds the gate middleware and the ClientDisconnected handler to `app`; returns the lifecycle
    (also app.state.lifecycle) that LifecycleServer drives."""
    lifecycle = ServerLifecycle(engine, shutdown_timeout=shutdown_timeout, retry_after_s=retry_after_s)
    app.state.lifecycle = lifecycle
    app.add_middleware(LifecycleGate, lifecycle=lifecycle, open_paths=open_paths)

    @app.exception_handler(ClientDisconnected)
    async def _client_disconnected(_: Request, __: ClientDisconnected) -> Response:
        # Nobody reads this; it only shows up in the access log.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    return lifecycle
