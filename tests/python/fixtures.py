"""Tiny HuggingFace checkpoints for the end-to-end tests, built from nothing in a few seconds.

Everything here is deterministic and offline: the English training text comes from a seeded
generator, the sentencepiece tokenizer is trained on it with the Python `sentencepiece` library,
and the models are transformers' own config + model classes from a seeded random init, saved
with `save_pretrained` (safetensors). The weights are scaled up (std ~0.2 instead of 0.02) so
the logits are far from uniform and greedy steps have clear top-2 margins; otherwise every
comparison would sit on a near-tie and prove nothing.

`build_checkpoint(name, root, tokenizer_dir)` builds one variant of `VARIANTS`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

VOCAB_SIZE = 512
# A ChatML template, for tests that serve a tiny checkpoint's chat endpoint.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
          "{% endif %}")

BOS_ID, EOS_ID, UNK_ID = 1, 2, 0

# Words for the training text; a small closed vocabulary so 512 pieces cover whole words.
_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our neighbor", "the old man",
             "a little girl", "the farmer", "her brother", "the doctor", "a bird", "the river",
             "the children", "his mother", "the captain", "a young woman"]
_VERBS = ["walks to", "looks at", "talks about", "runs past", "thinks about", "waits for",
          "writes to", "reads about", "sings for", "paints", "finds", "remembers", "builds",
          "carries", "follows", "watches"]
_OBJECTS = ["the house", "a red apple", "the green garden", "the market", "an open window",
            "the long road", "a quiet village", "the blue sea", "the tall tree", "a small boat",
            "the morning train", "the city library", "a warm fire", "the mountain", "the bridge",
            "an old letter"]
_TAILS = ["every morning", "after the rain", "before dinner", "in the evening", "on sunday",
          "with great care", "without a word", "for a long time", "near the station",
          "under the stars", "at noon", "during the winter", "because it is late", "again",
          "once more", "with a smile"]
_EXTRAS = ["It was a good day.", "Nobody knew why.", "Then they went home.",
           "The weather was cold and bright.", "Numbers like 12, 345 and 6789 appear too.",
           "She said: \"Hello, world!\"", "What time is it?", "Yes, of course.",
           "One, two, three, four, five.", "The end (for now)."]


def training_text(num_lines: int = 400, seed: int = 1234) -> str:
    """Deterministic English-like lines (one sentence or two per line)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
        s = s[0].upper() + s[1:]
        if rng.random() < 0.3:
            s += " " + rng.choice(_EXTRAS)
        lines.append(s)
    return "\n".join(lines) + "\n"


def build_tokenizer(out_dir: Path) -> Path:
    """Trains a BPE sentencepiece model with byte fallback; writes tokenizer.model and
    tokenizer_config.json (HF Llama conventions: add BOS, no EOS)."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text(training_text(), encoding="utf-8")
    prefix = out_dir / "spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), model_type="bpe", vocab_size=VOCAB_SIZE,
        byte_fallback=True, character_coverage=1.0, unk_id=UNK_ID, bos_id=BOS_ID,
        eos_id=EOS_ID, pad_id=-1, num_threads=1, minloglevel=2,
        # Deterministic across runs: no sentence sampling, no shuffling.
        input_sentence_size=0, shuffle_input_sentence=False)
    shutil.move(str(prefix) + ".model", out_dir / "tokenizer.model")
    os.remove(str(prefix) + ".vocab")
    corpus.unlink()
    tok_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 512,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))
    return out_dir


def load_sp(tokenizer_dir: Path):
    """The sentencepiece processor of a tokenizer directory (the reference tokenizer)."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model"))


def byte_token_ids(sp) -> list:
    """Ids of the <0xNN> byte-fallback pieces."""
    return [i for i in range(sp.get_piece_size()) if sp.is_byte(i)]


# ---------------------------------------------------------------------------------------------
# Models

_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               max_position_embeddings=512, vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID,
               eos_token_id=EOS_ID, rms_norm_eps=1e-5, initializer_range=0.2)


