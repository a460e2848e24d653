"""Online serving benchmark of llmcore's OpenAI-compatible server, measured as vLLM's
benchmarks/benchmark_serving.py measures it on its random dataset:

    # a server already running (python3 -m llmcore.server --model M ...)
    python3 benchmarks/serving.py --num-prompts 1000 --max-concurrency 64
    # one command: start the server, measure, stop it, then the same requests offline
    python3 benchmarks/serving.py --launch-server --model benchmarks/configs/llama-3-8b \\
        --tokenizer python/llmcore/models/tiny-random --load-format dummy --max-concurrency 64 --compare-offline

Workload: --num-prompts prompts of --random-input-len token ids (lengths drawn from
[L * (1 - r), L * (1 + r)] with r = --random-range-ratio), uniform over the tokenizer's vocabulary
(vLLM samples from the tokenizer's vocabulary too; with r = 0 they are throughput.py's prompts for
the same seed and vocabulary). /v1/completions gets them as token-id prompts, so the server sees
exactly that many tokens (vLLM decodes them to text, whose re-encoding drifts); /v1/chat/completions
gets their decoded text as one user message. Every request streams with stream_options.include_usage,
max_tokens = --random-output-len and ignore_eos (unless --no-ignore-eos), so outputs have exact
lengths; temperature 0 as vLLM's client sends. Arrivals: all at once (--request-rate inf), else a
seeded Poisson process (gamma intervals with --burstiness != 1); --max-concurrency caps requests in
flight. One untimed warm-up request (another prompt of the same shape) checks the setup first.

Per request: TTFT = send -> first SSE chunk carrying tokens; ITL = time between later such chunks;
E2E = send -> [DONE]; output tokens from usage.completion_tokens (else the chunks counted); TPOT =
(E2E - TTFT) / (output tokens - 1). The duration runs from the first send to the last response.
A chunk carries tokens when it has choices (the chat role-only opener aside): this server sends one
only when the engine produced tokens, whose text may be empty (ids past the tokenizer's vocabulary).

--launch-server starts `python -m llmcore.server` with --model, --tokenizer and every flag this
script does not know (e.g. --load-format dummy --device cuda --max-num-seqs 256), waits for /health,
runs, then stops it with SIGTERM. --compare-offline then runs the same requests (token ids, max_tokens,
ignore_eos, temperature, detokenized as the server does) through LLM.generate in a fresh process,
on the engine the server flags describe with max_num_seqs capped at --max-concurrency (the most the
served engine ever ran at once), and reports both output-token rates and serving / offline.

Prints vLLM's result block, then one summary line last; writes JSON (device, commit, command, args,
metrics; per-request timings with --save-detailed) to benchmarks/results/serving-<device>-<date>.json
(--result-dir, --output-json / --result-filename change where).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from serving_client import RequestResult, http_get, pick_client, run_requests  # noqa: E402

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
METRICS = {"ttft": ("TTFT", "Time to First Token"), "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
           "itl": ("ITL", "Inter-token Latency"), "e2el": ("E2EL", "End-to-end Latency")}


@dataclass
class SampleRequest:
    prompt_token_ids: List[int]
    output_len: int
    prompt: Optional[str] = None  # the decoded text, sent to the chat endpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="With --launch-server, flags not listed here go to python -m llmcore.server.")
    s = p.add_argument_group("server")
    s.add_argument("--base-url", default=None, help="http://HOST:PORT (default: from --host and --port)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=None, help="default 8000; a free port with --launch-server")
    s.add_argument("--endpoint", default="/v1/completions", choices=ENDPOINTS)
    s.add_argument("--model", default=None,
                   help="the served model name (default: the first of GET /v1/models); with --launch-server, "
                        "the checkpoint or config directory to serve")
    s.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: the served model's path, as GET /v1/models reports it); "
                        "with --launch-server also the server's --tokenizer")
    s.add_argument("--launch-server", action="store_true", help="start the server, run, stop it (SIGTERM)")
    s.add_argument("--server-timeout", type=float, default=900.0, help="seconds to wait for /health")
    s.add_argument("--server-log", default=None, help="the launched server's output (default: a temporary file)")
    s.add_argument("--compare-offline", action="store_true",
                   help="after the run, the same requests through LLM.generate (needs --launch-server)")
    w = p.add_argument_group("workload (vLLM's random dataset)")
    w.add_argument("--dataset-name", default="random", choices=["random"])
    w.add_argument("--num-prompts", type=common.positive_int, default=1000)
    w.add_argument("--random-input-len", type=common.positive_int, default=1024)
    w.add_argument("--random-output-len", type=common.positive_int, default=128)
    w.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len * (1 - r), len * (1 + r)], 0 <= r < 1")
    w.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (inf: all at once)")
    w.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the intervals (1: Poisson)")
    w.add_argument("--max-concurrency", type=common.positive_int, default=None, help="requests in flight at most")
    w.add_argument("--seed", type=int, default=0, help="seed of the prompts and the arrivals")
    w.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly the output length (default on)")
    w.add_argument("--temperature", type=float, default=0.0)
    w.add_argument("--num-warmup-prompts", type=int, default=1, help="untimed requests before the run")
    o = p.add_argument_group("output")
    o.add_argument("--percentile-metrics", default="ttft,tpot,itl", help="printed of ttft,tpot,itl,e2el")
    o.add_argument("--metric-percentiles", default="99", help="comma-separated percentiles, e.g. 50,90,99")
    o.add_argument("--save-result", action=argparse.BooleanOptionalAction, default=True,
                   help="write the JSON record (default on)")
    o.add_argument("--save-detailed", action="store_true", help="per-request lengths and timings in the JSON")
    o.add_argument("--result-dir", type=Path, default=None, help="default benchmarks/results")
    o.add_argument("--output-json", "--result-filename", dest="output_json", default=None,
                   help="the record's file name (inside --result-dir when relative and that is given)")
    o.add_argument("--client", default="auto", choices=["auto", "aiohttp", "httpx"],
                   help="HTTP client (auto: aiohttp when installed, else httpx)")
    o.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--offline-worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return p


# -- workload ---------------------------------------------------------------------------------
def sample_requests(num: int, input_len: int, output_len: int, range_ratio: float, vocab_size: int,
                    seed: int) -> List[SampleRequest]:
    """vLLM's random dataset as token ids; with range_ratio 0, common.random_token_ids' prompts."""
    if range_ratio == 0:
        return [SampleRequest(ids, output_len) for ids in common.random_token_ids(num, input_len, vocab_size, seed)]
    rng = random.Random(seed)

    def length(n: int) -> int:
        return rng.randint(max(1, int(n * (1 - range_ratio))), max(1, int(n * (1 + range_ratio))))

    lens = [(length(input_len), length(output_len)) for _ in range(num)]
    return [SampleRequest([rng.randrange(vocab_size) for _ in range(i)], o) for i, o in lens]


def arrival_times(num: int, rate: float, burstiness: float, seed: int) -> List[float]:
    """Seconds after the start at which each request is sent: all at 0 for an infinite rate, else
    gamma-distributed intervals of mean 1 / rate (exponential, i.e. Poisson arrivals, at burstiness 1)."""
    if math.isinf(rate):
        return [0.0] * num
    rng = random.Random(seed)
    theta = 1.0 / (rate * burstiness)
    times, t = [], 0.0
    for _ in range(num):
        times.append(t)
        t += rng.gammavariate(burstiness, theta)
    return times


# -- requests ---------------------------------------------------------------------------------
def build_payload(req: SampleRequest, args: argparse.Namespace, model: str) -> Tuple[Dict[str, Any], int]:
    """(the request body, the prompt tokens sent) of one request."""
    payload: Dict[str, Any] = {"model": model, "max_tokens": req.output_len, "temperature": args.temperature,
                               "ignore_eos": args.ignore_eos, "stream": True,
                               "stream_options": {"include_usage": True}}
    if args.endpoint == "/v1/chat/completions":
        payload["messages"] = [{"role": "user", "content": req.prompt}]
    else:
        payload["prompt"] = req.prompt_token_ids
    return payload, len(req.prompt_token_ids)


# -- metrics ----------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy.percentile's default); 0 when empty."""
    xs = sorted(values)
    if not xs:
        return 0.0
    k = (len(xs) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


SERVER_HISTOGRAMS = {"ttft": "time_to_first_token_seconds", "queue": "request_queue_time_seconds"}


def scrape_server_sums(base_url: str, headers: Dict[str, str]) -> Optional[Dict[str, float]]:
    """The server's own timing histograms (llmcore's /metrics: engine arrival to first token, to first
    scheduling), as their running _sum and _count; None where the server has no such metrics."""
    try:
        status, body = http_get(base_url + "/metrics", headers)
    except Exception:
        return None
    if status != 200:
        return None
    sums: Dict[str, float] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        for key, name in SERVER_HISTOGRAMS.items():
            for part in ("sum", "count"):
                if line.startswith(f"llmcore:{name}_{part}"):
                    sums[f"{key}_{part}"] = sums.get(f"{key}_{part}", 0.0) + float(line.rsplit(" ", 1)[1])
    return sums if len(sums) == 2 * len(SERVER_HISTOGRAMS) else None


def server_side_means(before: Optional[Dict[str, float]], after: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
    """Mean engine-side TTFT and queue time (ms) of the requests between two scrapes."""
    if before is None or after is None:
        return None
    out: Dict[str, float] = {}
    for key in SERVER_HISTOGRAMS:
        n = after[f"{key}_count"] - before[f"{key}_count"]
        if n <= 0:
            return None
        out[f"mean_{key}_ms"] = (after[f"{key}_sum"] - before[f"{key}_sum"]) / n * 1e3
    out["requests"] = after["ttft_count"] - before["ttft_count"]
    return out


def calculate_metrics(results: List[RequestResult], duration: float, percentiles: List[float]) -> Dict[str, Any]:
    """vLLM's result fields: counts over the successful requests, rates over the duration, and
    mean / median / std / P<p> of each latency in ms (0 when there is none)."""
    ok = [r for r in results if r.success]
    total_input = sum(r.prompt_len for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1],
        "itl": [x for r in ok for x in r.itl],
        "e2el": [r.latency for r in ok],
    }
    m: Dict[str, Any] = {
        "duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
        "total_input_tokens": total_input, "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration, "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    for name, values in series.items():
        m[f"mean_{name}_ms"] = statistics.fmean(values) * 1e3 if values else 0.0
        m[f"median_{name}_ms"] = statistics.median(values) * 1e3 if values else 0.0
        m[f"std_{name}_ms"] = statistics.pstdev(values) * 1e3 if values else 0.0
        for p in percentiles:
            m[f"p{p_word(p)}_{name}_ms"] = percentile(values, p) * 1e3
    return m


def p_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def print_block(m: Dict[str, Any], selected: List[str], percentiles: List[float]) -> None:
    """vLLM's result block, line for line."""
    def row(label: str, value: Any) -> None:
        print(("{:<40} {:<10.2f}" if isinstance(value, float) else "{:<40} {:<10}").format(label, value).rstrip())

    print("{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="="))
    row("Successful requests:", m["completed"])
    row("Benchmark duration (s):", m["duration"])
    row("Total input tokens:", m["total_input_tokens"])
    row("Total generated tokens:", m["total_output_tokens"])
    row("Request throughput (req/s):", m["request_throughput"])
    row("Output token throughput (tok/s):", m["output_throughput"])
    row("Total Token throughput (tok/s):", m["total_token_throughput"])
    for name in selected:
        short, header = METRICS[name]
        print("{s:{c}^{n}}".format(s=header, n=50, c="-"))
        row(f"Mean {short} (ms):", m[f"mean_{name}_ms"])
        row(f"Median {short} (ms):", m[f"median_{name}_ms"])
        for p in percentiles:
            row(f"P{p_word(p)} {short} (ms):", m[f"p{p_word(p)}_{name}_ms"])
    print("=" * 50)


# -- the launched server ----------------------------------------------------------------------
def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_argv(args: argparse.Namespace, port: int) -> List[str]:
    """The launched server's flags: --model, --tokenizer, host and port, then the pass-through ones."""
    argv = ["--model", args.model, "--host", args.host, "--port", str(port)]
    if args.tokenizer:
        argv += ["--tokenizer", args.tokenizer]
    extra = list(args.server_args)
    if not any(a == "--log-level" or a.startswith("--log-level=") for a in extra):
        extra += ["--log-level", "warning"]  # no access-log line per request inside the measurement
    return argv + extra


def launch_server(argv: List[str], base_url: str, timeout: float, log_path: str) -> subprocess.Popen:
    """Starts python -m llmcore.server and returns once /health answers 200."""
    llmcore = common.import_llmcore()
    env = dict(os.environ)
    # The child imports the same llmcore as this process (installed, or the checkout's python/).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(llmcore.__file__).parent.parent),
                                                      env.get("PYTHONPATH")]))
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llmcore.server", *argv], stdout=log,
                            stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with status {proc.returncode} before /health answered; "
                             f"{log_path} ends with:\n{log_tail(log_path)}")
        try:
            if http_get(base_url + "/health", {}, timeout=5)[0] == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit(f"error: the server did not answer /health within {timeout:.0f} s; "
                             f"{log_path} ends with:\n{log_tail(log_path)}")
        time.sleep(0.2)


