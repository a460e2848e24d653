"""The benchmark scripts run end to end on the CPU with a tiny config: benchmarks/throughput.py and
benchmarks/latency.py as subprocesses (as users run them), checking the final summary line's
format, that its numbers agree with the JSON record, and the record's fields (device, commit,
exact command, workload sizes, token counts and engine stats that follow from the arguments).
benchmarks/serving.py launches the OpenAI server on the tiny config itself and is checked the same
way: every request completes with its exact lengths, latencies are consistent, --max-concurrency
and the seeded Poisson arrivals hold, and --compare-offline reruns the same requests offline."""

from __future__ import annotations

import json
import os
import random
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
        assert set(r["host_ms_per_step"]) == {"schedule", "execute", "sample", "output"}
        assert all(v >= 0 for v in r["host_ms_per_step"].values())
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


# -- benchmarks/serving.py: the OpenAI server under load, launched by the script itself ----------
TINY_TOKENIZER = ROOT / "python" / "llmcore" / "models" / "tiny-random"
SERVER_FLAGS = ["--tokenizer", str(TINY_TOKENIZER), "--load-format", "dummy", "--device", "cpu", "--dtype", "float32",
                "--max-model-len", "64", "--num-gpu-blocks-override", "64"]
BLOCK_ROW = re.compile(r"(.+?):\s+(-?\d+(?:\.\d+)?)")


def load_bench_module(name: str):
    """benchmarks/<name>.py imported as a module (it finds its siblings itself)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_serving(args, tmp_path: Path, expect_ok: bool = True, extra_env=None):
    """-> (stdout lines, the JSON record or None, argv, the process) of one serving.py run."""
    out_json = tmp_path / "serving.json"
    argv = [sys.executable, str(BENCH / "serving.py"), *args, "--output-json", str(out_json)]
    env = dict(os.environ, LLMCORE_CPU_KVCACHE_SPACE="0.05", **(extra_env or {}))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    if expect_ok:
        assert proc.returncode == 0, f"serving.py failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    record = json.loads(out_json.read_text()) if out_json.exists() else None
    return lines, record, argv, proc


def block_values(lines) -> dict:
    """The rows of vLLM's result block: {'Successful requests': 5.0, 'Mean TTFT (ms)': ...}."""
    start = next(i for i, line in enumerate(lines) if "Serving Benchmark Result" in line)
    end = next(i for i in range(start + 1, len(lines)) if set(lines[i]) == {"="})
    return {m.group(1): float(m.group(2)) for line in lines[start + 1:end] if (m := BLOCK_ROW.fullmatch(line))}


def test_profile_step_smoke(tiny_model, tmp_path):
    """profile_step.py on the CPU: no kernels to trace, but the steps, the host phases and the
    summary line are there, for the one workload asked for."""
    decode_tokens = 4
    lines, record, argv = run_script(
        "profile_step", ["--model", str(tiny_model), "--workloads", "decode-b1", "--decode-tokens",
                         str(decode_tokens), *COMMON_FLAGS, "--max-model-len", "160"], tmp_path)
    check_provenance(record, "profile_step", argv)
    assert list(record["results"]) == ["decode-b1"]
    r = record["results"]["decode-b1"]
    # One prefill step and decode_tokens - 1 decode steps per generate() call.
    assert r["steps"] == decode_tokens
    assert r["wall_ms_per_step"] > 0 and r["timeline"] == {} and r["kernels"] == []
    assert set(r["host_ms_per_step"]) == {"schedule", "execute", "sample", "output"}
    m = re.fullmatch(rf"Profile: decode-b1 {NUMBER} ms/step \((\d+)% GPU busy\)", lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) == pytest.approx(r["wall_ms_per_step"], abs=0.006)