def _randomize_(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Re-initializes every parameter: matrices and biases ~ N(0, std), norm weights
    ~ 1 + N(0, 0.2). HF initializes biases to 0 and norms to 1, which would leave the bias and
    norm-weight loading paths untested (a loader that dropped them would still pass)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(std * noise)


def _save(model, out_dir: Path, dtype: torch.dtype, **save_kwargs) -> None:
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(str(out_dir), safe_serialization=True, **save_kwargs)


def _llama_gqa(out_dir: Path, seed: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=2,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = LlamaForCausalLM(cfg)
    _randomize_(model, seed)
    _save(model, out_dir, torch.float32)


def _llama3_config():
    from transformers import LlamaConfig

    # original_max_position_embeddings 64 with head_dim 16 puts the 8 rotary frequencies in all
    # three llama3 regimes (wavelength < 16 unscaled, 16..64 smoothed, > 64 divided by factor).
    return LlamaConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=2,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                        "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64})


def _llama3_rope(out_dir: Path, seed: int) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_llama3_config())
    _randomize_(model, seed)
    _save(model, out_dir, torch.bfloat16)


def _llama3_classic(out_dir: Path, seed: int) -> None:
    """llama3 rope again, with config.json rewritten in the pre-v5 spelling: top-level
    rope_theta, rope_scaling {rope_type: llama3, ...} and torch_dtype."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_llama3_config())
    _randomize_(model, seed)
    _save(model, out_dir, torch.float16)
    path = out_dir / "config.json"
    cfg = json.loads(path.read_text())
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2))


def _mistral_head_dim(out_dir: Path, seed: int) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    # head_dim 32 with 4 heads: q_proj is [128, 64], not [64, 64].
    cfg = MistralConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        sliding_window=None,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    model = MistralForCausalLM(cfg)
    _randomize_(model, seed)
    _save(model, out_dir, torch.float16)


def _qwen2_tied(out_dir: Path, seed: int) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**_COMMON, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True, use_sliding_window=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = Qwen2ForCausalLM(cfg)
    _randomize_(model, seed)
    model.tie_weights()
    _save(model, out_dir, torch.float32)


def _llama_sharded(out_dir: Path, seed: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    # 4 attention heads, 4 kv heads (plain MHA), several safetensors shards + index.json.
    cfg = LlamaConfig(**_COMMON, num_attention_heads=4, num_key_value_heads=4,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = LlamaForCausalLM(cfg)
    _randomize_(model, seed)
    _save(model, out_dir, torch.float32, max_shard_size="100KB")


VARIANTS: Dict[str, Callable[[Path, int], None]] = {
    "llama_gqa": _llama_gqa,
    "llama3_rope": _llama3_rope,
    "llama3_classic": _llama3_classic,
    "mistral_head_dim": _mistral_head_dim,
    "qwen2_tied": _qwen2_tied,
    "llama_sharded": _llama_sharded,
}

_SEEDS = {name: 100 + i for i, name in enumerate(VARIANTS)}


def build_checkpoint(name: str, root: Path, tokenizer_dir: Path) -> Path:
    """Builds variant `name` under root/name with the tokenizer files copied in."""
    out_dir = Path(root) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(_SEEDS[name])
    VARIANTS[name](out_dir, _SEEDS[name])
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(tokenizer_dir) / f, out_dir / f)
    return out_dir


def build_gpu_checkpoint(kind: str, out_dir: Path, tokenizer_dir: Path) -> Path:
    """The tiny fixtures' architectures at head_dim 32 (the CUDA kernels take head dims 32 to
    256; real models use 64 or 128) with weights of std 0.05, which keeps logits in the range
    bf16 tolerances are stated for. `kind`: llama_gqa, llama3_rope, qwen2_tied or
    mistral_head_dim (all 4 query / 2 KV heads)."""
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    common = dict(_COMMON, hidden_size=128, intermediate_size=256)
    if kind == "llama_gqa":
        model = LlamaForCausalLM(LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
        dtype = torch.float32
    elif kind == "llama3_rope":
        model = LlamaForCausalLM(LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2,
                                             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                              "factor": 8.0, "low_freq_factor": 1.0,
                                                              "high_freq_factor": 4.0,
                                                              "original_max_position_embeddings": 64}))
        dtype = torch.bfloat16
    elif kind == "qwen2_tied":
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=True, use_sliding_window=False,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
        dtype = torch.float32
    elif kind == "mistral_head_dim":  # head_dim 64 != hidden / heads = 32
        model = MistralForCausalLM(MistralConfig(**common, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                                 sliding_window=None,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
        dtype = torch.float16
    else:
        raise ValueError(kind)
    _randomize_(model, seed=7, std=0.05)
    if kind == "qwen2_tied":
        model.tie_weights()
    _save(model, out_dir, dtype)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / f, out_dir / f)
    return out_dir


def load_hf_float32(path: Path):
    """The reference: the checkpoint in float32 on CPU, eager attention, eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Prompts

