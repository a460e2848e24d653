"""generation_config.json: its eos_token_id (int or list) joins the stop set, and its sampling
fields are the defaults of calls that pass no SamplingParams (vLLM's generation_config="auto").

Checkpoints are copies of the llama_gqa fixture model with a generation_config.json written by
each test; the stop token is pushed to the top with logit_bias, so whether generation stops there
depends only on whether the engine counts it as an end-of-sequence token.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import DEFAULT_LLM_KWARGS

EOS = 2             # the fixture tokenizer's and config.json's eos_token_id
X, Y = 100, 217     # ordinary tokens that generation_config.json makes stop tokens
PROMPT = "The old man looks at the blue sea"
BIAS = 100.0        # far above the fixture model's logit spread: the biased token always wins

DEFAULTS_JSON = {"max_new_tokens": 5, "temperature": 0.0, "top_k": 7, "top_p": 0.5, "min_p": 0.05,
                 "repetition_penalty": 1.3, "do_sample": True, "eos_token_id": EOS, "bos_token_id": 1}


@pytest.fixture(scope="module")
def gen_checkpoint(tmp_path_factory, checkpoint):
    """gen_checkpoint(name, generation_config or None, extra files) -> a copy of llama_gqa
    whose generation_config.json is the given dict (None: no file)."""
    root = tmp_path_factory.mktemp("gen_config")

    def make(name: str, config, files=None) -> Path:
        d = root / name
        if d.exists():
            return d
        shutil.copytree(checkpoint("llama_gqa"), d)
        path = d / "generation_config.json"
        if config is None:
            path.unlink()
        else:
            path.write_text(json.dumps(config) if isinstance(config, dict) else config)
        for rel, text in (files or {}).items():
            (d / rel).write_text(text)
        return d

    return make


@pytest.fixture(scope="module")
def open_llm(llmcore):
    """open_llm(path, **kwargs) -> an LLM, shut down at the end of the module."""
    llms = []

    def make(path, **kwargs):
        merged = dict(DEFAULT_LLM_KWARGS)
        merged.update(kwargs)
        llm = llmcore.LLM(model=str(path), **merged)
        llms.append(llm)
        return llm

    yield make
    for llm in llms:
        llm.shutdown()


def _push(llmcore, token, **kw):
    base = dict(temperature=0.0, max_tokens=10, logit_bias={token: BIAS})
    base.update(kw)
    return llmcore.SamplingParams(**base)


# -- stop ids ---------------------------------------------------------------------------------

def test_int_eos_from_generation_config_stops(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("eos_int", {"bos_token_id": 1, "eos_token_id": X}))
    assert list(llm.llm_engine.native.eos_token_ids) == [EOS, X]
    (out,) = llm.generate(PROMPT, _push(llmcore, X))
    o = out.outputs[0]
    assert (o.token_ids, o.finish_reason, o.stop_reason, o.text) == ([X], "stop", None, "")


def test_list_eos_from_generation_config_stops(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("eos_list", {"eos_token_id": [EOS, Y]}))
    assert list(llm.llm_engine.native.eos_token_ids) == [EOS, Y]
    (out,) = llm.generate(PROMPT, _push(llmcore, Y))
    o = out.outputs[0]
    assert (o.token_ids, o.finish_reason, o.stop_reason) == ([Y], "stop", None)
    # X is in neither list here, so pushing it runs to max_tokens.
    (out,) = llm.generate(PROMPT, _push(llmcore, X))
    assert (out.outputs[0].token_ids, out.outputs[0].finish_reason) == ([X] * 10, "length")


def test_without_generation_config_the_token_does_not_stop(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("no_file", None))
    assert list(llm.llm_engine.native.eos_token_ids) == [EOS]
    (out,) = llm.generate(PROMPT, _push(llmcore, X))
    assert (out.outputs[0].token_ids, out.outputs[0].finish_reason) == ([X] * 10, "length")


def test_generation_config_eos_obeys_ignore_eos_and_min_tokens(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("eos_int", {"bos_token_id": 1, "eos_token_id": X}))
    (out,) = llm.generate(PROMPT, _push(llmcore, X, ignore_eos=True))
    assert (out.outputs[0].token_ids, out.outputs[0].finish_reason) == ([X] * 10, "length")
    # min_tokens masks every stop id, X included, until 3 tokens exist; then X wins and stops.
    (out,) = llm.generate(PROMPT, _push(llmcore, X, min_tokens=3))
    ids = out.outputs[0].token_ids
    assert len(ids) == 4 and ids[-1] == X and X not in ids[:3], ids
    assert out.outputs[0].finish_reason == "stop"


def test_generation_config_vllm_keeps_the_stop_ids(llmcore, gen_checkpoint, open_llm):
    # generation_config="vllm" drops the sampling defaults only; the stop set is the model's.
    llm = open_llm(gen_checkpoint("eos_int", {"bos_token_id": 1, "eos_token_id": X}), generation_config="vllm")
    (out,) = llm.generate(PROMPT, _push(llmcore, X))
    assert (out.outputs[0].token_ids, out.outputs[0].finish_reason) == ([X], "stop")


def test_malformed_eos_is_a_load_error(llmcore, gen_checkpoint):
    d = gen_checkpoint("bad_eos", {"eos_token_id": "</s>"})
    with pytest.raises(ValueError, match="generation_config.json.*eos_token_id"):
        llmcore.LLM(model=str(d), **DEFAULT_LLM_KWARGS)
    d = gen_checkpoint("bad_json", "{not json")
    with pytest.raises(ValueError, match="generation_config.json"):
        llmcore.LLM(model=str(d), **DEFAULT_LLM_KWARGS)


# -- sampling defaults -------------------------------------------------------------------------

def _fields(p):
    return dict(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
                repetition_penalty=p.repetition_penalty, max_tokens=p.max_tokens)


def test_defaults_come_from_generation_config(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("defaults", DEFAULTS_JSON))
    got = _fields(llm.get_default_sampling_params())
    assert got == pytest.approx(dict(temperature=0.0, top_p=0.5, top_k=7, min_p=0.05,
                                     repetition_penalty=1.3, max_tokens=5))
    # A fresh object each time: a caller changing it does not change the model's defaults.
    p = llm.get_default_sampling_params()
    p.max_tokens = 99
    assert llm.get_default_sampling_params().max_tokens == 5


def test_defaults_apply_without_sampling_params(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("defaults", DEFAULTS_JSON))
    (out,) = llm.generate(PROMPT)
    o = out.outputs[0]
    assert (len(o.token_ids), o.finish_reason) == (5, "length")
    # Greedy under the same parameters spelled out gives the same tokens.
    explicit = llmcore.SamplingParams(temperature=0.0, top_k=7, top_p=0.5, min_p=0.05,
                                      repetition_penalty=1.3, max_tokens=5)
    (ref,) = llm.generate(PROMPT, explicit)
    assert o.token_ids == ref.outputs[0].token_ids
    streamed = list(llm.generate_stream(PROMPT))
    assert streamed[-1].outputs[0].token_ids == o.token_ids


def test_defaults_do_not_apply_to_given_sampling_params(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("defaults", DEFAULTS_JSON))
    (out,) = llm.generate(PROMPT, llmcore.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 8
    # SamplingParams() is vLLM's defaults (max_tokens 16), not the model's (5).
    (out,) = llm.generate(PROMPT, llmcore.SamplingParams(ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 16


def test_chat_uses_the_defaults(llmcore, gen_checkpoint, open_llm):
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    llm = open_llm(gen_checkpoint("defaults_chat", DEFAULTS_JSON, {"chat_template.jinja": template}))
    (out,) = llm.chat([{"role": "user", "content": "The cat walks to the house."}])
    assert out.prompt == "user: The cat walks to the house.\nassistant:"
    assert (len(out.outputs[0].token_ids), out.outputs[0].finish_reason) == (5, "length")


def test_generation_config_vllm_ignores_the_defaults(llmcore, gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("defaults", DEFAULTS_JSON), generation_config="vllm")
    assert _fields(llm.get_default_sampling_params()) == pytest.approx(dict(
        temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, max_tokens=16))
    (out,) = llm.generate(PROMPT)
    o = out.outputs[0]
    assert len(o.token_ids) == 16 or (o.finish_reason == "stop" and o.token_ids[-1] == EOS)


def test_no_generation_config_means_vllm_defaults(gen_checkpoint, open_llm):
    llm = open_llm(gen_checkpoint("no_file", None))
    assert _fields(llm.get_default_sampling_params()) == pytest.approx(dict(
        temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, max_tokens=16))


def test_invalid_defaults_and_argument(llmcore, gen_checkpoint):
    d = gen_checkpoint("bad_top_p", {"top_p": 2.0})
    with pytest.raises(ValueError, match="generation_config.json.*top_p"):
        llmcore.LLM(model=str(d), **DEFAULT_LLM_KWARGS)
    with pytest.raises(ValueError, match="generation_config must be 'auto'.*'vllm'"):
        llmcore.LLM(model=str(gen_checkpoint("no_file", None)), generation_config="greedy", **DEFAULT_LLM_KWARGS)
