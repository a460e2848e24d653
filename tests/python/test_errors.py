"""Bad input is refused with a ValueError that names the parameter, and the engine keeps serving.

Every row of the tables is one invalid request; after each, the same LLM must still generate
(and hold no KV blocks for the refused request).
"""

from __future__ import annotations

import math
import re

import pytest

import fixtures

NAN, INF = math.nan, math.inf

# (field named in the message, SamplingParams kwargs)
BAD_SAMPLING_PARAMS = [
    ("n", dict(n=0)),
    ("n", dict(n=-1)),
    ("presence_penalty", dict(presence_penalty=2.5)),
    ("presence_penalty", dict(presence_penalty=-2.01)),
    ("presence_penalty", dict(presence_penalty=NAN)),
    ("presence_penalty", dict(presence_penalty=INF)),
    ("frequency_penalty", dict(frequency_penalty=2.01)),
    ("frequency_penalty", dict(frequency_penalty=-3.0)),
    ("frequency_penalty", dict(frequency_penalty=NAN)),
    ("repetition_penalty", dict(repetition_penalty=0.0)),
    ("repetition_penalty", dict(repetition_penalty=-1.0)),
    ("repetition_penalty", dict(repetition_penalty=NAN)),
    ("repetition_penalty", dict(repetition_penalty=INF)),
    ("temperature", dict(temperature=-0.1)),
    ("temperature", dict(temperature=NAN)),
    ("temperature", dict(temperature=INF)),
    ("top_p", dict(top_p=0.0)),
    ("top_p", dict(top_p=-0.5)),
    ("top_p", dict(top_p=1.01)),
    ("top_p", dict(top_p=NAN)),
    ("top_k", dict(top_k=-2)),
    ("min_p", dict(min_p=-0.1)),
    ("min_p", dict(min_p=1.1)),
    ("min_p", dict(min_p=NAN)),
    ("max_tokens", dict(max_tokens=0)),
    ("max_tokens", dict(max_tokens=-5)),
    ("min_tokens", dict(min_tokens=-1)),
    ("min_tokens", dict(min_tokens=10, max_tokens=5)),
    ("logprobs", dict(logprobs=-1)),
    ("logprobs", dict(logprobs=21)),
    ("prompt_logprobs", dict(prompt_logprobs=-1)),
    ("prompt_logprobs", dict(prompt_logprobs=21)),
    ("logit_bias", dict(logit_bias={5: 101.0})),
    ("logit_bias", dict(logit_bias={5: -150.0})),
    ("logit_bias", dict(logit_bias={5: NAN})),
    ("logit_bias", dict(logit_bias={-1: 1.0})),
    ("logit_bias", dict(logit_bias={fixtures.VOCAB_SIZE: 1.0})),
    ("stop_token_ids", dict(stop_token_ids=[-1])),
    ("stop_token_ids", dict(stop_token_ids=[3, fixtures.VOCAB_SIZE])),
]


