"""The client side of benchmarks/serving.py: streamed OpenAI requests over one connection pool
(aiohttp, else httpx), server-sent events, and each request's timings as vLLM's
benchmark_serving records them (TTFT, inter-token latencies, end-to-end latency, token counts)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

HTTP_TIMEOUT_S = 6 * 3600  # vLLM's client timeout: a request may wait behind a long queue


@dataclass
class RequestResult:
    """What one streamed request measured; failures keep their error and are left out of the metrics."""

    success: bool = False
    error: str = ""
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # s
    itl: List[float] = field(default_factory=list)  # s between token-carrying chunks after the first
    latency: float = 0.0  # s, send -> [DONE]
    start: float = 0.0  # s after the benchmark began


# -- HTTP -------------------------------------------------------------------------------------
class RequestError(Exception):
    """A request the server refused, or a stream that broke off."""


class StreamClient:
    """One connection pool for every request; `lines` yields a streamed response's text lines."""

    def __init__(self, kind: str, headers: Dict[str, str]) -> None:
        self.kind = kind
        if kind == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=0))
        else:
            import httpx

            self._session = httpx.AsyncClient(
                headers=headers, timeout=httpx.Timeout(HTTP_TIMEOUT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    async def lines(self, url: str, payload: Dict[str, Any]) -> AsyncIterator[str]:
        if self.kind == "aiohttp":
            async with self._session.post(url, json=payload) as resp:
                if resp.status != 200:
                    raise RequestError(f"HTTP {resp.status}: {(await resp.text())[:500]}")
                async for raw in resp.content:
                    yield raw.decode("utf-8").rstrip("\r\n")
        else:
            async with self._session.stream("POST", url, json=payload) as resp:
                if resp.status_code != 200:
                    raise RequestError(f"HTTP {resp.status_code}: {(await resp.aread()).decode()[:500]}")
                async for line in resp.aiter_lines():
                    yield line

    async def close(self) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()


def pick_client(choice: str) -> str:
    for kind in (["aiohttp", "httpx"] if choice == "auto" else [choice]):
        try:
            __import__(kind)
            return kind
        except ImportError:
            pass
    raise SystemExit(f"error: no HTTP client: pip install {'aiohttp' if choice == 'auto' else choice}")


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event (its data: lines joined), as the SSE spec assembles them."""
    data: List[str] = []
    async for line in lines:
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        elif not line and data:
            yield "\n".join(data)
            data = []
    if data:
        yield "\n".join(data)


def carries_tokens(chunk: Dict[str, Any], chat: bool) -> bool:
    choices = chunk.get("choices") or []
    if not choices:
        return False  # the usage chunk
    if chat:
        delta = choices[0].get("delta") or {}
        return not (delta.get("role") and not delta.get("content"))  # the role-only opener
    return True


def http_get(url: str, headers: Dict[str, str], timeout: float = 10.0) -> Tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# -- one request ------------------------------------------------------------------------------
async def send_request(client: StreamClient, url: str, payload: Dict[str, Any], chat: bool,
                       sent_len: int, t_start: float) -> RequestResult:
    out = RequestResult(prompt_len=sent_len)
    st = time.perf_counter()
    out.start = st - t_start
    last, num_chunks, usage, done = st, 0, None, False
    try:
        async for data in sse_events(client.lines(url, payload)):
            now = time.perf_counter()
            if data == "[DONE]":
                out.latency = now - st
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise RequestError(f"error event: {chunk['error'].get('message')}")
            usage = chunk.get("usage") or usage
            if carries_tokens(chunk, chat):
                if num_chunks == 0:
                    out.ttft = now - st
                else:
                    out.itl.append(now - last)
                last = now
                num_chunks += 1
        if not done:
            raise RequestError("the stream ended without [DONE]")
        if num_chunks == 0:
            raise RequestError("the stream carried no tokens")
        out.output_tokens = usage["completion_tokens"] if usage else num_chunks
        out.prompt_len = usage["prompt_tokens"] if usage else sent_len
        out.success = True
    except Exception as e:  # recorded per request, as vLLM does; the run goes on
        out.error = f"{type(e).__name__}: {e}"
    return out


async def run_requests(payloads: List[Tuple[Dict[str, Any], int]], url: str, chat: bool, client_kind: str,
                       headers: Dict[str, str], max_concurrency: Optional[int] = None,
                       arrivals: Optional[List[float]] = None,
                       progress: bool = False) -> Tuple[List[RequestResult], float]:
    """POSTs each (payload, prompt tokens sent) to `url` at `arrivals` (s after the start; None: all
    at once) with at most max_concurrency in flight -> (results in order, seconds from the first
    send to the last response)."""
    client = StreamClient(client_kind, headers)
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(payloads), file=sys.stderr)
        except ImportError:
            pass

    async def one(payload: Dict[str, Any], sent_len: int, t_start: float) -> RequestResult:
        if sem is None:
            res = await send_request(client, url, payload, chat, sent_len, t_start)
        else:
            async with sem:
                res = await send_request(client, url, payload, chat, sent_len, t_start)
        if bar is not None:
            bar.update(1)
        return res

    try:
        t0 = time.perf_counter()
        tasks = []
        for (payload, sent_len), at in zip(payloads, arrivals or [0.0] * len(payloads)):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payload, sent_len, t0)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    finally:
        await client.close()
        if bar is not None:
            bar.close()
    return list(results), duration
