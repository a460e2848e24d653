"""LLM.generate_stream: cumulative snapshots that only grow, end equal to LLM.generate, hold
back text that may become a stop string, and abort the request when the consumer stops early."""

from __future__ import annotations

import pytest

import fixtures


def _greedy(llmcore, **kw):
    base = dict(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)
    base.update(kw)
    return llmcore.SamplingParams(**base)


def _assert_grows(snapshots):
    assert snapshots, "no snapshots"
    assert snapshots[-1].finished
    assert not any(s.finished for s in snapshots[:-1])
    n = len(snapshots[0].outputs)
    for prev, cur in zip(snapshots, snapshots[1:]):
        assert len(cur.outputs) == n
        for a, b in zip(prev.outputs, cur.outputs):
            assert list(b.token_ids[:len(a.token_ids)]) == list(a.token_ids)
            assert b.text.startswith(a.text), (a.text, b.text)
            if a.logprobs is not None:
                assert len(a.logprobs) == len(a.token_ids)
                assert b.logprobs[:len(a.logprobs)] == a.logprobs
    # Something new arrives in (almost) every snapshot: a stream of identical snapshots would
    # still "grow monotonically".
    sizes = [sum(len(c.token_ids) for c in s.outputs) for s in snapshots]
    assert len(set(sizes)) >= len(sizes) - 1, sizes


def _same_output(a, b):
    assert list(a.prompt_token_ids) == list(b.prompt_token_ids)
    assert len(a.outputs) == len(b.outputs)
    for x, y in zip(a.outputs, b.outputs):
        assert list(x.token_ids) == list(y.token_ids)
        assert x.text == y.text
        assert x.finish_reason == y.finish_reason
        assert x.stop_reason == y.stop_reason
        if x.cumulative_logprob is not None:
            assert x.cumulative_logprob == pytest.approx(y.cumulative_logprob, abs=1e-5)


def test_stream_matches_generate(llm, llmcore):
    prompt = "The old man remembers the long road"
    snapshots = list(llm.generate_stream(prompt, _greedy(llmcore)))
    _assert_grows(snapshots)
    assert len(snapshots) >= 10  # streamed, not delivered in one piece
    final = snapshots[-1]
    assert final.prompt == prompt
    ref = llm.generate(prompt, _greedy(llmcore), use_tqdm=False)[0]
    _same_output(final, ref)
    assert len(final.outputs[0].token_ids) == 20
    assert final.outputs[0].finish_reason == "length"
    fixtures.assert_all_blocks_free(llm)


def test_stream_n2_and_token_prompt(llm, llmcore):
    params = llmcore.SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12, ignore_eos=True)
    prompt = {"prompt_token_ids": [1, 40, 41, 42, 43, 44]}
    snapshots = list(llm.generate_stream(prompt, params))
    _assert_grows(snapshots)
    _same_output(snapshots[-1], llm.generate(prompt, params, use_tqdm=False)[0])


def test_stream_eos_stop(llm, llmcore):
    params = _greedy(llmcore, ignore_eos=False, min_tokens=3, logit_bias={fixtures.EOS_ID: 100.0})
    snapshots = list(llm.generate_stream("A bird sings", params))
    _assert_grows(snapshots)
    final = snapshots[-1].outputs[0]
    assert final.finish_reason == "stop" and final.token_ids[-1] == fixtures.EOS_ID


def test_stream_holds_back_stop_string(llm, llmcore, sp):
    ban = {int(t): -100.0 for t in fixtures.byte_token_ids(sp) + [0, 1, 2]}
    prompt = "The children watch the tall tree"
    full = llm.generate(prompt, _greedy(llmcore, max_tokens=30, logit_bias=ban), use_tqdm=False)[0]
    text = full.outputs[0].text
    stop = text[12:16]
    assert len(stop) == 4
    cut = text.find(stop)
    snapshots = list(llm.generate_stream(prompt, _greedy(llmcore, max_tokens=30, logit_bias=ban,
                                                         stop=[stop])))
    _assert_grows(snapshots)
    for s in snapshots:
        assert stop not in s.outputs[0].text, "a snapshot showed (part of) the stop string"
        assert text[:cut].startswith(s.outputs[0].text)
    final = snapshots[-1].outputs[0]
    assert final.text == text[:cut]
    assert final.finish_reason == "stop" and final.stop_reason == stop


def test_break_aborts(llm, llmcore):
    params = _greedy(llmcore, max_tokens=300)
    stream = llm.generate_stream("The doctor reads about the bridge", params)
    seen = []
    for snapshot in stream:
        seen.append(snapshot)
        if len(seen) == 3:
            break
    stream.close()
    assert len(seen[-1].outputs[0].token_ids) < 300
    fixtures.assert_all_blocks_free(llm)


def test_stream_alongside_generate(llm, llmcore):
    """A live stream does not disturb a generate call made while it runs, and vice versa."""
    prompt_a, prompt_b = "The river follows the road", "Her brother paints the house"
    ref_a = llm.generate(prompt_a, _greedy(llmcore, max_tokens=40), use_tqdm=False)[0]
    ref_b = llm.generate(prompt_b, _greedy(llmcore), use_tqdm=False)[0]

    stream = llm.generate_stream(prompt_a, _greedy(llmcore, max_tokens=40))
    first = next(stream)
    got_b = llm.generate(prompt_b, _greedy(llmcore), use_tqdm=False)[0]
    _same_output(got_b, ref_b)
    rest = [first] + list(stream)
    _assert_grows(rest)
    _same_output(rest[-1], ref_a)

    # Two streams consumed alternately, one abandoned half way.
    s1 = llm.generate_stream(prompt_a, _greedy(llmcore, max_tokens=40))
    s2 = llm.generate_stream(prompt_b, _greedy(llmcore, max_tokens=200))
    snaps1 = []
    for i, snap in enumerate(s1):
        snaps1.append(snap)
        if i < 5:
            next(s2)
        elif i == 5:
            s2.close()
    _same_output(snaps1[-1], ref_a)
    fixtures.assert_all_blocks_free(llm)
