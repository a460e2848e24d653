"""The benchmark scripts run end to end on the CPU with a tiny config: benchmarks/throughput.py and
benchmarks/latency.py as subprocesses (as users run them), checking the final summary line's
format, that its numbers agree with the JSON record, and the record's fields (device, commit,
exact command, workload sizes, token counts and engine stats that follow from the arguments)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

# vLLM's model-config field names; vocab 1000 exceeds the tiny-random tokenizer's 512 ids, so the
# runs also check that prompts of ids beyond the tokenizer's vocabulary are never decoded.
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
    "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
}
COMMON_FLAGS = ["--device", "cpu", "--dtype", "float32", "--max-model-len", "64", "--num-gpu-blocks-override", "64"]
NUMBER = r"(\d+(?:\.\d+)?)"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("llmcore")
    path = tmp_path_factory.mktemp("bench_model")
    (path / "config.json").write_text(json.dumps(TINY_CONFIG))
    return path


def run_script(script: str, args, tmp_path: Path):
    """-> (stdout lines, the JSON record, the command's argv) of one benchmark run."""
    out_json = tmp_path / f"{script}.json"
    argv = [sys.executable, str(BENCH / f"{script}.py"), *args, "--output-json", str(out_json)]
    env = dict(os.environ, LLMCORE_CPU_KVCACHE_SPACE="0.05")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return lines, json.loads(out_json.read_text()), argv


def check_provenance(record: dict, benchmark: str, argv) -> None:
    assert record["benchmark"] == benchmark
    assert record["device_type"] == "cpu"
    assert record["device"] and record["device_slug"] == re.sub(r"[^a-z0-9]+", "-", record["device"].lower()).strip("-")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", record["commit"])
    # The command is the one that ran: every argument, in order.
    assert record["command"].endswith(" ".join(argv[1:]))
    assert record["versions"]["python"] and record["date"]


def test_throughput_smoke(tiny_model, tmp_path):
    num_prompts, input_len, output_len = 5, 12, 6
    lines, record, argv = run_script(
        "throughput", ["--model", str(tiny_model), "--input-len", str(input_len), "--output-len", str(output_len),
                       "--num-prompts", str(num_prompts), "--num-warmup-prompts", "2", "--seed", "3", *COMMON_FLAGS],
        tmp_path)
    m = re.fullmatch(rf"Throughput: {NUMBER} requests/s, {NUMBER} total tokens/s, {NUMBER} output tokens/s", lines[-1])
    assert m, f"last line is not vLLM's summary: {lines[-1]!r}"
    req_s, total_s, out_s = map(float, m.groups())

    check_provenance(record, "throughput", argv)
    assert record["args"]["num_prompts"] == num_prompts and record["args"]["enable_prefix_caching"] is False
    r = record["result"]
    assert r["num_requests"] == num_prompts
    assert r["num_prompt_tokens"] == num_prompts * input_len
    assert r["num_output_tokens"] == num_prompts * output_len
    assert r["num_completions_short"] == 0
    elapsed = r["elapsed_s"]
    assert elapsed > 0
    # The printed rates are the counts over the timed seconds.
    assert req_s == pytest.approx(num_prompts / elapsed, rel=1e-2, abs=0.01)
    assert total_s == pytest.approx(num_prompts * (input_len + output_len) / elapsed, rel=1e-2, abs=0.01)
    assert out_s == pytest.approx(num_prompts * output_len / elapsed, rel=1e-2, abs=0.01)
    # The engine saw exactly the timed workload between the two get_stats() calls.
    timed = record["engine_stats_timed"]
    assert timed["num_requests_finished"] == num_prompts
    assert timed["num_prompt_tokens"] == num_prompts * input_len
    assert timed["num_generation_tokens"] == num_prompts * output_len
    assert record["engine_stats_after"]["num_running"] == 0
    assert record["model_config"]["vocab_size"] == TINY_CONFIG["vocab_size"]


def test_latency_smoke(tiny_model, tmp_path):
    batch_sizes, input_len, output_len, iters = [1, 3], 8, 5, 2
    lines, record, argv = run_script(
        "latency", ["--model", str(tiny_model), "--batch-sizes", ",".join(map(str, batch_sizes)),
                    "--input-len", str(input_len), "--output-len", str(output_len), "--num-iters", str(iters),
                    "--num-iters-warmup", "1", *COMMON_FLAGS],
        tmp_path)
    per_batch = (rf"batch (\d+): prefill {NUMBER} ms, decode {NUMBER} ms/token "
                 rf"\((?:{NUMBER} tok/s per seq|n/a \(t\(N\) <= t\(1\)\))\)")
    m = re.fullmatch(rf"Latency \((.+), {input_len} in / {output_len} out\): (.*)", lines[-1])
    assert m, f"last line is not the latency summary: {lines[-1]!r}"
    assert m.group(1) == record["device"]
    parts = m.group(2).split("; ")
    assert len(parts) == len(batch_sizes)

    check_provenance(record, "latency", argv)
    results = record["results"]
    assert [r["batch_size"] for r in results] == batch_sizes
    for part, r in zip(parts, results):
        pm = re.fullmatch(per_batch, part)
        assert pm, part
        assert int(pm.group(1)) == r["batch_size"]
        assert len(r["prefill_s"]) == iters and len(r["full_s"]) == iters
        # The reported figures follow from the raw timings: medians, then (t(N) - t(1)) / (N - 1).
        t1, tn = statistics.median(r["prefill_s"]), statistics.median(r["full_s"])
        assert r["prefill_ms"] == pytest.approx(t1 * 1e3)
        assert r["decode_ms_per_token"] == pytest.approx((tn - t1) / (output_len - 1) * 1e3)
        assert float(pm.group(2)) == pytest.approx(r["prefill_ms"], abs=0.006)
        assert float(pm.group(3)) == pytest.approx(r["decode_ms_per_token"], abs=0.0006)
    # Every run was checked to produce its tokens: warm-up (1 full) + iters x (1-token + full) per batch size.
    stats = record["engine_stats_end"]
    expected_requests = sum(b * (1 + 2 * iters) for b in batch_sizes)
    expected_generated = sum(b * (output_len + iters * (1 + output_len)) for b in batch_sizes)
    assert stats["num_requests_finished"] == expected_requests
    assert stats["num_generation_tokens"] == expected_generated
    assert stats["num_prompt_tokens"] == expected_requests * input_len
    assert stats["prefix_cache_hits"] == 0
