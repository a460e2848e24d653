"""Tensor parallelism on the CPU backend: LLM(..., tensor_parallel_size=N, device="cpu") runs N
worker threads, each with its own CPU backend and its shard of the weights, joined by the
shared-memory communicator (float32 sums in rank order).

The reference is the same checkpoint at tensor_parallel_size=1. Sharding reorders the float32
sums (o_proj and down_proj are summed over ranks), so logprobs agree to 1e-3, not bit for bit,
and a greedy pick may flip only where TP=1's two best tokens are within that tolerance: outputs
are compared token by token while both runs have produced the same tokens, a differing token must
be such a near-tie (TP=1's own logprobs show it), and after it the sequences are not compared.
Every variant must have most positions compared.

Also: determinism and batch invariance at TP=2, dummy weights (the same numbers at every size,
over a vocabulary that splits unevenly), preemption, seeded sampling, the ValueErrors of sizes a
model cannot be split into, a rank that fails (LLMCORE_FAULT_INJECT) without leaving the others
waiting, the OpenAI server started with --tensor-parallel-size 2, benchmarks/latency.py -tp 2,
and that every KV block comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixtures
from conftest import DEFAULT_LLM_KWARGS

VARIANTS = ["llama_gqa", "llama_sharded", "qwen2_tied", "mistral_head_dim", "llama3_rope"]
TP_SIZES = [2, 4]
TOL = 1e-3  # float32 logprobs, sums reordered across ranks
# Small engines: 128 blocks of 16 tokens each (the CPU KV cache is otherwise sized in GiB).
ENGINE_KW = dict(DEFAULT_LLM_KWARGS, device="cpu", dtype="float32", num_gpu_blocks_override=128,
                 max_model_len=256)
NUM_PROMPTS = 4
MAX_TOKENS = 16
TOP_K = 5
# A sentencepiece tokenizer for configs without one (dummy weights; prompts given as token ids).
TINY_TOKENIZER = Path(__file__).resolve().parents[2] / "python" / "llmcore" / "models" / "tiny-random"


@contextlib.contextmanager
def engine(llmcore, model, tp: int, **kw):
    """An LLM at tensor_parallel_size=tp, shut down when the block ends (failed or not)."""
    llm = llmcore.LLM(model=str(model), tensor_parallel_size=tp, **{**ENGINE_KW, **kw})
    try:
        yield llm
    finally:
        llm.shutdown()


def _greedy(llmcore, **kw):
    return llmcore.SamplingParams(**{**dict(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True,
                                            logprobs=TOP_K, prompt_logprobs=1), **kw})


def _prompts():
    return fixtures.prompt_texts(NUM_PROMPTS, max_words=40)


def _top_values(entry, k):
    """The k best logprobs of a position's entry (its ranks 1..k), best first."""
    return sorted((lp.logprob for lp in entry.values() if lp.rank <= k), reverse=True)


def _margin(entry, k):
    """Top-2 margin of a position whose entry holds the top-k (k >= 2)."""
    top = _top_values(entry, k)
    return top[0] - top[1]


def _rank1(entry):
    """(token id, Logprob) of the position's best token."""
    return max(entry.items(), key=lambda item: item[1].logprob)