def _still_serves(llm, llmcore):
    out = llm.generate("The cat walks", llmcore.SamplingParams(temperature=0.0, max_tokens=4,
                                                               ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
    fixtures.assert_all_blocks_free(llm)


@pytest.mark.parametrize("field,kwargs", BAD_SAMPLING_PARAMS,
                         ids=[f"{f}-{kw}" for f, kw in BAD_SAMPLING_PARAMS])
def test_bad_sampling_params(field, kwargs, llm, llmcore):
    with pytest.raises(ValueError, match=re.escape(field)):
        params = llmcore.SamplingParams(**kwargs)  # may raise here ...
        llm.generate("The cat walks", params, use_tqdm=False)  # ... or here
    _still_serves(llm, llmcore)


def test_valid_edge_values_accepted(llm, llmcore):
    """The boundaries themselves are valid (so the table above is not over-strict)."""
    edges = [dict(presence_penalty=2.0), dict(presence_penalty=-2.0), dict(frequency_penalty=-2.0),
             dict(top_p=1.0), dict(top_k=-1), dict(top_k=0), dict(min_p=1.0), dict(min_p=0.0),
             dict(temperature=0.0), dict(logprobs=0), dict(logprobs=20), dict(prompt_logprobs=20),
             dict(logit_bias={fixtures.VOCAB_SIZE - 1: 100.0}), dict(min_tokens=4, max_tokens=4),
             dict(stop_token_ids=[fixtures.VOCAB_SIZE - 1])]
    for kw in edges:
        out = llm.generate("The cat", llmcore.SamplingParams(max_tokens=kw.pop("max_tokens", 4),
                                                             **kw), use_tqdm=False)
        assert out[0].finished, kw
    fixtures.assert_all_blocks_free(llm)


BAD_PROMPTS = [
    ("prompt", {"prompt_token_ids": []}),
    ("token", {"prompt_token_ids": [-1]}),
    ("token", {"prompt_token_ids": [1, fixtures.VOCAB_SIZE]}),
    ("token", {"prompt_token_ids": [1, 5, 10**6]}),
]


@pytest.mark.parametrize("what,prompt", BAD_PROMPTS, ids=[str(p) for _, p in BAD_PROMPTS])
def test_bad_prompts(what, prompt, llm, llmcore):
    with pytest.raises(ValueError, match=f"(?i){what}"):
        llm.generate(prompt, llmcore.SamplingParams(max_tokens=4), use_tqdm=False)
    _still_serves(llm, llmcore)


def test_sampling_params_list_length_mismatch(llm, llmcore):
    with pytest.raises(ValueError):
        llm.generate(["a", "b", "c"], [llmcore.SamplingParams()] * 2, use_tqdm=False)
    _still_serves(llm, llmcore)


def test_over_max_model_len(make_llm, llmcore):
    llm = make_llm("llama_gqa", max_model_len=64)
    ids = [1] + [10 + i for i in range(39)]  # 40 tokens
    # 40 + 24 == 64 fits exactly.
    ok = llm.generate({"prompt_token_ids": ids},
                      llmcore.SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
                      use_tqdm=False)
    assert len(ok[0].outputs[0].token_ids) == 24
    for prompt_len, max_tokens in ((40, 25), (64, 1), (80, 1)):
        prompt = {"prompt_token_ids": [1] + [10 + i % 400 for i in range(prompt_len - 1)]}
        with pytest.raises(ValueError, match="max_model_len"):
            llm.generate(prompt, llmcore.SamplingParams(max_tokens=max_tokens), use_tqdm=False)
        _still_serves(llm, llmcore)


def test_max_model_len_over_position_embeddings(llmcore, checkpoint):
    """Refuse, never truncate: a context the model was not built for is an error."""
    with pytest.raises(ValueError, match="max_model_len"):
        llmcore.LLM(model=str(checkpoint("llama_gqa")), device="cpu",
                    num_gpu_blocks_override=64, max_model_len=4096)


def test_cache_smaller_than_one_sequence(llmcore, checkpoint):
    """4 blocks of 16 tokens cannot hold one max_model_len (512) sequence: refused up front,
    since such a sequence could never finish."""
    with pytest.raises(ValueError, match="max_model_len"):
        llmcore.LLM(model=str(checkpoint("llama_gqa")), device="cpu", num_gpu_blocks_override=4,
                    block_size=16)


def test_request_that_never_fits_kv_cache(make_llm, llmcore):
    llm = make_llm("llama_gqa", num_gpu_blocks_override=4, block_size=16, max_model_len=64)
    prompt = {"prompt_token_ids": [1] + [10 + i for i in range(19)]}  # 20 tokens
    # n = 4 outputs of 40 tokens each: 4 x 60 token slots can never be live at once in 64.
    with pytest.raises(ValueError, match="(?i)kv|block|cache"):
        llm.generate(prompt, llmcore.SamplingParams(n=4, max_tokens=40, ignore_eos=True),
                     use_tqdm=False)
    _still_serves(llm, llmcore)
    # Exactly 64 tokens of one sequence fits.
    out = llm.generate({"prompt_token_ids": [1] + [10 + i for i in range(39)]},
                       llmcore.SamplingParams(max_tokens=24, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 24
    fixtures.assert_all_blocks_free(llm)
