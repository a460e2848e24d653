"""End to end on the GPU (skipped without one): the tiny checkpoints against HF transformers
within bf16 tolerance, batch invariance and KV accounting on the CUDA backend, and a
Llama-3-8B-shaped 2-layer random model against HF run in bf16 on the same GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fixtures

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda(llmcore):
    if llmcore._C.cuda_device_count() == 0:
        pytest.skip("no CUDA device (or llmcore built without the CUDA backend)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device (needed for the HF reference)")
    return torch


def _hf_logits_cuda(model, torch, ids):
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long, device="cuda"))
    return out.logits[0].double().cpu().numpy()


GPU_KW = dict(device="cuda", dtype="bfloat16", gpu_memory_utilization=0.3)


# The tiny checkpoints at head_dim 32 (fixtures.build_gpu_checkpoint; test_gpu_tp.py uses them too).
_gpu_checkpoint = fixtures.build_gpu_checkpoint


class _Engine:
    """An LLM that is shut down and released even when the test fails (its KV cache holds a
    share of the GPU's memory)."""

    def __init__(self, llmcore, path, **kw):
        self.llm = llmcore.LLM(model=str(path), **{**GPU_KW, **kw})

    def __enter__(self):
        return self.llm

    def __exit__(self, *exc):
        import gc

        self.llm.shutdown()
        del self.llm
        gc.collect()


@pytest.mark.parametrize("kind", ["llama_gqa", "llama3_rope", "qwen2_tied", "mistral_head_dim"])
def test_tiny_checkpoints_match_hf_in_bf16(kind, cuda, llmcore, tmp_path, tokenizer_dir):
    torch = cuda
    path = _gpu_checkpoint(kind, tmp_path, tokenizer_dir)
    hf32 = fixtures.load_hf_float32(path).to("cuda")
    from transformers import AutoModelForCausalLM

    hf16 = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).to("cuda").eval()
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, prompt_logprobs=1)
    prompts = fixtures.prompt_texts(6, max_words=40)
    with _Engine(llmcore, path) as llm:
        outs = llm.generate(prompts, params, use_tqdm=False)
    compared = steps = 0
    worst = worst_hf16 = 0.0
    for out in outs:
        ids = list(out.prompt_token_ids) + list(out.outputs[0].token_ids)
        lp = fixtures.log_softmax(_hf_logits_cuda(hf32, torch, ids))
        lp16 = fixtures.log_softmax(_hf_logits_cuda(hf16, torch, ids))
        n = len(out.prompt_token_ids)
        for i in range(1, n):  # prompt token i scored from position i - 1
            tok = out.prompt_token_ids[i]
            worst = max(worst, abs(out.prompt_logprobs[i][tok].logprob - lp[i - 1, tok]))
            worst_hf16 = max(worst_hf16, abs(lp16[i - 1, tok] - lp[i - 1, tok]))
        for j, tok in enumerate(out.outputs[0].token_ids):
            row = lp[n - 1 + j]
            steps += 1
            if fixtures.top2_margin(row) > 0.1:
                compared += 1
                assert tok == int(np.argmax(row)), f"{kind}: step {j} chose {tok}, HF argmax {int(np.argmax(row))}"
    print(f"{kind}: max |prompt logprob - HF fp32| llmcore bf16 {worst:.4f}, HF bf16 {worst_hf16:.4f}; "
          f"{compared}/{steps} greedy steps compared")
    # bf16 tolerance: within 2e-2 of the float32 reference, or no further from it than HF's own
    # bf16 run of the same checkpoint.
    assert worst <= max(2e-2, worst_hf16), \
        f"{kind}: prompt logprob differs from HF float32 by {worst:.4f} (HF bf16: {worst_hf16:.4f})"
    assert compared >= steps // 3, f"{kind}: only {compared} of {steps} greedy steps had a clear margin"