def compare_position(ref, got, k, where):
    """One generated position of TP=1 (ref) and TP=N (got), both holding their top-k: the tokens
    both list agree to TOL (and in rank where TP=1's value is clear of its neighbours); a token
    only one of them lists must sit at the other's top-k boundary."""
    ref_top = _top_values(ref, k)
    got_top = _top_values(got, k)
    assert len(ref_top) == len(got_top) == k, f"{where}: top-{k} entries {ref_top} vs {got_top}"
    for a, b in zip(ref_top, got_top):
        assert abs(a - b) <= TOL, f"{where}: top-{k} logprobs {ref_top} vs {got_top}"
    for tid, lp in got.items():
        if tid in ref:
            r = ref[tid]
            assert abs(lp.logprob - r.logprob) <= TOL, \
                f"{where}: token {tid} logprob {lp.logprob} at TP, {r.logprob} at TP=1"
            clear = all(abs(o.logprob - r.logprob) > 2 * TOL for t, o in ref.items() if t != tid)
            if r.rank <= k and clear:
                assert lp.rank == r.rank, f"{where}: token {tid} rank {lp.rank} at TP, {r.rank} at TP=1"
        elif lp.rank <= k:
            # In TP's top-k but not in TP=1's: it must tie with TP=1's k-th best.
            assert lp.logprob <= ref_top[-1] + TOL, \
                f"{where}: token {tid} ({lp.logprob}) is in TP's top-{k}, not in TP=1's (k-th {ref_top[-1]})"
    for tid, r in ref.items():
        if tid not in got and r.rank <= k:
            assert r.logprob <= got_top[-1] + TOL, \
                f"{where}: token {tid} ({r.logprob}) is in TP=1's top-{k}, not in TP's (k-th {got_top[-1]})"


def compare_outputs(ref_outs, got_outs, prompt_margins, label, k=TOP_K, check_prompt=True):
    """Compares generate() results of TP=1 and TP=N (see the module docstring). Returns
    (generated positions compared, generated positions in all)."""
    assert len(ref_outs) == len(got_outs)
    compared = total = 0
    for p, (r, g) in enumerate(zip(ref_outs, got_outs)):
        where = f"{label} prompt {p}"
        assert g.prompt_token_ids == r.prompt_token_ids, where
        ids = r.prompt_token_ids
        if check_prompt:
            assert g.prompt_logprobs[0] is None and len(g.prompt_logprobs) == len(ids), where
            for i in range(1, len(ids)):
                re_, ge = r.prompt_logprobs[i], g.prompt_logprobs[i]
                w = f"{where} prompt position {i}"
                # The prompt token's logprob is defined whatever the ties: always compared.
                assert abs(ge[ids[i]].logprob - re_[ids[i]].logprob) <= TOL, \
                    f"{w}: prompt token logprob {ge[ids[i]].logprob} at TP, {re_[ids[i]].logprob} at TP=1"
                (rt, rl), (gt, gl) = _rank1(re_), _rank1(ge)
                assert rl.rank == 1 and gl.rank == 1, w
                assert abs(gl.logprob - rl.logprob) <= TOL, f"{w}: best logprob {gl.logprob} vs {rl.logprob}"
                if prompt_margins[p][i] > TOL:
                    assert gt == rt, f"{w}: best token {gt} at TP, {rt} at TP=1 (margin {prompt_margins[p][i]})"
        ro, go = r.outputs[0], g.outputs[0]
        assert len(go.token_ids) == len(ro.token_ids), where
        same = True
        for j, (rt, gt) in enumerate(zip(ro.token_ids, go.token_ids)):
            total += 1
            if not same:
                continue
            w = f"{where} output position {j}"
            if rt != gt:
                # Only a near-tie of TP=1 may flip the greedy pick: TP's token is within TOL of
                # TP=1's best at this position.
                ref_entry = ro.logprobs[j]
                assert gt in ref_entry and ref_entry[rt].logprob - ref_entry[gt].logprob <= 2 * TOL, (
                    f"{w}: TP chose {gt}, TP=1 chose {rt} with margin {_margin(ref_entry, k):.2e} "
                    f"over the runner-up (logprobs {ref_entry})")
                same = False
                continue
            compared += 1
            compare_position(ro.logprobs[j], go.logprobs[j], k, w)
        if same:
            assert go.text == ro.text, where
            assert go.finish_reason == ro.finish_reason, where
            assert abs(go.cumulative_logprob - ro.cumulative_logprob) <= TOL * len(ro.token_ids), where
    return compared, total


def _prompt_margins(llm, llmcore, prompts):
    """TP=1's top-2 margin at every prompt position (index 0 unused)."""
    outs = llm.generate(prompts, llmcore.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=2),
                        use_tqdm=False)
    return [[float("inf")] + [_margin(e, 2) for e in o.prompt_logprobs[1:]] for o in outs]