def prompt_texts(num: int, seed: int = 7, max_words: int = 60) -> list:
    """`num` English-like prompts of mixed lengths (1 .. max_words words), deterministic."""
    rng = random.Random(seed)
    words = " ".join(_SUBJECTS + _VERBS + _OBJECTS + _TAILS).split()
    out = []
    for i in range(num):
        n = 1 + (i * 7919 + rng.randrange(max_words)) % max_words
        text = " ".join(rng.choice(words) for _ in range(n))
        out.append(text[0].upper() + text[1:])
    return out


# ---------------------------------------------------------------------------------------------
# HF reference computations (float64 on top of HF's float32 logits)

def hf_logits(model, token_ids) -> "np.ndarray":
    """Raw logits of one teacher-forced pass: row i is the distribution of token i + 1.
    [len(token_ids), vocab] float64."""
    import numpy as np

    with torch.no_grad():
        out = model(torch.tensor([list(token_ids)], dtype=torch.long))
    return out.logits[0].to(torch.float64).numpy().astype(np.float64)


def log_softmax(logits: "np.ndarray") -> "np.ndarray":
    import numpy as np

    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def top2_margin(row: "np.ndarray") -> float:
    import numpy as np

    top = np.partition(row, -2)[-2:]
    return float(top[1] - top[0])


def rank_bounds(row: "np.ndarray", token: int, tol: float) -> tuple:
    """The 1-based rank of `token` in `row` (vLLM: 1 + number of strictly better tokens),
    as an interval that absorbs ties within `tol`."""
    v = row[token]
    return 1 + int((row > v + tol).sum()), 1 + int((row > v - tol).sum())


def check_position_logprobs(entry, ref_row, token: int, k: int, tol: float, where: str) -> None:
    """Checks one vLLM logprobs dict {token_id: Logprob} against a reference log_softmax row:
    it holds the top-k (ranks 1..k, ids and values) plus `token` with its true rank."""
    import numpy as np

    assert isinstance(entry, dict), f"{where}: logprobs entry is {type(entry)}"
    assert token in entry, f"{where}: chosen token {token} missing from {sorted(entry)}"
    sorted_ref = np.sort(ref_row)[::-1]
    for tid, lp in entry.items():
        assert 0 <= tid < ref_row.shape[0], f"{where}: token id {tid} out of range"
        assert abs(lp.logprob - ref_row[tid]) <= tol, (
            f"{where}: logprob of token {tid} is {lp.logprob}, reference {ref_row[tid]:.6f}")
        lo, hi = rank_bounds(ref_row, tid, tol)
        assert lo <= lp.rank <= hi, f"{where}: rank of token {tid} is {lp.rank}, reference {lo}..{hi}"
    top_ranks = sorted(lp.rank for lp in entry.values() if lp.rank <= k)
    assert top_ranks == list(range(1, k + 1)), f"{where}: top-{k} ranks are {top_ranks}"
    for tid, lp in entry.items():
        if lp.rank <= k:
            assert abs(lp.logprob - sorted_ref[lp.rank - 1]) <= tol, (
                f"{where}: rank {lp.rank} entry (token {tid}) has {lp.logprob}, "
                f"reference rank-{lp.rank} logprob {sorted_ref[lp.rank - 1]:.6f}")
    extra = [t for t, lp in entry.items() if lp.rank > k]
    assert extra in ([], [token]), f"{where}: entries beyond the top-{k}: {extra}"
    assert len(entry) in (k, k + 1), f"{where}: {len(entry)} entries for k={k}"