def test_batch_invariance_on_gpu(cuda, llmcore, tmp_path, tokenizer_dir):
    path = _gpu_checkpoint("llama_gqa", tmp_path, tokenizer_dir)
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    prompts = fixtures.prompt_texts(64, max_words=60)
    with _Engine(llmcore, path) as big:
        alone = [big.generate(p, params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts[:8]]
        batch = [o.outputs[0].token_ids for o in big.generate(prompts, params, use_tqdm=False)]
        again = [o.outputs[0].token_ids for o in big.generate(prompts, params, use_tqdm=False)]  # prefix hits
        stats = big.llm_engine.get_stats()
    assert stats["prefix_cache_hits"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    with _Engine(llmcore, path, max_num_batched_tokens=8) as chunked:
        small = [o.outputs[0].token_ids for o in chunked.generate(prompts[:8], params, use_tqdm=False)]
    assert batch[:8] == alone
    assert again == batch
    assert small == alone


def test_rows_keep_their_bits_whatever_the_step_on_gpu(cuda, llmcore, tmp_path, tokenizer_dir):
    """With max_num_seqs <= 16 the engine computes generated-token rows with its decode GEMM and
    prompt rows with cuBLASLt (backend.h, RowKinds), so each row must always take its own kind's
    kernel: a request's logprobs (not only its tokens) are bit-identical alone, in batches of up to
    16 (decode GEMM tilings for 1 to 16 rows, graphs and eager steps), with so few KV blocks that
    requests are preempted and recomputed (their generated tokens then come back as rows of a long
    step), after prefix-cache hits, and with prompts chunked into 8-token steps."""
    path = _gpu_checkpoint("llama_gqa", tmp_path, tokenizer_dir)
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    prompts = fixtures.prompt_texts(40, max_words=50)
    kw = dict(max_num_seqs=16, max_model_len=256)

    def bits(outs):
        return [(list(o.outputs[0].token_ids),
                 [sorted((t, lp.logprob) for t, lp in pos.items()) for pos in o.outputs[0].logprobs]) for o in outs]

    with _Engine(llmcore, path, **kw) as llm:
        alone = [bits(llm.generate(p, params, use_tqdm=False))[0] for p in prompts[:6]]
        batch = bits(llm.generate(prompts, params, use_tqdm=False))
        again = bits(llm.generate(prompts, params, use_tqdm=False))  # prefix-cache hits
        assert llm.llm_engine.get_stats()["prefix_cache_hits"] > 0
    with _Engine(llmcore, path, num_gpu_blocks_override=24, **kw) as tight:
        preempted = bits(tight.generate(prompts[:16], params, use_tqdm=False))
        assert tight.llm_engine.get_stats()["num_preemptions"] > 0
    with _Engine(llmcore, path, max_num_batched_tokens=8, **kw) as chunked:
        small = bits(chunked.generate(prompts[:6], params, use_tqdm=False))
    assert batch[:6] == alone
    assert again == batch
    assert preempted == batch[:16]
    assert small == alone


def test_llama3_8b_shape_two_layers_matches_hf_bf16(cuda, llmcore, tmp_path, tokenizer_dir):
    """The Llama-3-8B shapes (hidden 4096, 32/8 heads, head_dim 128, intermediate 14336, vocab
    128256, rope theta 500000) with 2 layers and HF's default random init, saved in bf16. HF runs
    the checkpoint in bf16 on the same GPU, and in float32 (the same bf16 weights upcast) as the
    referee: llmcore's prompt logprobs and greedy picks must be as close to the float32 result as
    HF's own bf16 run is."""
    torch = cuda
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        (tmp_path / f).write_bytes((tokenizer_dir / f).read_bytes())
    # References loaded from the checkpoint: casting an in-memory model with .to(bfloat16) would
    # also round its rotary inv_freq buffer, an error that grows with position.
    hf16 = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).to("cuda").eval()
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(0, 128256, size=n).tolist()} for n in (17, 128, 300)]
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, prompt_logprobs=1,
                                    detokenize=False)
    with _Engine(llmcore, tmp_path, max_model_len=1024) as llm:
        outs = llm.generate(prompts, params, use_tqdm=False)
    seqs = [list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in outs]
    lp16 = [fixtures.log_softmax(_hf_logits_cuda(hf16, torch, ids)) for ids in seqs]
    del hf16
    hf32 = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).to("cuda").eval()
    lp32 = [fixtures.log_softmax(_hf_logits_cuda(hf32, torch, ids)) for ids in seqs]
    ours_err = hf16_err = ours_vs_hf16 = 0.0
    ours_wrong = hf16_wrong = clear = 0
    for out, ids, a16, a32 in zip(outs, seqs, lp16, lp32):
        n = len(out.prompt_token_ids)
        for i in range(1, n):
            got = out.prompt_logprobs[i][ids[i]].logprob
            ours_err = max(ours_err, abs(got - a32[i - 1, ids[i]]))
            hf16_err = max(hf16_err, abs(a16[i - 1, ids[i]] - a32[i - 1, ids[i]]))
            ours_vs_hf16 = max(ours_vs_hf16, abs(got - a16[i - 1, ids[i]]))
        for j, tok in enumerate(out.outputs[0].token_ids):
            row = a32[n - 1 + j]
            if fixtures.top2_margin(row) > 0.1:
                clear += 1
                best = int(np.argmax(row))
                ours_wrong += tok != best
                hf16_wrong += int(np.argmax(a16[n - 1 + j])) != best
    print(f"8B shape, 2 layers: max |prompt logprob - fp32|: llmcore {ours_err:.4f}, HF bf16 {hf16_err:.4f}; "
          f"llmcore vs HF bf16 {ours_vs_hf16:.4f}; greedy picks off the fp32 argmax where its margin > 0.1: "
          f"llmcore {ours_wrong}/{clear}, HF bf16 {hf16_wrong}/{clear}")
    assert ours_err <= max(5e-2, 1.5 * hf16_err)
    assert ours_wrong <= hf16_wrong