def _die_with_parent() -> None:
    """In the server child (Linux): SIGTERM when this script dies, even by SIGKILL, so that no
    orphaned server keeps the GPU."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_server(proc: subprocess.Popen) -> Optional[int]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def log_tail(path: str, num_lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


# -- offline comparison -----------------------------------------------------------------------
def run_offline_worker(spec_path: str, out_path: str) -> int:
    """In a fresh process: LLM.generate over the spec's requests on the engine the server flags
    describe (max_num_seqs capped), timing only the generate call, after a warm-up call."""
    spec = json.loads(Path(spec_path).read_text())
    llmcore = common.import_llmcore()
    from llmcore.server.__main__ import build_parser as server_parser, engine_args

    model, kwargs = engine_args(server_parser().parse_args(spec["server_argv"]))
    if spec["max_num_seqs_cap"]:
        kwargs["max_num_seqs"] = min(kwargs["max_num_seqs"], spec["max_num_seqs_cap"])
    t0 = time.perf_counter()
    llm = llmcore.LLM(model, **kwargs)
    startup_s = time.perf_counter() - t0
    defaults = llm.get_default_sampling_params()

    def params(max_tokens: int):
        # As the server builds them: the model's defaults, then what the request sets.
        return llmcore.SamplingParams(
            temperature=spec["temperature"], top_p=defaults.top_p, top_k=defaults.top_k, min_p=defaults.min_p,
            repetition_penalty=defaults.repetition_penalty, ignore_eos=spec["ignore_eos"], max_tokens=max_tokens)

    if spec["warmup"]:
        llm.generate([{"prompt_token_ids": ids} for ids, _ in spec["warmup"]],
                     [params(o) for _, o in spec["warmup"]], use_tqdm=False)
    prompts = [{"prompt_token_ids": ids} for ids, _ in spec["requests"]]
    stats_before = llm.llm_engine.get_stats()
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, [params(o) for _, o in spec["requests"]], use_tqdm=False)
    elapsed = time.perf_counter() - t0
    stats_after = llm.llm_engine.get_stats()
    llm.shutdown()
    num_in = sum(len(o.prompt_token_ids) for o in outputs)
    num_out = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    Path(out_path).write_text(json.dumps({
        "engine_kwargs": kwargs, "model": model, "startup_s": startup_s, "elapsed_s": elapsed,
        "num_requests": len(outputs), "total_input_tokens": num_in, "total_output_tokens": num_out,
        "request_throughput": len(outputs) / elapsed, "output_throughput": num_out / elapsed,
        "total_token_throughput": (num_in + num_out) / elapsed,
        "engine_stats_before": stats_before, "engine_stats_after": stats_after}, indent=2, default=str))
    return 0


def compare_offline(args, requests, warmup, server_args: List[str], tmp_dir: str) -> Dict[str, Any]:
    """The offline worker's result; {"error": ...} when it failed (the serving figures still count)."""
    spec_path, out_path = os.path.join(tmp_dir, "offline-spec.json"), os.path.join(tmp_dir, "offline.json")
    Path(spec_path).write_text(json.dumps({
        "server_argv": server_args, "max_num_seqs_cap": args.max_concurrency, "temperature": args.temperature,
        "ignore_eos": args.ignore_eos,
        "requests": [(r.prompt_token_ids, r.output_len) for r in requests],
        "warmup": [(r.prompt_token_ids, r.output_len) for r in warmup]}))
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--offline-worker", spec_path, out_path])
        if proc.returncode != 0:
            return {"error": f"the offline run failed (exit status {proc.returncode}; its output is above)"}
        return json.loads(Path(out_path).read_text())
    finally:
        for path in (spec_path, out_path):
            if os.path.exists(path):
                os.remove(path)