@pytest.fixture(scope="module")
def reference(llmcore, checkpoint):
    """reference(variant) -> (TP=1 greedy outputs of the prompts, TP=1 prompt margins)."""
    cache = {}

    def get(name):
        if name not in cache:
            with engine(llmcore, checkpoint(name), 1) as llm:
                outs = llm.generate(_prompts(), _greedy(llmcore), use_tqdm=False)
                cache[name] = (outs, _prompt_margins(llm, llmcore, _prompts()))
        return cache[name]

    return get


# -- greedy outputs and logprobs against TP=1 ----------------------------------------------------
@pytest.mark.parametrize("tp", TP_SIZES)
@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_matches_tp1(llmcore, checkpoint, reference, name, tp):
    ref_outs, margins = reference(name)
    with engine(llmcore, checkpoint(name), tp) as llm:
        assert llm.llm_engine.native.tensor_parallel_size == tp
        outs = llm.generate(_prompts(), _greedy(llmcore), use_tqdm=False)
        stats = fixtures.assert_all_blocks_free(llm)
    assert stats["num_total_blocks"] == ENGINE_KW["num_gpu_blocks_override"]
    compared, total = compare_outputs(ref_outs, outs, margins, f"{name} TP={tp}")
    print(f"{name} TP={tp}: {compared}/{total} generated positions compared")
    assert total == NUM_PROMPTS * MAX_TOKENS
    assert compared >= 0.8 * total, f"{name} TP={tp}: only {compared} of {total} positions compared"


def test_tp_runs_are_deterministic_and_batch_invariant(llmcore, checkpoint):
    """The same request gives the same bits at TP=2 every time (rank-ordered sums), alone or in
    a batch, with or without a prefix-cache hit."""
    prompts = _prompts()
    params = _greedy(llmcore)
    with engine(llmcore, checkpoint("llama_gqa"), 2, enable_prefix_caching=False) as llm:
        first = llm.generate(prompts, params, use_tqdm=False)
        second = llm.generate(prompts, params, use_tqdm=False)
        alone = [llm.generate(p, params, use_tqdm=False)[0] for p in prompts]
    with engine(llmcore, checkpoint("llama_gqa"), 2) as llm:
        # Without prompt logprobs, which need every prompt position computed (no cache hits).
        no_prompt_lp = _greedy(llmcore, prompt_logprobs=None)
        llm.generate(prompts, no_prompt_lp, use_tqdm=False)
        cached = llm.generate(prompts, no_prompt_lp, use_tqdm=False)
        assert llm.llm_engine.get_stats()["prefix_cache_hits"] > 0

    def key(o):
        c = o.outputs[0]
        return (c.token_ids, c.text, [sorted((t, lp.logprob, lp.rank) for t, lp in e.items()) for e in c.logprobs],
                [sorted((t, lp.logprob) for t, lp in e.items()) for e in o.prompt_logprobs[1:]])

    assert [key(o) for o in second] == [key(o) for o in first]
    for label, outs in (("alone", alone), ("prefix-cached", cached)):
        for i, (a, b) in enumerate(zip(outs, first)):
            assert a.outputs[0].token_ids == b.outputs[0].token_ids, f"{label}: prompt {i}"
            for j, (x, y) in enumerate(zip(a.outputs[0].logprobs, b.outputs[0].logprobs)):
                tok = a.outputs[0].token_ids[j]
                assert x[tok].logprob == pytest.approx(y[tok].logprob, abs=1e-4), (label, i, j)


