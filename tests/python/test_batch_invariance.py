"""Greedy output does not depend on batch composition, prefix-cache hits or chunked prefill.

The reference is each prompt run alone on an engine without prefix caching. The same 64
mixed-length prompts (some sharing a long common prefix, so running requests share cached
blocks) must then give identical tokens, text and (to 1e-4) logprobs:
  - all together in one batch, on the default engine;
  - again on that engine, now served from the prefix cache (prefix_cache_hits must grow);
  - on an engine whose token budget (8) forces every prompt longer than 8 tokens to be
    prefilled in chunks, interleaved with other requests' decodes.
"""

from __future__ import annotations

import pytest

import fixtures

NUM_PROMPTS = 64


def _prompts():
    texts = fixtures.prompt_texts(NUM_PROMPTS - 16, seed=11, max_words=50)
    shared = " ".join(fixtures.prompt_texts(3, seed=5, max_words=20))  # ~3 blocks
    texts += [shared + " " + t for t in fixtures.prompt_texts(12, seed=13, max_words=8)]
    texts += [shared] * 2
    # Block-aligned prompts (16 and 32 tokens): on the second run the whole prompt is cached and
    # the engine must still recompute the last position to get logits.
    ids = [[fixtures.BOS_ID] + [(17 * i + 5 * j) % 500 + 3 for j in range(16 * (i + 1) - 1)]
           for i in range(2)]
    prompts = texts + [{"prompt_token_ids": x} for x in ids]
    assert len(prompts) == NUM_PROMPTS
    return prompts


def _params(llmcore):
    # Different lengths so requests finish at different steps and new ones join mid-flight;
    # half stop at EOS if the model emits it.
    return [llmcore.SamplingParams(temperature=0.0, max_tokens=8 + (i * 5) % 17,
                                   ignore_eos=(i % 2 == 0), logprobs=1)
            for i in range(NUM_PROMPTS)]


def _summary(out):
    comp = out.outputs[0]
    return (list(out.prompt_token_ids), list(comp.token_ids), comp.text, comp.finish_reason)


def _assert_same(got, ref, label):
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert _summary(g) == _summary(r), f"{label}: prompt {i} differs from the solo run"
        for j, (a, b) in enumerate(zip(g.outputs[0].logprobs, r.outputs[0].logprobs)):
            tok = g.outputs[0].token_ids[j]
            assert a[tok].logprob == pytest.approx(b[tok].logprob, abs=1e-4), (label, i, j)


@pytest.fixture(scope="module")
def solo(make_llm, llmcore):
    llm = make_llm("llama_gqa", enable_prefix_caching=False)
    return [llm.generate(p, sp, use_tqdm=False)[0] for p, sp in zip(_prompts(), _params(llmcore))]


def test_solo_runs_are_sane(solo):
    lengths = {len(o.outputs[0].token_ids) for o in solo}
    assert len(lengths) > 5  # mixed output lengths really were exercised
    assert len({len(o.prompt_token_ids) for o in solo}) > 20


def test_batch_and_prefix_cache(solo, llm, llmcore):
    batch = llm.generate(_prompts(), _params(llmcore), use_tqdm=False)
    _assert_same(batch, solo, "batch of 64")

    before = llm.llm_engine.get_stats()
    again = llm.generate(_prompts(), _params(llmcore), use_tqdm=False)
    after = llm.llm_engine.get_stats()
    _assert_same(again, solo, "second run (prefix cache)")
    assert after["prefix_cache_queries"] > before["prefix_cache_queries"]
    assert after["prefix_cache_hits"] > before["prefix_cache_hits"], (before, after)
    fixtures.assert_all_blocks_free(llm)


def test_chunked_prefill(solo, make_llm, llmcore):
    llm = make_llm("llama_gqa", max_num_batched_tokens=8, max_num_seqs=8,
                   enable_chunked_prefill=True)
    before = llm.llm_engine.get_stats()
    batch = llm.generate(_prompts(), _params(llmcore), use_tqdm=False)
    _assert_same(batch, solo, "chunked prefill (budget 8)")
    after = fixtures.assert_all_blocks_free(llm)
    if "num_steps" in after:  # at most 8 tokens a step: the prompts alone take >= total / 8 steps
        num_prompt_tokens = sum(len(o.prompt_token_ids) for o in batch)
        assert after["num_steps"] - before["num_steps"] >= num_prompt_tokens / 8


def test_mixed_order_is_input_order(llm, llmcore):
    """Outputs come back in input order even when short requests finish first."""
    prompts = _prompts()[:10]
    params = [llmcore.SamplingParams(temperature=0.0, max_tokens=20 - i, ignore_eos=True)
              for i in range(10)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [20 - i for i in range(10)]
    assert len({o.request_id for o in outs}) == 10
    for o, p in zip(outs, prompts):
        if isinstance(p, str):
            assert o.prompt == p