def test_profile_step_offline_window_smoke(tiny_model, tmp_path):
    """The offline workload traces a window inside one generate call of all its prompts: the steps
    counted are those of the window (some, not all), and each samples at most one token per prompt."""
    prompts, output_len = 24, 128
    lines, record, argv = run_script(
        "profile_step", ["--model", str(tiny_model), "--workloads", "offline", "--offline-prompts", str(prompts),
                         "--offline-input-len", "16", "--offline-output-len", str(output_len),
                         "--window-start-s", "0.1", "--window-s", "0.2", *COMMON_FLAGS, "--max-model-len", "160"],
        tmp_path)
    check_provenance(record, "profile_step", argv)
    r = record["results"]["offline"]
    assert r["window"]["start_s"] == 0.1 and r["window"]["window_s"] == 0.2
    # The call outlasts the window, and what was traced is the window, not the whole call.
    assert r["window"]["generate_s"] > 0.3 + 0.1
    assert r["steps"] > 0 and r["wall_ms_per_step"] * r["steps"] == pytest.approx(200, rel=0.3)
    assert 0 < r["generated_tokens_per_step"] <= prompts
    assert lines[-1].startswith("Profile: offline ")


def test_ttft_trace_stamps_each_request_in_order(tiny_model, tmp_path):
    """benchmarks/ttft_trace: with the server's functions wrapped, every streamed request (the warm-up
    one too) gets all its stamps, in the order the request passes them, and report.py reads them."""
    pytest.importorskip("aiohttp")
    trace = tmp_path / "trace.jsonl"
    path = os.pathsep.join([str(BENCH / "ttft_trace"), os.environ.get("PYTHONPATH", "")])
    n = 3
    run_serving(["--launch-server", "--model", str(tiny_model), *SERVER_FLAGS, "--num-prompts", str(n),
                 "--random-input-len", "12", "--random-output-len", "4", "--max-concurrency", "1",
                 "--save-detailed", "--client", "aiohttp", "--disable-tqdm"], tmp_path,
                extra_env={"LLMCORE_TTFT_TRACE": str(trace), "PYTHONPATH": path})
    stamps = {}
    for line in trace.read_text().splitlines():
        d = json.loads(line)
        stamps.setdefault(d.pop("rid"), {}).update(d)
    assert len(stamps) == n + 1  # and the warm-up request
    order = "ABCSDREGIJHF"
    for rid, st in stamps.items():
        assert sorted(st) == sorted(order), rid
        times = [st[k] for k in order]
        assert times == sorted(times), (rid, {k: st[k] - st["A"] for k in order})
    report = subprocess.run([sys.executable, str(BENCH / "ttft_trace" / "report.py"), str(trace),
                             str(tmp_path / "serving.json")], capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines()[0] == f"{n + 1} of {n + 1} requests have every stamp"
    assert "client TTFT" in report.stdout


def test_serving_smoke_completions_and_offline(tiny_model, tmp_path):
    pytest.importorskip("aiohttp")
    np = pytest.importorskip("numpy")
    n, input_len, output_len, concurrency = 5, 12, 6, 2
    lines, record, argv, _ = run_serving(
        ["--launch-server", "--model", str(tiny_model), *SERVER_FLAGS, "--num-prompts", str(n),
         "--random-input-len", str(input_len), "--random-output-len", str(output_len),
         "--max-concurrency", str(concurrency), "--seed", "3", "--compare-offline", "--save-detailed",
         "--client", "aiohttp", "--disable-tqdm"], tmp_path)
    check_provenance(record, "serving", argv)
    r = record["result"]
    # What was asked for came back: every request, its exact lengths (ignore_eos + max_tokens).
    assert r["completed"] == n and r["failed"] == 0 and record["errors"] == []
    assert r["total_input_tokens"] == n * input_len
    assert r["total_output_tokens"] == n * output_len
    req = record["requests"]
    assert req["input_lens"] == [input_len] * n and req["output_lens"] == [output_len] * n
    for ttft, itl, e2el in zip(req["ttfts"], req["itls"], req["e2els"]):
        assert 0 < ttft <= e2el
        assert ttft + sum(itl) <= e2el + 1e-9
        assert len(itl) <= output_len - 1  # at most one chunk per token after the first
    # --max-concurrency 2: no instant has more than two requests between send and [DONE].
    spans = list(zip(req["start_times"], [s + e for s, e in zip(req["start_times"], req["e2els"])]))
    for s, _ in spans:
        assert sum(1 for a, b in spans if a <= s < b) <= concurrency
    # The summary figures follow from the per-request timings (numpy as the reference statistics).
    ttfts, e2els = np.array(req["ttfts"]), np.array(req["e2els"])
    assert r["mean_ttft_ms"] == pytest.approx(ttfts.mean() * 1e3)
    assert r["p99_ttft_ms"] == pytest.approx(np.percentile(ttfts, 99) * 1e3)
    assert r["median_tpot_ms"] == pytest.approx(np.median((e2els - ttfts) / (output_len - 1)) * 1e3)
    itls = np.concatenate([np.array(x) for x in req["itls"]])
    assert r["p99_itl_ms"] == pytest.approx(np.percentile(itls, 99) * 1e3)
    assert r["output_throughput"] == pytest.approx(n * output_len / r["duration"])
    # The server's own timings (its /metrics) cover exactly the timed requests, and the engine's TTFT
    # (from its arrival in the engine) lies inside the client's, its queue time inside that.
    side = record["server_side"]
    assert side["requests"] == n
    assert 0 < side["mean_queue_ms"] <= side["mean_ttft_ms"] <= r["mean_ttft_ms"]
    # Prompts are ids inside the tokenizer's vocabulary (sentencepiece's own count).
    spm = pytest.importorskip("sentencepiece")
    pieces = spm.SentencePieceProcessor(model_file=str(TINY_TOKENIZER / "tokenizer.model")).get_piece_size()
    assert record["workload"]["vocab_size"] == pieces
    assert record["server"]["launched"] and "--num-gpu-blocks-override" in record["server"]["server_argv"]
    assert record["client"] == "aiohttp"

    # The printed block is vLLM's and shows the record's numbers.
    block = block_values(lines)
    assert block["Successful requests"] == n
    assert block["Total input tokens"] == n * input_len and block["Total generated tokens"] == n * output_len
    assert block["Output token throughput (tok/s)"] == pytest.approx(r["output_throughput"], abs=0.006)
    for name in ("TTFT", "TPOT", "ITL"):
        assert block[f"Median {name} (ms)"] == pytest.approx(r[f"median_{name.lower()}_ms"], abs=0.006)
        assert f"P99 {name} (ms)" in block
    assert "Mean E2EL (ms)" not in block  # not among the default --percentile-metrics

    # Offline: the same requests on the server's engine flags, max_num_seqs capped at the concurrency.
    off = record["offline"]
    assert off["num_requests"] == n
    assert off["total_input_tokens"] == n * input_len and off["total_output_tokens"] == n * output_len
    assert off["engine_kwargs"]["max_num_seqs"] == concurrency
    assert off["engine_kwargs"]["num_gpu_blocks_override"] == 64 and off["engine_kwargs"]["load_format"] == "dummy"
    assert record["serving_over_offline"] == pytest.approx(r["output_throughput"] / off["output_throughput"])

    m = re.fullmatch(
        rf"Serving \((.+), /v1/completions, {n} x {input_len} in / {output_len} out, concurrency {concurrency}, "
        rf"rate inf\): {n}/{n} ok in {NUMBER} s, {NUMBER} req/s, {NUMBER} output tok/s, {NUMBER} total tok/s, "
        rf"median TTFT {NUMBER} ms, TPOT {NUMBER} ms, ITL {NUMBER} ms; offline {NUMBER} output tok/s, "
        rf"serving/offline {NUMBER}", lines[-1])
    assert m, f"last line is not the serving summary: {lines[-1]!r}"
    assert m.group(1) == record["device"]
    assert float(m.group(4)) == pytest.approx(r["output_throughput"], abs=0.006)
    assert float(m.group(9)) == pytest.approx(off["output_throughput"], abs=0.006)
    assert float(m.group(10)) == pytest.approx(record["serving_over_offline"], abs=0.0006)


def test_serving_smoke_chat_poisson_httpx(tiny_model, tmp_path):
    pytest.importorskip("httpx")
    n, output_len, rate, seed = 4, 5, 20.0, 7
    lines, record, argv, _ = run_serving(
        ["--launch-server", "--model", str(tiny_model), *SERVER_FLAGS,
         "--chat-template", "{% for m in messages %}{{ m['content'] }}{% endfor %}",
         "--endpoint", "/v1/chat/completions", "--num-prompts", str(n), "--random-input-len", "10",
         "--random-output-len", str(output_len), "--request-rate", str(rate), "--seed", str(seed),
         "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,90", "--save-detailed",
         "--client", "httpx", "--disable-tqdm"], tmp_path)
    r, req = record["result"], record["requests"]
    assert r["completed"] == n and r["total_output_tokens"] == n * output_len
    assert req["output_lens"] == [output_len] * n
    # Chat prompts are text, so their token counts come from the server's usage.
    assert all(x > 0 for x in req["input_lens"]) and r["total_input_tokens"] == sum(req["input_lens"])
    assert all(t <= e for t, e in zip(req["ttfts"], req["e2els"]))
    assert all(len(itl) <= output_len - 1 for itl in req["itls"])  # the role-only opener is no token
    # Seeded Poisson arrivals: exponential intervals of mean 1/rate, Random(seed)'s draws.
    rng, t, expected = random.Random(seed), 0.0, []
    for _ in range(n):
        expected.append(t)
        t += rng.expovariate(rate)
    for start, due in zip(req["start_times"], expected):
        assert due - 1e-3 <= start < due + 0.5
    block = block_values(lines)
    for key in ("P50 TTFT (ms)", "P90 TTFT (ms)", "P50 E2EL (ms)", "P90 E2EL (ms)"):
        assert key in block
    assert "Mean TPOT (ms)" not in block
    assert r["p90_e2el_ms"] == pytest.approx(statistics.quantiles(req["e2els"], n=10, method="inclusive")[8] * 1e3)
    assert record["client"] == "httpx" and record["workload"]["request_rate"] == rate
    assert "/v1/chat/completions" in lines[-1] and f"rate {rate}" in lines[-1]


def test_serving_refuses_what_the_server_refuses(tiny_model, tmp_path):
    # 60 prompt + 10 output tokens exceed the server's max_model_len of 64: the warm-up request
    # gets the server's 400 and the run stops there, naming it.
    lines, record, _, proc = run_serving(
        ["--launch-server", "--model", str(tiny_model), *SERVER_FLAGS, "--num-prompts", "2",
         "--random-input-len", "60", "--random-output-len", "10", "--disable-tqdm",
         "--server-log", str(tmp_path / "server.log")], tmp_path, expect_ok=False)
    assert proc.returncode != 0 and record is None
    assert (tmp_path / "server.log").exists()
    assert "warm-up request failed" in proc.stderr and "HTTP 400" in proc.stderr and "max_model_len" in proc.stderr


def test_serving_arrivals_and_percentiles():
    serving = load_bench_module("serving")
    assert serving.arrival_times(5, float("inf"), 1.0, 0) == [0.0] * 5
    for burstiness in (1.0, 0.5):
        times = serving.arrival_times(20001, 4.0, burstiness, 1)
        gaps = [b - a for a, b in zip(times, times[1:])]
        mean = statistics.fmean(gaps)
        # Gamma(k, 1/(rate k)) intervals: mean 1/rate, coefficient of variation 1/sqrt(k).
        assert mean == pytest.approx(0.25, rel=0.03)
        assert statistics.pstdev(gaps) / mean == pytest.approx(burstiness ** -0.5, rel=0.05)
    np = pytest.importorskip("numpy")
    values = [random.Random(2).random() for _ in range(37)]
    for p in (0, 50, 90, 99, 99.9, 100):
        assert serving.percentile(values, p) == pytest.approx(np.percentile(values, p))
    assert serving.percentile([], 99) == 0.0


def test_serving_sse_parsing():
    import asyncio

    client = load_bench_module("serving_client")

    async def events(lines):
        async def gen():
            for line in lines:
                yield line
        return [e async for e in client.sse_events(gen())]

    lines = [": a comment", "data: {\"a\": 1}", "", "data:{\"b\": 2}", "data: 3", "", "", "data: [DONE]"]
    assert asyncio.run(events(lines)) == ['{"a": 1}', '{"b": 2}\n3', "[DONE]"]
    opener = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    empty_token = {"choices": [{"index": 0, "delta": {"role": None, "content": None}}]}
    usage = {"choices": [], "usage": {"completion_tokens": 3}}
    assert not client.carries_tokens(opener, chat=True) and client.carries_tokens(empty_token, chat=True)
    assert not client.carries_tokens(usage, chat=False)
    assert client.carries_tokens({"choices": [{"index": 0, "text": ""}]}, chat=False)
