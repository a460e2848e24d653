"""Abort soak: 300 streaming requests at concurrency 32 through the server, about 30% abandoned by
their client at random points (before the response starts, or after a random number of chunks),
on the CPU backend. Every stream read to its end finishes properly (a finish_reason, then
`data: [DONE]`), nothing answers 5xx, and afterwards the engine is idle with every KV block free:
/metrics' llmcore:kv_cache_usage_perc is back to exactly its idle value. The plan of aborts comes
from a seeded RNG, so a failure reproduces.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

import fixtures
from conftest import DEFAULT_LLM_KWARGS

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from server_util import serve  # noqa: E402  (needs uvicorn)
prom_parser = pytest.importorskip("prometheus_client.parser")

MODEL = "tiny"
NUM_REQUESTS = 300
CONCURRENCY = 32
ABORT_FRACTION = 0.3
SEED = 20261121
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
          "{% endif %}")
_WORDS = ["the cat", "a dog", "my friend", "the river", "the old man", "a little girl", "walks to",
          "looks at", "the market", "the blue sea", "every morning", "after the rain"]


def _kv_usage(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in prom_parser.text_string_to_metric_families(text):
        if family.name == "llmcore:kv_cache_usage_perc":
            (sample,) = family.samples
            return sample.value
    raise AssertionError("no llmcore:kv_cache_usage_perc in /metrics")


def _plan(rng: random.Random, i: int) -> dict:
    """Request i: its body, and where (if at all) its client gives up."""
    chat = rng.random() < 0.5
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 12)))
    max_tokens = rng.randint(16, 160)
    common = {"model": MODEL, "max_tokens": max_tokens, "stream": True, "temperature": rng.choice([0.0, 1.0]),
              "seed": i, "ignore_eos": rng.random() < 0.5}
    if chat:
        path, body = "/v1/chat/completions", dict(common, messages=[{"role": "user", "content": text}])
    else:
        path, body = "/v1/completions", dict(common, prompt=text)
    abort = None
    if rng.random() < ABORT_FRACTION:
        if rng.random() < 0.3:
            abort = ("before_headers", rng.uniform(0.0, 0.5))  # seconds after sending
        else:
            abort = ("after_events", rng.randint(0, max_tokens // 2))  # data events read first
    return {"path": path, "body": body, "abort": abort}


async def _one(client: httpx.AsyncClient, url: str, plan: dict) -> dict:
    result = {"status": None, "events": [], "abandoned": False}
    abort = plan["abort"]

    async def run() -> None:
        async with client.stream("POST", url + plan["path"], json=plan["body"]) as r:
            result["status"] = r.status_code
            if abort and abort == ("after_events", 0):
                result["abandoned"] = True
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                result["events"].append(line[len("data: "):])
                if abort and abort[0] == "after_events" and len(result["events"]) >= abort[1]:
                    result["abandoned"] = True
                    return  # leaving the block closes the connection mid-stream

    if abort and abort[0] == "before_headers":
        try:
            await asyncio.wait_for(run(), timeout=abort[1])
        except asyncio.TimeoutError:
            result["abandoned"] = True
    else:
        await run()
    return result


@pytest.mark.slow
def test_abort_soak_leaves_no_leaks(llmcore, checkpoint):
    from llmcore.server import create_app

    llm = llmcore.LLM(model=str(checkpoint("llama_gqa")),
                      **dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=512, max_model_len=256, max_num_seqs=16))
    try:
        app = create_app(llm, served_model_names=[MODEL], chat_template=CHATML)
        rng = random.Random(SEED)
        plans = [_plan(rng, i) for i in range(NUM_REQUESTS)]
        num_planned_aborts = sum(p["abort"] is not None for p in plans)
        assert 0.2 * NUM_REQUESTS < num_planned_aborts < 0.4 * NUM_REQUESTS

        with serve(app) as url:
            idle_usage = _kv_usage(url)
            before = fixtures.wait_idle(llm)
            assert before["num_free_blocks"] == before["num_total_blocks"]

            async def soak() -> list:
                sem = asyncio.Semaphore(CONCURRENCY)
                limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY)
                async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                    async def limited(plan):
                        async with sem:
                            return await _one(client, url, plan)
                    return await asyncio.gather(*(limited(p) for p in plans))

            t0 = time.monotonic()
            results = asyncio.run(soak())
            elapsed = time.monotonic() - t0

            statuses = [r["status"] for r in results if r["status"] is not None]
            assert not [s for s in statuses if s >= 500], statuses
            assert set(statuses) == {200}
            completed = [r for r in results if not r["abandoned"]]
            abandoned = [r for r in results if r["abandoned"]]
            assert len(abandoned) >= num_planned_aborts // 2  # most planned aborts happen mid-request
            for r in completed:
                events = r["events"]
                assert events[-1] == "[DONE]", events[-3:]
                chunks = [json.loads(e) for e in events[:-1]]
                assert not [c for c in chunks if "error" in c], chunks
                reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
                assert len(reasons) == 1 and reasons[0] in ("length", "stop"), reasons

            # Back to idle: every block free, the gauge exactly at its idle value.
            after = fixtures.assert_all_blocks_free(llm, timeout_s=30)
            deadline = time.monotonic() + 10
            while _kv_usage(url) != idle_usage and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _kv_usage(url) == idle_usage == 0.0
            assert app.state.serving.num_in_flight == 0
            assert not llm.llm_engine.has_unfinished_requests()
            assert httpx.get(url + "/health", timeout=10).status_code == 200

        # Every request the engine saw finished; the aborted ones by abort.
        finished = after["num_requests_finished"] - before["num_requests_finished"]
        aborted = after["num_requests_aborted"] - before["num_requests_aborted"]
        assert len(completed) <= finished <= NUM_REQUESTS
        assert finished - aborted >= len(completed)
        assert 0 < aborted <= len(abandoned)
        print(f"soak: {NUM_REQUESTS} requests, {len(abandoned)} abandoned, {aborted} aborted in the engine, "
              f"{elapsed:.1f} s")
    finally:
        llm.shutdown()
