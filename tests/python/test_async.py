"""AsyncLLM (the asyncio interface the server builds on) and min_tokens holding back stop strings."""

from __future__ import annotations

import asyncio

import pytest


def _params(llmcore, **kw):
    base = dict(temperature=0.0, max_tokens=12, ignore_eos=True)
    base.update(kw)
    return llmcore.SamplingParams(**base)


def test_async_generate_matches_offline(llm, llmcore):
    """Concurrent coroutines each get the same final output as LLM.generate gives."""
    tok = llm.get_tokenizer()
    prompts = ["The cat walks to", "A dog looks at the house", "Numbers like 12"]
    expected = [o.outputs[0] for o in llm.generate(prompts, _params(llmcore), use_tqdm=False)]
    engine = llmcore.AsyncLLM(llm.llm_engine)

    async def one(prompt):
        last = None
        async for out in engine.generate(tok.encode(prompt), _params(llmcore), prompt=prompt):
            if last is not None:  # snapshots only grow
                assert out.outputs[0].token_ids[: len(last.outputs[0].token_ids)] == last.outputs[0].token_ids
            last = out
        return last

    async def main():
        return await asyncio.gather(*(one(p) for p in prompts))

    finals = asyncio.run(main())
    for final, exp in zip(finals, expected):
        assert final.finished
        assert final.outputs[0].token_ids == exp.token_ids
        assert final.outputs[0].text == exp.text


def test_async_cancel_aborts_and_frees_blocks(llm, llmcore):
    tok = llm.get_tokenizer()
    engine = llmcore.AsyncLLM(llm.llm_engine)

    async def consume_two():
        agen = engine.generate(tok.encode("The farmer finds"), _params(llmcore, max_tokens=200))
        n = 0
        async for _ in agen:
            n += 1
            if n == 2:
                break
        await agen.aclose()
        return n

    assert asyncio.run(consume_two()) == 2
    stats = llm.llm_engine.get_stats()
    # The abort is processed by the engine thread; wait for it to land.
    import time

    deadline = time.time() + 10
    while time.time() < deadline and (stats["num_running"] or stats["num_free_blocks"] != stats["num_total_blocks"]):
        time.sleep(0.01)
        stats = llm.llm_engine.get_stats()
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_async_invalid_request_raises_at_once(llm, llmcore):
    engine = llmcore.AsyncLLM(llm.llm_engine)

    async def bad():
        async for _ in engine.generate([10**9], _params(llmcore)):
            pass

    with pytest.raises(ValueError, match="prompt_token_ids"):
        asyncio.run(bad())


def test_min_tokens_holds_back_stop_strings(llm, llmcore):
    """A stop string that appears before min_tokens outputs exist does not stop the sequence
    (vLLM: only max_tokens can end a sequence before min_tokens)."""
    plain = llm.generate("The cat walks to", _params(llmcore, max_tokens=16), use_tqdm=False)[0].outputs[0]
    text = plain.text
    assert len(text) >= 4
    stop = text[1:3]  # occurs within the first few tokens
    early = llm.generate("The cat walks to", _params(llmcore, max_tokens=16, stop=[stop]), use_tqdm=False)[0]
    assert early.outputs[0].finish_reason == "stop" and len(early.outputs[0].token_ids) < 16
    held = llm.generate("The cat walks to", _params(llmcore, max_tokens=16, stop=[stop], min_tokens=16),
                        use_tqdm=False)[0].outputs[0]
    assert held.token_ids == plain.token_ids
    assert held.finish_reason == "length"


def test_engine_serves_after_async_consumer_is_gone(llm, llmcore):
    """A request abandoned by a coroutine whose event loop has closed still gets its final
    (abort) delta routed somewhere; the router must survive it and keep serving others."""
    import threading

    tok = llm.get_tokenizer()
    engine = llmcore.AsyncLLM(llm.llm_engine)

    async def abandon():
        agen = engine.generate(tok.encode("The doctor"), _params(llmcore, max_tokens=100))
        async for _ in agen:
            break
        await agen.aclose()

    asyncio.run(abandon())  # the loop is closed before the abort's delta arrives
    result = {}

    def offline():
        result["out"] = llm.generate("The doctor", _params(llmcore, max_tokens=4), use_tqdm=False)

    t = threading.Thread(target=offline, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the engine stopped routing outputs after an abandoned async request"
    assert len(result["out"][0].outputs[0].token_ids) == 4