# -- main -------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.offline_worker:
        return args
    if extra and not args.launch_server:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (server flags need --launch-server)")
    args.server_args = extra
    if args.launch_server and not args.model:
        parser.error("--launch-server needs --model PATH")
    if args.compare_offline and not args.launch_server:
        parser.error("--compare-offline needs --launch-server (the offline engine copies the server's flags)")
    if args.launch_server and args.base_url:
        parser.error("--launch-server serves on --host and --port; drop --base-url")
    if not 0 <= args.random_range_ratio < 1:
        parser.error(f"--random-range-ratio must be in [0, 1); got {args.random_range_ratio}")
    if not (args.request_rate > 0 and args.burstiness > 0):
        parser.error("--request-rate and --burstiness must be > 0")
    bad = [m for m in args.percentile_metrics.split(",") if m not in METRICS]
    if bad:
        parser.error(f"--percentile-metrics: unknown {bad}; choose from {list(METRICS)}")
    try:
        args.percentiles = [float(p) for p in args.metric_percentiles.split(",")]
    except ValueError:
        parser.error(f"--metric-percentiles must be comma-separated numbers; got {args.metric_percentiles!r}")
    if any(not 0 <= p <= 100 for p in args.percentiles):
        parser.error("--metric-percentiles must lie in [0, 100]")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.offline_worker:
        return run_offline_worker(*args.offline_worker)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the finally below stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    llmcore = common.import_llmcore()
    headers: Dict[str, str] = {}
    server_ns = None
    proc = None
    tmp_dir = tempfile.mkdtemp(prefix="llmcore-serving-")
    if args.launch_server:
        from llmcore.server.__main__ import build_parser as server_parser

        port = args.port or free_port(args.host)
        launched_argv = server_argv(args, port)
        server_ns = server_parser().parse_args(launched_argv)  # the server's own errors, before starting it
        base_url = f"http://{args.host}:{port}"
        device = common.resolve_device(server_ns.device, llmcore)
        api_key = server_ns.api_key
    else:
        launched_argv = []
        base_url = (args.base_url or f"http://{args.host}:{args.port or 8000}").rstrip("/")
        device = common.resolve_device("auto", llmcore)  # the server is taken to run on this machine
        api_key = os.environ.get("OPENAI_API_KEY") or os.environ.get("LLMCORE_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    client_kind = pick_client(args.client)
    log_path = args.server_log or os.path.join(tmp_dir, "server.log")

    startup_s = None
    try:
        if args.launch_server:
            print(f"Starting python -m llmcore.server {' '.join(launched_argv)} (log: {log_path})", flush=True)
            t0 = time.perf_counter()
            proc = launch_server(launched_argv, base_url, args.server_timeout, log_path)
            startup_s = time.perf_counter() - t0
        status, body = http_get(base_url + "/v1/models", headers)
        if status != 200:
            raise SystemExit(f"error: GET {base_url}/v1/models answered {status}: {body[:300]!r}")
        card = json.loads(body)["data"][0]
        model_name = card["id"] if (args.launch_server or not args.model) else args.model
        tok_path = args.tokenizer or (server_ns.tokenizer if server_ns else None) or card.get("root") or args.model
        try:
            tokenizer = llmcore.Tokenizer.from_pretrained(tok_path)
        except Exception as e:
            raise SystemExit(f"error: cannot load a tokenizer from {tok_path!r} ({e}); pass --tokenizer DIR")
        # Prompt ids stay inside the tokenizer's vocabulary, which the server decodes them with.
        vocab_size = tokenizer.vocab_size
        requests = sample_requests(args.num_prompts, args.random_input_len, args.random_output_len,
                                   args.random_range_ratio, vocab_size, args.seed)
        warmup = sample_requests(args.num_warmup_prompts, args.random_input_len, args.random_output_len,
                                 0.0, vocab_size, args.seed + 1) if args.num_warmup_prompts > 0 else []
        if args.endpoint == "/v1/chat/completions":
            for r in requests + warmup:
                r.prompt = tokenizer.decode(r.prompt_token_ids)
        url = base_url + args.endpoint
        chat = args.endpoint == "/v1/chat/completions"

        gc.collect()
        gc.freeze()  # the prompts are static: keep the collector off them while timing (as vLLM does)
        if warmup:
            print(f"Warm-up: {len(warmup)} request(s) ...", flush=True)
            warm_results, _ = asyncio.run(run_requests(
                [build_payload(r, args, model_name) for r in warmup], url, chat, client_kind, headers))
            failed = [r.error for r in warm_results if not r.success]
            if failed:
                raise SystemExit(f"error: the warm-up request failed; check the arguments: {failed[0]}")
        rate = "inf" if math.isinf(args.request_rate) else args.request_rate
        print(f"Traffic request rate: {rate}")
        print(f"Burstiness factor: {args.burstiness} "
              f"({'Poisson process' if args.burstiness == 1.0 else 'Gamma distribution'})")
        print(f"Maximum request concurrency: {args.max_concurrency}", flush=True)
        arrivals = arrival_times(len(requests), args.request_rate, args.burstiness, args.seed)
        sums_before = scrape_server_sums(base_url, headers)
        results, duration = asyncio.run(run_requests(
            [build_payload(r, args, model_name) for r in requests], url, chat, client_kind, headers,
            args.max_concurrency, arrivals, progress=not args.disable_tqdm))
        server_side = server_side_means(sums_before, scrape_server_sums(base_url, headers))
    except BaseException:
        if args.server_log:  # else the temporary folder keeps the server log the error points to
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if proc is not None:
            stop_server(proc)

    metrics = calculate_metrics(results, duration, args.percentiles)
    print_block(metrics, args.percentile_metrics.split(","), args.percentiles)
    if server_side is not None:
        # Client TTFT minus the engine's: HTTP, request handling, streaming the first chunk back.
        print(f"Server side (its /metrics, {server_side['requests']:.0f} requests): mean TTFT from engine arrival "
              f"{server_side['mean_ttft_ms']:.2f} ms (client {metrics['mean_ttft_ms']:.2f}), mean queue "
              f"{server_side['mean_queue_ms']:.2f} ms")
    short = sum(1 for r, q in zip(results, requests) if r.success and r.output_tokens != q.output_len)
    errors = [r.error for r in results if not r.success]
    if errors:
        print(f"warning: {len(errors)} of {len(results)} requests failed; the first: {errors[0]}", file=sys.stderr)
    if short and args.ignore_eos:
        print(f"warning: {short} requests did not produce their max_tokens", file=sys.stderr)

    offline, ratio = None, None
    if args.compare_offline:
        print("Offline: the same requests through LLM.generate in a fresh process ...", flush=True)
        offline = compare_offline(args, requests, warmup, launched_argv, tmp_dir)
    if offline is not None and "error" in offline:
        print(f"error: {offline['error']}", file=sys.stderr)
    elif offline is not None:
        ratio = metrics["output_throughput"] / offline["output_throughput"]
        print(f"Offline (max_num_seqs {offline['engine_kwargs']['max_num_seqs']}): "
              f"{offline['total_output_tokens']} output tokens in {offline['elapsed_s']:.2f} s, "
              f"{offline['output_throughput']:.2f} output tok/s, {offline['total_token_throughput']:.2f} total tok/s")
        print(f"Serving / offline output throughput: {ratio:.3f}")

    record = common.new_record("serving", device, args, "aiohttp", "httpx")
    record["versions"]["llmcore"] = getattr(llmcore, "__version__", None)
    record["args"]["request_rate"] = rate  # JSON has no Infinity
    record.update({
        "server": {"launched": args.launch_server, "base_url": base_url, "endpoint": args.endpoint,
                   "model": model_name, "model_path": card.get("root"), "tokenizer": str(tok_path),
                   "server_argv": launched_argv, "startup_s": startup_s,
                   "log": args.server_log},
        "client": client_kind,
        "workload": {"dataset_name": "random", "num_prompts": args.num_prompts, "vocab_size": vocab_size,
                     "input_len": args.random_input_len, "output_len": args.random_output_len,
                     "range_ratio": args.random_range_ratio, "request_rate": rate, "burstiness": args.burstiness,
                     "max_concurrency": args.max_concurrency, "ignore_eos": args.ignore_eos,
                     "temperature": args.temperature, "num_warmup_prompts": len(warmup)},
        "result": metrics,
        "server_side": server_side,
        "num_short": short,
        "errors": errors[:20],
        "offline": offline,
        "serving_over_offline": ratio,
    })
    if args.save_detailed:
        record["requests"] = {
            "input_lens": [r.prompt_len for r in results], "output_lens": [r.output_tokens for r in results],
            "expected_output_lens": [q.output_len for q in requests], "success": [r.success for r in results],
            "ttfts": [r.ttft for r in results], "itls": [r.itl for r in results],
            "e2els": [r.latency for r in results], "start_times": [r.start for r in results],
            "errors": [r.error for r in results]}
    path = None
    if args.save_result:
        output_json = args.output_json
        if output_json and args.result_dir and not os.path.isabs(output_json):
            output_json = str(args.result_dir / output_json)
        path = common.write_record(record, output_json, args.result_dir)
        print(f"Results: {path}")

    conc = args.max_concurrency or "inf"
    line = (f"Serving ({record['device']}, {args.endpoint}, {args.num_prompts} x {args.random_input_len} in / "
            f"{args.random_output_len} out, concurrency {conc}, rate {rate}): {metrics['completed']}/{len(results)} "
            f"ok in {duration:.2f} s, {metrics['request_throughput']:.2f} req/s, "
            f"{metrics['output_throughput']:.2f} output tok/s, {metrics['total_token_throughput']:.2f} total tok/s, "
            f"median TTFT {metrics['median_ttft_ms']:.2f} ms, TPOT {metrics['median_tpot_ms']:.2f} ms, "
            f"ITL {metrics['median_itl_ms']:.2f} ms")
    if ratio is not None:
        line += f"; offline {offline['output_throughput']:.2f} output tok/s, serving/offline {ratio:.3f}"
    print(line)
    shutil.rmtree(tmp_dir, ignore_errors=True)  # kept (with the server log) only when the run stopped early
    return 1 if errors or (offline is not None and ratio is None) else 0


if __name__ == "__main__":
    sys.exit(main())