def test_dummy_weights_are_the_same_at_every_tp(llmcore, tmp_path):
    """load_format="dummy": each rank draws its slice of the numbers TP=1 draws, so the model is
    the same at every size. The vocabulary (1001) splits unevenly over 2 and 4 ranks, so the last
    rank's vocab-parallel slice of the embedding and lm_head is the short one."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1001, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer = TINY_TOKENIZER
    prompts = [{"prompt_token_ids": [1] + [(37 * i + 11 * j) % 1000 + 1 for j in range(n)]}
               for i, n in enumerate((5, 23, 40))]
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=TOP_K,
                                    prompt_logprobs=2, detokenize=False)
    outs, margins = {}, None
    for tp in (1, 2, 4):
        with engine(llmcore, tmp_path, tp, load_format="dummy", tokenizer=str(tokenizer)) as llm:
            outs[tp] = llm.generate(prompts, params, use_tqdm=False)
            fixtures.assert_all_blocks_free(llm)
        if tp == 1:
            margins = [[float("inf")] + [_margin(e, 2) for e in o.prompt_logprobs[1:]] for o in outs[1]]
    for tp in (2, 4):
        compared, total = compare_outputs(outs[1], outs[tp], margins, f"dummy TP={tp}")
        assert compared >= 0.7 * total, f"dummy TP={tp}: only {compared} of {total} positions compared"


def test_preemption_under_tp_gives_the_same_tokens(llmcore, checkpoint):
    """12 blocks for 6 requests of up to ~140 tokens: sequences are preempted (their blocks freed
    on every rank) and recomputed; the tokens are those of an unconstrained TP=1 run."""
    prompts = fixtures.prompt_texts(6, max_words=60, seed=3)
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True, logprobs=2)
    with engine(llmcore, checkpoint("llama_gqa"), 1) as llm:
        ref = llm.generate(prompts, params, use_tqdm=False)
    with engine(llmcore, checkpoint("llama_gqa"), 2, num_gpu_blocks_override=12, max_model_len=160) as llm:
        got = llm.generate(prompts, params, use_tqdm=False)
        stats = fixtures.assert_all_blocks_free(llm)
    assert stats["num_preemptions"] > 0, stats
    compared, total = compare_outputs(ref, got, None, "preempted TP=2", k=2, check_prompt=False)
    assert compared >= 0.8 * total, f"only {compared} of {total} positions compared"


def test_seeded_sampling_matches_tp1(llmcore, checkpoint):
    """temperature 0.8 with a seed per request: rank 0 samples from the gathered logits with the
    request's generator, so TP=2 draws what TP=1 draws. The logits differ in the last bits, which
    can move a draw across a token boundary only when it lands within ~1e-6 of it (about one
    draw in 1e5): at most one of the 16 sequences may diverge, and only after the same prefix."""
    prompts = fixtures.prompt_texts(4, seed=21, max_words=30)
    params = [llmcore.SamplingParams(temperature=0.8, seed=1000 + s, max_tokens=MAX_TOKENS, ignore_eos=True,
                                     logprobs=1)
              for s in range(4)]
    reqs = [p for p in prompts for _ in params]
    sps = [sp for _ in prompts for sp in params]
    with engine(llmcore, checkpoint("llama_gqa"), 1) as llm:
        ref = llm.generate(reqs, sps, use_tqdm=False)
    with engine(llmcore, checkpoint("llama_gqa"), 2) as llm:
        got = llm.generate(reqs, sps, use_tqdm=False)
        fixtures.assert_all_blocks_free(llm)
    diverged = 0
    for i, (r, g) in enumerate(zip(ref, got)):
        rt, gt = r.outputs[0].token_ids, g.outputs[0].token_ids
        diverged += rt != gt
        for j, (a, b) in enumerate(zip(rt, gt)):
            if a != b:
                break
            assert abs(g.outputs[0].logprobs[j][b].logprob - r.outputs[0].logprobs[j][a].logprob) <= TOL, (i, j)
    # Different seeds did give different samples (the check above is not vacuous).
    assert len({tuple(o.outputs[0].token_ids) for o in ref[:len(params)]}) > 1
    assert diverged <= 1, f"{diverged} of {len(ref)} seeded sequences differ between TP=1 and TP=2"


def test_kv_blocks_come_back_after_aborts_and_errors(llmcore, checkpoint):
    """Streams left early (aborted mid-decode) and an invalid request give every block back."""
    with engine(llmcore, checkpoint("llama_gqa"), 4) as llm:
        stream = llm.generate_stream("The cat walks to", _greedy(llmcore, max_tokens=64))
        for n, _ in enumerate(stream):
            if n == 2:
                break
        stream.close()  # leaving the stream aborts the request
        with pytest.raises(ValueError):
            llm.generate("A dog", llmcore.SamplingParams(max_tokens=1000), use_tqdm=False)
        outs = llm.generate(_prompts(), _greedy(llmcore), use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == MAX_TOKENS for o in outs)
        stats = fixtures.assert_all_blocks_free(llm)
    assert stats["num_requests_aborted"] >= 1


# -- sizes a model cannot be split into ----------------------------------------------------------
def test_tp_not_dividing_the_heads_is_refused(llmcore, checkpoint):
    # llama_gqa: 4 query heads, 2 KV heads, intermediate 128.
    with pytest.raises(ValueError, match=r"num_attention_heads \(4\) must be divisible by tensor_parallel_size \(3\)"):
        llmcore.LLM(model=str(checkpoint("llama_gqa")), tensor_parallel_size=3, **ENGINE_KW)
    with pytest.raises(ValueError, match=r"num_attention_heads \(4\).*tensor_parallel_size \(8\)"):
        llmcore.LLM(model=str(checkpoint("llama_gqa")), tensor_parallel_size=8, **ENGINE_KW)


@pytest.mark.parametrize("tp", [0, -1])
def test_tp_below_1_is_refused(llmcore, checkpoint, tp):
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        llmcore.LLM(model=str(checkpoint("llama_gqa")), tensor_parallel_size=tp, **ENGINE_KW)


def test_kv_heads_neither_multiple_nor_divisor_are_refused(llmcore, tmp_path):
    # 6 query heads over 3 KV heads at TP=2: the query heads split, the KV heads cannot.
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 48,
              "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 6, "num_key_value_heads": 3,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokenizer = TINY_TOKENIZER
    with pytest.raises(ValueError, match=r"num_key_value_heads \(3\)"):
        llmcore.LLM(model=str(tmp_path), tokenizer=str(tokenizer), tensor_parallel_size=2, load_format="dummy",
                    **ENGINE_KW)


# -- a failing rank --------------------------------------------------------------------------------
@pytest.mark.parametrize("tp,fault,needle", [
    (2, "rank=1,step=3", "rank 1"),
    (2, "rank=0,step=3", "rank 0"),
    (4, "rank=3,step=2", "rank 3"),
    (2, "step=3", None),  # no rank: the engine thread itself throws, as at TP=1
])
def test_failing_rank_fails_every_request_without_a_hang(checkpoint, tp, fault, needle):
    """A worker that throws at its n-th forward step: the other ranks leave their collectives, the
    engine fails every request (the 4 in flight, and one sent after the failure) with the rank and
    the reason, LLM.generate raises RuntimeError, and the process exits: all within 30 s."""
    kwargs = {k: v for k, v in ENGINE_KW.items()}
    kwargs.update(tensor_parallel_size=tp, num_gpu_blocks_override=64)
    result = fixtures.run_fault_script(checkpoint("llama_gqa"), fault, timeout_s=30, **kwargs)
    out = result["output"]
    assert result["returncode"] == 3, f"some generate call finished without an error\n{out}"
    for err in result["errors"]:
        assert err["is_runtime_error"], f"{err['type']}: {err['message']}\n{out}"
        assert "fault injected" in err["message"], out
        if needle:
            assert needle in err["message"], out
        else:
            assert "fault injected at step 3" in err["message"], out
    assert result["healthy_after"] is False
    assert result["shutdown_s"] < 10, out
    assert result["exited_at"] - result["done_at"] < 10, f"the process took long to exit after shutdown\n{out}"


def test_fault_rank_outside_the_group_is_refused(llmcore, checkpoint, monkeypatch):
    monkeypatch.setenv("LLMCORE_FAULT_INJECT", "rank=2,step=1")
    with pytest.raises(ValueError, match="LLMCORE_FAULT_INJECT"):
        llmcore.LLM(model=str(checkpoint("llama_gqa")), tensor_parallel_size=2, **ENGINE_KW)


# -- the OpenAI server at --tensor-parallel-size 2 -------------------------------------------------
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
          "{% endif %}")


def test_server_with_tensor_parallel_size_2(llmcore, checkpoint, tmp_path):
    """`python -m llmcore.server --tensor-parallel-size 2` on the CPU: a completion and a streamed
    chat completion through the openai client give what LLM(tensor_parallel_size=1) gives for the
    same greedy requests (prompts whose TP=1 greedy steps all have a margin > 1e-3), and SIGTERM
    still exits 0."""
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from server_util import free_port

    model_dir = tmp_path / "llama_chat"
    shutil.copytree(checkpoint("llama_gqa"), model_dir)
    (model_dir / "chat_template.jinja").write_text(CHATML)
    prompt = "The cat walks to the house"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the sea"}]
    n = 12
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=2)
    with engine(llmcore, model_dir, 1, max_model_len=512) as llm:
        exp_completion = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
        exp_chat = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
    for label, exp in (("completion", exp_completion), ("chat", exp_chat)):
        worst = min(_margin(e, 2) for e in exp.logprobs)
        assert worst > TOL, f"{label}: TP=1 has a near-tie (margin {worst:.1e}); pick another prompt"

    port = free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "LLMCORE_FAULT_INJECT"}
    cmd = [sys.executable, "-m", "llmcore.server", "--model", str(model_dir), "--device", "cpu", "--dtype", "float32",
           "--tensor-parallel-size", "2", "--port", str(port), "--max-model-len", "512",
           "--num-gpu-blocks-override", "128", "--served-model-name", "tiny-tp", "--log-level", "warning"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"server exited {proc.returncode}: {log_path.read_text()}"
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"server did not start: {log_path.read_text()}"
                time.sleep(0.1)
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
            resp = client.completions.create(model="tiny-tp", prompt=prompt, max_tokens=n, temperature=0,
                                             extra_body={"ignore_eos": True})
            assert resp.choices[0].text == exp_completion.text
            assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == n
            chunks = list(client.chat.completions.create(model="tiny-tp", messages=messages, max_tokens=n,
                                                         temperature=0, stream=True,
                                                         stream_options={"include_usage": True},
                                                         extra_body={"ignore_eos": True}))
            assert chunks[0].choices[0].delta.role == "assistant"
            body = [c for c in chunks if c.choices]
            assert "".join(c.choices[0].delta.content or "" for c in body) == exp_chat.text
            assert body[-1].choices[0].finish_reason == "length"
            assert chunks[-1].usage.completion_tokens == n
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


# -- the benchmarks at -tp 2 -------------------------------------------------------------------------
def test_latency_benchmark_passes_and_records_tp(llmcore, tmp_path):
    """benchmarks/latency.py -tp 2 (CPU, tiny dummy config): the engine runs sharded, and the JSON
    record and the summary line say so."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    out_json = tmp_path / "latency.json"
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, str(root / "benchmarks" / "latency.py"), "--model", str(tmp_path), "--batch-sizes", "1,2",
            "--input-len", "8", "--output-len", "4", "--num-iters", "1", "--device", "cpu", "--dtype", "float32",
            "--max-model-len", "64", "--num-gpu-blocks-override", "64", "-tp", "2", "--output-json", str(out_json)]
    env = {k: v for k, v in os.environ.items() if k != "LLMCORE_FAULT_INJECT"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=root, env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    record = json.loads(out_json.read_text())
    assert record["tensor_parallel_size"] == 2
    assert record["engine_kwargs"]["tensor_parallel_size"] == 2
    assert record["args"]["tensor_parallel_size"] == 2
    assert record["engine_stats_end"]["num_requests_finished"] == 3 * (1 + 2 * 1)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"Latency ({record['device']}, TP 2, 8 in / 4 out): batch 1: "), last
