"""KV-cache bookkeeping seen from outside: nothing leaks, preemption is invisible in outputs.

- After plain runs, n > 1 runs (copy-on-write of the shared prompt blocks), streaming requests
  abandoned mid-generation, and rejected requests, every block is free again.
- A cache far too small for the concurrent load (16 blocks of 16 tokens for 8 requests that each
  grow to ~8 blocks) forces preemption by recompute: num_preemptions > 0, and every output
  (greedy, and seeded sampling) equals the unconstrained engine's.
"""

from __future__ import annotations

import gc

import pytest

import fixtures


def test_fresh_engine_has_requested_cache(make_llm):
    llm = make_llm("llama_gqa", num_gpu_blocks_override=200)
    stats = llm.llm_engine.get_stats()
    assert stats["num_total_blocks"] == 200
    assert stats["num_free_blocks"] == 200
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_preemptions"] == 0


def test_blocks_free_after_runs(llm, llmcore):
    prompts = fixtures.prompt_texts(12, seed=21, max_words=40)
    llm.generate(prompts, llmcore.SamplingParams(temperature=0.0, max_tokens=20), use_tqdm=False)
    fixtures.assert_all_blocks_free(llm)

    # n > 1: the prompt's blocks are shared by the n sequences, then diverge.
    outs = llm.generate(prompts[:4], llmcore.SamplingParams(n=3, temperature=1.0, seed=5,
                                                            max_tokens=40, ignore_eos=True),
                        use_tqdm=False)
    assert all(len(o.outputs) == 3 for o in outs)
    fixtures.assert_all_blocks_free(llm)

    outs = llm.generate(prompts[4:6], llmcore.SamplingParams(n=2, temperature=0.0, max_tokens=17,
                                                             ignore_eos=True), use_tqdm=False)
    fixtures.assert_all_blocks_free(llm)


def test_blocks_free_after_stream_abort(llm, llmcore):
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    for stop_after in (1, 5, 37):
        stream = llm.generate_stream("The farmer builds a small boat", params)
        for i, snapshot in enumerate(stream):
            assert not snapshot.finished
            if i + 1 == stop_after:
                break
        stream.close()
        fixtures.assert_all_blocks_free(llm)

    # Abort an n > 1 request too, and drop the generator without closing it explicitly.
    stream = llm.generate_stream("The farmer builds a small boat",
                                 llmcore.SamplingParams(n=3, temperature=1.0, seed=1,
                                                        max_tokens=200, ignore_eos=True))
    next(stream)
    next(stream)
    del stream
    gc.collect()
    fixtures.assert_all_blocks_free(llm)

    # The engine still serves normally afterwards.
    out = llm.generate("The farmer", llmcore.SamplingParams(temperature=0.0, max_tokens=5,
                                                            ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 5


def _preemption_load(llmcore):
    prompts = fixtures.prompt_texts(8, seed=31, max_words=12)
    params = []
    for i in range(8):
        if i % 2 == 0:
            params.append(llmcore.SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True))
        else:
            params.append(llmcore.SamplingParams(temperature=1.0, seed=1000 + i, max_tokens=100,
                                                 ignore_eos=True, top_k=50))
    return prompts, params


def test_preemption_keeps_outputs(make_llm, llm, llmcore):
    prompts, params = _preemption_load(llmcore)
    ref = llm.generate(prompts, params, use_tqdm=False)

    # max_model_len 128 = 8 blocks: the engine requires the cache to hold one full sequence.
    small = make_llm("llama_gqa", num_gpu_blocks_override=16, block_size=16, max_model_len=128)
    before = small.llm_engine.get_stats()
    assert before["num_total_blocks"] == 16
    # Each request alone fits (<= 8 blocks), all 8 together would need ~64.
    for o in ref:
        assert len(o.prompt_token_ids) + 100 <= 8 * 16
    got = small.generate(prompts, params, use_tqdm=False)
    after = fixtures.assert_all_blocks_free(small)
    assert after["num_preemptions"] > before["num_preemptions"], after
    for i, (g, r) in enumerate(zip(got, ref)):
        assert list(g.outputs[0].token_ids) == list(r.outputs[0].token_ids), f"request {i}"
        assert g.outputs[0].text == r.outputs[0].text
        assert g.outputs[0].finish_reason == "length"


def test_blocks_free_after_rejected_request(llm, llmcore):
    with pytest.raises(ValueError):
        llm.generate({"prompt_token_ids": [1, 10**6]},
                     llmcore.SamplingParams(max_tokens=4), use_tqdm=False)
    # One bad prompt in a batch rejects the call; nothing half-admitted stays behind.
    with pytest.raises(ValueError):
        llm.generate(["The cat", {"prompt_token_ids": []}],
                     llmcore.SamplingParams(max_tokens=4), use_tqdm=False)
    fixtures.assert_all_blocks_free(llm)


def test_shutdown_refuses_new_requests_and_keeps_stats(llmcore, checkpoint):
    """After shutdown the engine has let go of its model and cache: new requests are refused
    with a clear error, while the stats snapshot and the tokenizer stay usable."""
    llm = llmcore.LLM(model=str(checkpoint("llama_gqa")), device="cpu", num_gpu_blocks_override=64)
    out = llm.generate("The cat", llmcore.SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3
    llm.shutdown()
    stats = llm.llm_engine.get_stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"] == 64
    assert llm.get_tokenizer().encode("The cat")
    with pytest.raises((ValueError, RuntimeError)):
        llm.generate("The cat", llmcore.SamplingParams(max_tokens=3), use_tqdm=False)


@pytest.mark.parametrize("block_size", [8, 64, 128])
def test_block_size_changes_no_output(make_llm, llm, llmcore, block_size):
    """A sequence's tokens do not depend on how its cache is cut into blocks (the same keys in
    the same order), and every block comes back."""
    prompts = fixtures.prompt_texts(6, seed=33, max_words=60)
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    ref = llm.generate(prompts, params, use_tqdm=False)
    other = make_llm("llama_gqa", num_gpu_blocks_override=4096 // block_size, block_size=block_size)
    got = other.generate(prompts, params, use_tqdm=False)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert list(g.outputs[0].token_ids) == list(r.outputs[0].token_ids), f"request {i}"
    stats = fixtures.assert_all_blocks_free(other)
    assert stats["num_total_blocks"] == 4096 // block_size


def test_block_size_outside_the_choices_refused(llmcore, checkpoint):
    for block_size in (0, 24, 256):
        with pytest.raises(ValueError, match="block_size"):
            llmcore.LLM(model=str(checkpoint("llama_gqa")), device="cpu", block_size=block_size)