def sp_output_text(sp, prompt_ids, output_ids) -> str:
    """What an output's text is (vLLM semantics): the decoding of prompt + output minus the
    decoding of the prompt, so the first output token keeps its leading space."""
    full = sp.decode(list(prompt_ids) + list(output_ids))
    head = sp.decode(list(prompt_ids))
    assert full.startswith(head), (full, head)
    return full[len(head):]


# ---------------------------------------------------------------------------------------------
# Engine state

def wait_idle(llm, timeout_s: float = 10.0) -> dict:
    """Stats once nothing is running or waiting (an abort may land one engine step after the
    caller returns); fails if the engine does not get there within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = llm.llm_engine.get_stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"engine not idle after {timeout_s}s: {stats}")
        time.sleep(0.01)


def assert_all_blocks_free(llm, timeout_s: float = 10.0) -> dict:
    """Every KV block is free (cached-but-unreferenced prefix blocks count as free). Waits for
    the engine to be idle first, then also gives freeing a moment (it may be the last thing the
    engine step does); a leak fails."""
    stats = wait_idle(llm, timeout_s)
    deadline = time.monotonic() + 2.0
    while stats["num_free_blocks"] != stats["num_total_blocks"] and time.monotonic() < deadline:
        time.sleep(0.01)
        stats = llm.llm_engine.get_stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"], f"leaked KV blocks: {stats}"
    return stats


# ---------------------------------------------------------------------------------------------
# Tensor parallelism: a rank that fails on purpose (LLMCORE_FAULT_INJECT) in a child process

# Child process: builds the LLM (kwargs as JSON in argv[2]) on argv[1], then makes one
# LLM.generate call per prompt from as many threads at once (the requests in flight at the
# failure), then one more call once those have returned (a request after the failure). Prints one
# line "RESULT {json}" and exits 3 when every call raised, 0 when one finished without an error.
_FAULT_SCRIPT = r"""
import json, sys, threading, time
import llmcore

llm = llmcore.LLM(model=sys.argv[1], **json.loads(sys.argv[2]))
params = llmcore.SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
prompts = ["The cat walks to the house", "A dog", "Numbers like 12, 345 and 6789 appear too.",
           "The old man remembers the long road after the rain"]
errors = [None] * (len(prompts) + 1)
barrier = threading.Barrier(len(prompts))

def call(i, prompt):
    if i < len(prompts):
        barrier.wait()
    try:
        llm.generate(prompt, params, use_tqdm=False)
    except Exception as e:
        errors[i] = {"type": type(e).__name__, "is_runtime_error": isinstance(e, RuntimeError),
                     "message": str(e), "at": time.monotonic()}

t0 = time.monotonic()
threads = [threading.Thread(target=call, args=(i, p)) for i, p in enumerate(prompts)]
for t in threads:
    t.start()
for t in threads:
    t.join()
call(len(prompts), "One more request")
healthy = llm.llm_engine.is_healthy()
t1 = time.monotonic()
llm.shutdown()
result = {"errors": errors, "started_at": t0, "healthy_after": healthy,
          "shutdown_s": time.monotonic() - t1, "done_at": time.monotonic()}
print("RESULT " + json.dumps(result), flush=True)
sys.exit(3 if all(errors) else 0)
"""


def run_fault_script(model: Path, fault: str, timeout_s: float, **llm_kwargs) -> dict:
    """Runs _FAULT_SCRIPT with LLMCORE_FAULT_INJECT=fault in a child Python; fails the test if it
    is still running after timeout_s (a rank left waiting in a collective). Returns the child's
    RESULT dict plus returncode, exited_at (time.monotonic(), comparable with the child's
    times: CLOCK_MONOTONIC is system-wide) and output (its stdout and stderr)."""
    env = dict(os.environ, LLMCORE_FAULT_INJECT=fault, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-c", _FAULT_SCRIPT, str(model), json.dumps(llm_kwargs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        out = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr)]
        raise AssertionError(f"LLMCORE_FAULT_INJECT={fault}: the process was still running after {timeout_s} s "
                             f"(a rank hangs?)\nstdout:\n{out[0]}\nstderr:\n{out[1][-4000:]}") from None
    exited_at = time.monotonic()
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"LLMCORE_FAULT_INJECT={fault}: no RESULT line (exit code {proc.returncode})\n{output}"
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(returncode=proc.returncode, exited_at=exited_at, output=output)
    return result