def test_decode_graphs_match_eager_on_gpu(cuda, llmcore, tmp_path, tokenizer_dir):
    """Decode steps replayed from CUDA graphs (batch padded to the graph's bucket, attention
    captured for the longest context) give the bits eager steps give: the same tokens and
    logprobs for greedy and seeded sampling, at batch sizes that pad (3 -> 4, 11 -> 16) and
    contexts past the 512-key attention partition (split-K decode)."""
    path = _gpu_checkpoint("llama_gqa", tmp_path, tokenizer_dir)
    cfg = json.loads((path / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(5)
    lengths = [7, 600, 33, 1100, 90, 515, 12, 260, 700, 1, 64]
    prompts = [{"prompt_token_ids": [int(t) for t in rng.integers(3, 500, n)]} for n in lengths]
    cases = {  # batch sizes that pad; contexts within one partition only, and past it
        "short-3": [prompts[i] for i in (0, 2, 4)],
        "mixed-3": prompts[:3],
        "mixed-11": prompts,
    }
    greedy = llmcore.SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, logprobs=3)
    seeded = llmcore.SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=11, max_tokens=40,
                                    ignore_eos=True, logprobs=2)

    def run(llm, batch):
        outs = []
        for params in (greedy, seeded):
            res = llm.generate(batch, params, use_tqdm=False)
            outs.append([(list(o.outputs[0].token_ids),
                          [sorted((t, lp.logprob) for t, lp in pos.items()) for pos in o.outputs[0].logprobs])
                         for o in res])
        return outs

    with _Engine(llmcore, path) as graphs:
        sizes = list(graphs.llm_engine.native.decode_graph_sizes)
        assert 4 in sizes and 16 in sizes, sizes
        with_graphs = {name: run(graphs, batch) for name, batch in cases.items()}
    with _Engine(llmcore, path, enforce_eager=True) as eager:
        assert list(eager.llm_engine.native.decode_graph_sizes) == []
        without = {name: run(eager, batch) for name, batch in cases.items()}
    for name in cases:
        assert with_graphs[name] == without[name], f"{name}: graph replay differs from eager"
    # Padding never leaks into a row: the first three sequences agree across batch sizes.
    assert with_graphs["mixed-11"][0][:3] == with_graphs["mixed-3"][0][:3]
