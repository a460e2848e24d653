"""Sampling parameters end to end, each checked against an independent computation.

Penalties, logit_bias and min_tokens: llmcore's greedy output is teacher-forced through the HF
model, the vLLM formula is applied in numpy to HF's raw logits, and llmcore's pick must be the
argmax of that wherever the processed top-2 margin is > 1e-2 (and the processing must have
changed at least one pick, so a no-op implementation fails). Temperature / top-k / top-p / min-p:
1000 seeded samples of one step must stay inside the support the formula allows and follow its
probabilities. Stop strings are chosen to straddle token boundaries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fixtures

MARGIN = 1e-2
TOL = 1e-3

PROMPTS = [
    "The cat walks to the house and the cat walks to the house",
    "A little girl finds an old letter",
    "The captain watches the blue sea, the blue sea, the blue sea",
    "Numbers like 12, 345 and 6789 appear too.",
]


def _greedy(llm, llmcore, prompts, max_tokens=24, **kw):
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)
    return llm.generate(prompts, params, use_tqdm=False)


# ---------------------------------------------------------------------------------------------
# n, seeds, top_k=1

def test_n_greedy_identical(llm, llmcore):
    out = llm.generate(PROMPTS[1], llmcore.SamplingParams(n=3, temperature=0.0, max_tokens=16,
                                                          ignore_eos=True), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    single = _greedy(llm, llmcore, PROMPTS[1], max_tokens=16, ignore_eos=True)[0].outputs[0]
    for c in out.outputs:
        assert list(c.token_ids) == list(single.token_ids)
        assert c.text == single.text


def test_n_seeded_reproducible(llm, llmcore):
    params = llmcore.SamplingParams(n=4, temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    a = llm.generate(PROMPTS[0], params, use_tqdm=False)[0]
    b = llm.generate(PROMPTS[0], params, use_tqdm=False)[0]
    assert len(a.outputs) == 4
    seqs_a = [tuple(c.token_ids) for c in a.outputs]
    assert seqs_a == [tuple(c.token_ids) for c in b.outputs]
    assert [c.text for c in a.outputs] == [c.text for c in b.outputs]
    assert len(set(seqs_a)) > 1, "n=4 at temperature 1 gave 4 identical samples"


def test_seed_alone_vs_batch(llm, llmcore):
    seeded = llmcore.SamplingParams(temperature=1.0, seed=77, max_tokens=20, ignore_eos=True)
    alone = llm.generate(PROMPTS[2], seeded, use_tqdm=False)[0].outputs[0]
    others = [llmcore.SamplingParams(temperature=0.9, max_tokens=5 + i, ignore_eos=True)
              for i in range(6)]
    batch_prompts = fixtures.prompt_texts(6, seed=41) + [PROMPTS[2]]
    outs = llm.generate(batch_prompts, others + [seeded], use_tqdm=False)
    assert list(outs[-1].outputs[0].token_ids) == list(alone.token_ids)
    assert outs[-1].outputs[0].text == alone.text


def test_different_seeds_differ(llm, llmcore):
    differ = 0
    for prompt in PROMPTS:
        a, b = llm.generate([prompt, prompt],
                            [llmcore.SamplingParams(temperature=1.0, seed=s, max_tokens=12,
                                                    ignore_eos=True) for s in (1, 2)],
                            use_tqdm=False)
        differ += a.outputs[0].token_ids != b.outputs[0].token_ids
    assert differ >= 1


def test_top_k_1_is_greedy(llm, llmcore):
    greedy = _greedy(llm, llmcore, PROMPTS, max_tokens=16, ignore_eos=True)
    topk1 = llm.generate(PROMPTS, llmcore.SamplingParams(temperature=1.0, top_k=1, max_tokens=16,
                                                         ignore_eos=True), use_tqdm=False)
    for g, t in zip(greedy, topk1):
        assert list(g.outputs[0].token_ids) == list(t.outputs[0].token_ids)


# ---------------------------------------------------------------------------------------------
# Logprobs under sampling: raw (unprocessed) log_softmax, cumulative sum, ranks

def test_sampled_logprobs_are_raw(llm, llmcore, hf_model):
    model = hf_model("llama_gqa")
    params = llmcore.SamplingParams(n=2, temperature=1.3, top_k=40, seed=9, max_tokens=20,
                                    ignore_eos=True, logprobs=3, repetition_penalty=1.3)
    ranks = []
    for out in llm.generate(PROMPTS[:2], params, use_tqdm=False):
        for comp in out.outputs:
            ids = list(out.prompt_token_ids) + list(comp.token_ids)
            ref = fixtures.log_softmax(fixtures.hf_logits(model, ids))
            total = 0.0
            for j, tok in enumerate(comp.token_ids):
                row = ref[len(out.prompt_token_ids) + j - 1]
                fixtures.check_position_logprobs(comp.logprobs[j], row, tok, 3, TOL, f"step {j}")
                ranks.append(comp.logprobs[j][tok].rank)
                total += comp.logprobs[j][tok].logprob
            assert comp.cumulative_logprob == pytest.approx(total, abs=1e-4)
    assert max(ranks) > 3, "sampling never picked a token outside the top-3; test is vacuous"


# ---------------------------------------------------------------------------------------------
# Penalties and logit_bias against numpy on HF logits

def _processed_logits(logits, prompt_ids, out_prefix, kw, vocab):
    """vLLM's greedy-path processing of one step's raw logits (float64)."""
    x = logits.copy()
    for tid, b in (kw.get("logit_bias") or {}).items():
        x[tid] += b
    if len(out_prefix) < kw.get("min_tokens", 0):
        x[fixtures.EOS_ID] = -np.inf
        for tid in kw.get("stop_token_ids") or []:
            x[tid] = -np.inf
    counts = np.bincount(np.asarray(out_prefix, dtype=np.int64), minlength=vocab).astype(np.float64)
    rep = kw.get("repetition_penalty", 1.0)
    if rep != 1.0:
        seen = counts > 0
        seen[np.asarray(prompt_ids, dtype=np.int64)] = True
        x = np.where(seen, np.where(x > 0, x / rep, x * rep), x)
    x -= kw.get("frequency_penalty", 0.0) * counts
    x -= kw.get("presence_penalty", 0.0) * (counts > 0)
    return x


def _penalty_cases():
    rng = np.random.default_rng(3)
    boost = {int(t): 4.0 for t in rng.choice(np.arange(3, 512), size=25, replace=False)}
    return {
        "repetition_1.6": dict(repetition_penalty=1.6),
        "repetition_0.6": dict(repetition_penalty=0.6),
        "frequency_1.5": dict(frequency_penalty=1.5),
        "frequency_-1.0": dict(frequency_penalty=-1.0),
        "presence_1.5": dict(presence_penalty=1.5),
        "presence_-1.5": dict(presence_penalty=-1.5),
        "frequency+presence": dict(frequency_penalty=0.7, presence_penalty=0.9),
        "logit_bias": dict(logit_bias=boost),
    }


@pytest.mark.parametrize("case", list(_penalty_cases()))
def test_penalties_match_formula(case, llm, llmcore, hf_model):
    kw = _penalty_cases()[case]
    model = hf_model("llama_gqa")
    outs = _greedy(llm, llmcore, PROMPTS, max_tokens=32, ignore_eos=True, **kw)
    steps = compared = changed = 0
    for p, out in enumerate(outs):
        prompt_ids = list(out.prompt_token_ids)
        gen = list(out.outputs[0].token_ids)
        assert len(gen) == 32
        raw = fixtures.hf_logits(model, prompt_ids + gen)
        for j, tok in enumerate(gen):
            row_raw = raw[len(prompt_ids) + j - 1]
            row = _processed_logits(row_raw, prompt_ids, gen[:j], kw, raw.shape[1])
            steps += 1
            changed += int(row.argmax()) != int(row_raw.argmax())
            if fixtures.top2_margin(row) > MARGIN:
                compared += 1
                assert tok == int(row.argmax()), (
                    f"{case} prompt {p} step {j}: llmcore {tok}, formula argmax {int(row.argmax())}")
            else:
                assert row[tok] >= row.max() - MARGIN - TOL
    assert compared >= 0.8 * steps, f"only {compared}/{steps} steps compared"
    assert changed > 0, f"{case} never changed the greedy pick; the test cannot tell"


def test_min_tokens_with_eos_bias(llm, llmcore, hf_model):
    model = hf_model("llama_gqa")
    bias = {fixtures.EOS_ID: 100.0}
    # Without min_tokens, the boosted EOS ends the request at once.
    first = _greedy(llm, llmcore, PROMPTS[:2], max_tokens=20, logit_bias=bias)
    for out in first:
        comp = out.outputs[0]
        assert list(comp.token_ids) == [fixtures.EOS_ID]
        assert comp.finish_reason == "stop" and comp.stop_reason is None
        assert comp.text == ""

    kw = dict(logit_bias=bias, min_tokens=5)
    outs = _greedy(llm, llmcore, PROMPTS[:2], max_tokens=20, **kw)
    for out in outs:
        comp = out.outputs[0]
        gen = list(comp.token_ids)
        assert comp.finish_reason == "stop" and comp.stop_reason is None
        assert len(gen) == 6 and gen[-1] == fixtures.EOS_ID, gen
        assert fixtures.EOS_ID not in gen[:-1]
        raw = fixtures.hf_logits(model, list(out.prompt_token_ids) + gen)
        for j, tok in enumerate(gen):
            row = _processed_logits(raw[len(out.prompt_token_ids) + j - 1], out.prompt_token_ids,
                                    gen[:j], kw, raw.shape[1])
            if fixtures.top2_margin(row) > MARGIN:
                assert tok == int(row.argmax()), f"step {j}"


def test_min_tokens_blocks_stop_token_ids(llm, llmcore):
    stop_id = 300
    outs = _greedy(llm, llmcore, PROMPTS[:2], max_tokens=20, ignore_eos=True,
                   logit_bias={stop_id: 100.0}, stop_token_ids=[stop_id], min_tokens=3)
    for out in outs:
        comp = out.outputs[0]
        assert list(comp.token_ids)[-1] == stop_id and len(comp.token_ids) == 4, comp.token_ids
        assert stop_id not in list(comp.token_ids)[:-1]
        assert comp.finish_reason == "stop" and comp.stop_reason == stop_id


def test_ignore_eos_and_eos_stop(llm, llmcore):
    bias = {fixtures.EOS_ID: 100.0}
    out = _greedy(llm, llmcore, PROMPTS[0], max_tokens=7, ignore_eos=True, logit_bias=bias)[0]
    comp = out.outputs[0]
    assert list(comp.token_ids) == [fixtures.EOS_ID] * 7
    assert comp.finish_reason == "length" and comp.stop_reason is None


# ---------------------------------------------------------------------------------------------
# Stop token ids and stop strings

def _text_bias(sp):
    """logit_bias banning byte-fallback and control tokens, so outputs are plain pieces whose
    text is unambiguous (no partial UTF-8, no skipped specials)."""
    banned = fixtures.byte_token_ids(sp) + [0, fixtures.BOS_ID, fixtures.EOS_ID]
    return {int(t): -100.0 for t in banned}


@pytest.fixture(scope="module")
def plain_runs(llm, llmcore, sp):
    outs = _greedy(llm, llmcore, PROMPTS, max_tokens=32, ignore_eos=True, logit_bias=_text_bias(sp))
    for out in outs:
        comp = out.outputs[0]
        assert comp.text == fixtures.sp_output_text(sp, out.prompt_token_ids, comp.token_ids)
    return outs


def test_stop_token_ids(plain_runs, llm, llmcore, sp):
    for out in plain_runs:
        gen = list(out.outputs[0].token_ids)
        k = 6
        stop_id = gen[k]
        k = gen.index(stop_id)  # first occurrence wins
        got = _greedy(llm, llmcore, out.prompt, max_tokens=32, ignore_eos=True,
                      logit_bias=_text_bias(sp), stop_token_ids=[stop_id, 511])[0].outputs[0]
        assert list(got.token_ids) == gen[:k + 1]
        assert got.finish_reason == "stop" and got.stop_reason == stop_id
        assert got.text == fixtures.sp_output_text(sp, out.prompt_token_ids, gen[:k])


def _boundaries(sp, out):
    """Text offsets in the output text after each output token."""
    gen = list(out.outputs[0].token_ids)
    return [len(fixtures.sp_output_text(sp, out.prompt_token_ids, gen[:i + 1]))
            for i in range(len(gen))]


def _straddling_stop(text, bounds):
    """A stop string that starts inside output token i (after its first character) and ends
    inside token i + 1 (before its last), at its first occurrence in `text`.
    bounds[i] is the text offset where token i ends. -> (stop, start offset, i + 1) or None."""
    for i in range(1, len(bounds) - 1):
        begin, mid, end = bounds[i - 1], bounds[i], bounds[i + 1]
        if mid - begin >= 2 and end - mid >= 2:
            start = begin + 1
            stop = text[start:end - 1]
            if text.find(stop) == start:
                return stop, start, i + 1
    return None


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens(include, plain_runs, llm, llmcore, sp):
    tested = 0
    for out in plain_runs:
        comp = out.outputs[0]
        bounds = _boundaries(sp, out)
        found = _straddling_stop(comp.text, bounds)
        if found is None:
            continue
        stop, start, last_tok = found
        assert bounds[last_tok - 1] < start + len(stop) <= bounds[last_tok]
        got = _greedy(llm, llmcore, out.prompt, max_tokens=32, ignore_eos=True,
                      logit_bias=_text_bias(sp), stop=["never-in-output", stop],
                      include_stop_str_in_output=include)[0].outputs[0]
        assert got.finish_reason == "stop" and got.stop_reason == stop
        expected = comp.text[:start + len(stop)] if include else comp.text[:start]
        assert got.text == expected, (stop, got.text, comp.text)
        assert list(got.token_ids) == list(comp.token_ids)[:last_tok + 1]
        tested += 1
    assert tested >= 2, "no straddling stop strings found; the test checked nothing"


def test_stop_string_single_str(plain_runs, llm, llmcore, sp):
    out = plain_runs[1]
    comp = out.outputs[0]
    stop = comp.text[len(comp.text) // 2: len(comp.text) // 2 + 3]
    start = comp.text.find(stop)
    got = _greedy(llm, llmcore, out.prompt, max_tokens=32, ignore_eos=True,
                  logit_bias=_text_bias(sp), stop=stop)[0].outputs[0]
    assert got.text == comp.text[:start]
    assert got.stop_reason == stop


# ---------------------------------------------------------------------------------------------
# Temperature, top-k, top-p, min-p: the sampled distribution of one step

def _sampling_probs(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """vLLM's sampling distribution: temperature, then min_p on the scaled probabilities, then
    top-k, then top-p on what is left. Returns (probs, ambiguous) where ambiguous marks tokens
    sitting on a cutoff (within 1e-6), whose inclusion is not checked."""
    x = logits / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    keep = np.ones_like(p, dtype=bool)
    ambiguous = np.zeros_like(keep)
    if min_p > 0:
        thr = min_p * p.max()
        keep &= p >= thr
        ambiguous |= np.abs(p - thr) < 1e-6
    order = np.argsort(-x, kind="stable")
    if top_k > 0:
        kth = x[order[top_k - 1]]
        keep &= x >= kth
        ambiguous |= np.abs(x - kth) < 1e-6
    if top_p < 1.0:
        q = np.where(keep, p, 0.0)
        q /= q.sum()
        qs = q[order]
        before = np.cumsum(qs) - qs  # mass strictly before each token in sorted order
        in_nucleus = np.zeros_like(keep)
        in_nucleus[order] = before < top_p
        amb = np.zeros_like(keep)
        amb[order] = np.abs(before - top_p) < 1e-6
        keep &= in_nucleus
        ambiguous |= amb
    q = np.where(keep, p, 0.0)
    return q / q.sum(), ambiguous


SAMPLING_CASES = {
    "temperature_0.7": dict(temperature=0.7),
    "temperature_1.5": dict(temperature=1.5),
    "top_k_4": dict(temperature=1.0, top_k=4),
    "top_p_0.6": dict(temperature=1.0, top_p=0.6),
    "min_p_0.2": dict(temperature=1.0, min_p=0.2),
    "top_k_8_top_p_0.7_temp_0.8": dict(temperature=0.8, top_k=8, top_p=0.7),
}


@pytest.mark.parametrize("case", list(SAMPLING_CASES))
def test_sampling_distribution(case, llm, llmcore, hf_model):
    kw = SAMPLING_CASES[case]
    num = 1000
    prompt = PROMPTS[1]
    # 4 requests of n = 250 (n is capped at max_num_seqs), each with its own seed.
    outs = llm.generate([prompt] * 4, [llmcore.SamplingParams(n=num // 4, seed=2024 + i,
                                                              max_tokens=1, ignore_eos=True, **kw)
                                       for i in range(4)], use_tqdm=False)
    out = outs[0]
    samples = np.array([c.token_ids[0] for o in outs for c in o.outputs])
    assert len(samples) == num
    logits = fixtures.hf_logits(hf_model("llama_gqa"), list(out.prompt_token_ids))[-1]
    probs, ambiguous = _sampling_probs(logits, **kw)
    outside = [int(t) for t in samples if probs[t] == 0 and not ambiguous[t]]
    assert not outside, f"{case}: sampled tokens outside the allowed set: {sorted(set(outside))}"
    counts = np.bincount(samples, minlength=len(probs))
    # Per-token binomial bounds at 5 sigma (the run is seeded, so this is deterministic).
    for t in np.nonzero((probs > 0) | (counts > 0))[0]:
        if ambiguous[t]:
            continue
        mean = num * probs[t]
        sd = math.sqrt(num * probs[t] * (1 - probs[t]))
        assert abs(counts[t] - mean) <= 5 * sd + 3, (
            f"{case}: token {t} sampled {counts[t]} times, expected {mean:.1f} +- {sd:.1f}")
    # Chi-square over the tokens expected >= 5 times each, the rest pooled in one bin.
    big = probs * num >= 5
    expected = np.append(num * probs[big], num * probs[~big].sum())
    observed = np.append(counts[big], counts[~big].sum())
    keep = expected > 0
    chi2 = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * max(dof, 1)) + 10, f"{case}: chi2 {chi2:.1f}, dof {dof}"
