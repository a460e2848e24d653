"""Offline throughput, as vLLM's benchmark_throughput measures it on its random dataset:

    python3 benchmarks/throughput.py --input-len 1024 --output-len 128 --num-prompts 1000

--num-prompts prompts of --input-len random token ids (uniform over the model's vocabulary) each
generate exactly --output-len tokens (ignore_eos; vLLM's defaults n=1, temperature=1.0,
top_p=1.0), all submitted at once to one llm.generate call. Only that call is timed, after one
short warm-up generate. Weights are random (--load-format dummy) of the --model config's shapes.

Prints vLLM's line last:  Throughput: X requests/s, Y total tokens/s, Z output tokens/s
and writes JSON (device, commit, command, every argument, timings, engine stats) to
benchmarks/results/throughput-<device>-<date>.json or --output-json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    w = p.add_argument_group("workload")
    w.add_argument("--input-len", type=common.positive_int, default=1024, help="prompt tokens per request")
    w.add_argument("--output-len", type=common.positive_int, default=128, help="generated tokens per request")
    w.add_argument("--num-prompts", type=common.positive_int, default=1000)
    w.add_argument("--n", type=common.positive_int, default=1, help="completions per prompt")
    w.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    w.add_argument("--num-warmup-prompts", type=common.positive_int, default=16,
                   help="prompts in the untimed warm-up generate (at most --num-prompts)")
    w.add_argument("--warmup-output-len", type=common.positive_int, default=16)
    common.add_engine_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--output-json", default=None, help="result file (default: benchmarks/results/...)")
    o.add_argument("--progress", action="store_true", help="show a progress bar (stderr) while timing")
    return p


def count_tokens(outputs) -> tuple:
    """(prompt tokens, output tokens, completions) over a list of RequestOutput."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completions = [c for o in outputs for c in o.outputs]
    return prompt, sum(len(c.token_ids) for c in completions), completions


# get_stats() counters that only grow; the others (num_running, kv_cache_usage, ...) are gauges.
CUMULATIVE_STATS = ("num_preemptions", "prefix_cache_queries", "prefix_cache_hits", "num_prompt_tokens",
                    "num_generation_tokens", "num_steps", "num_requests_finished",
                    "time_schedule_s", "time_execute_s", "time_sample_s", "time_output_s")


# Host seconds per phase of the engine step (see EngineStats in csrc/engine/llm_engine.h).
STEP_PHASES = ("time_schedule_s", "time_execute_s", "time_sample_s", "time_output_s")


def stats_delta(before: dict, after: dict) -> dict:
    """The cumulative counters' growth over the timed call."""
    return {k: after[k] - before.get(k, 0) for k in CUMULATIVE_STATS if k in after}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    llmcore = common.import_llmcore()
    config = common.read_config(args.model)
    overrides = common.parse_overrides(args.hf_overrides)
    config.update(overrides)
    model_dir = common.model_with_overrides(args.model, overrides, args.load_format)
    device = common.resolve_device(args.device, llmcore)
    vocab_size = int(config["vocab_size"])

    t0 = time.perf_counter()
    llm, engine_kwargs = common.make_llm(args, model_dir, device)
    startup_s = time.perf_counter() - t0

    prompts = common.random_token_ids(args.num_prompts, args.input_len, vocab_size, args.seed)
    requests = [{"prompt_token_ids": ids} for ids in prompts]
    params = llmcore.SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                                    max_tokens=args.output_len, detokenize=False)

    # Warm-up on different prompts (seed + 1), so that nothing they leave in a prefix cache is
    # hit by the timed run.
    num_warmup = min(args.num_warmup_prompts, args.num_prompts)
    warm = common.random_token_ids(num_warmup, args.input_len, vocab_size, args.seed + 1)
    warm_params = llmcore.SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                                         max_tokens=min(args.warmup_output_len, args.output_len),
                                         detokenize=False)
    t0 = time.perf_counter()
    llm.generate([{"prompt_token_ids": ids} for ids in warm], warm_params, use_tqdm=False)
    warmup_s = time.perf_counter() - t0

    stats_before = llm.llm_engine.get_stats()
    t0 = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=args.progress)
    elapsed = time.perf_counter() - t0
    stats_after = llm.llm_engine.get_stats()

    prompt_tokens, output_tokens, completions = count_tokens(outputs)
    short = sum(1 for c in completions if len(c.token_ids) != args.output_len)
    if short:
        print(f"warning: {short} of {len(completions)} completions did not produce --output-len "
              f"{args.output_len} tokens; the rates below use the tokens actually produced", file=sys.stderr)
    total_tokens = prompt_tokens + output_tokens
    result = {
        "elapsed_s": elapsed,
        "startup_s": startup_s,
        "startup_phases_s": dict(llm.llm_engine.native.startup_times),
        "warmup_s": warmup_s,
        "num_requests": len(outputs),
        "num_completions": len(completions),
        "num_prompt_tokens": prompt_tokens,
        "num_output_tokens": output_tokens,
        "num_completions_short": short,
        "requests_per_s": len(outputs) / elapsed,
        "total_tokens_per_s": total_tokens / elapsed,
        "output_tokens_per_s": output_tokens / elapsed,
    }

    record = common.new_record("throughput", device, args, "torch")
    record["versions"]["llmcore"] = getattr(llmcore, "__version__", None)
    record.update({
        "model_config": config,
        "num_parameters": common.num_parameters(config),
        "engine_kwargs": engine_kwargs,
        "tensor_parallel_size": args.tensor_parallel_size,
        "sampling": {"n": args.n, "temperature": 1.0, "top_p": 1.0, "ignore_eos": True,
                     "max_tokens": args.output_len, "detokenize": False},
        "result": result,
        "engine_stats_before": stats_before,
        "engine_stats_after": stats_after,
        "engine_stats_timed": stats_delta(stats_before, stats_after),
    })
    path = common.write_record(record, args.output_json)
    llm.shutdown()

    print(f"Total num prompt tokens:  {prompt_tokens}")
    print(f"Total num output tokens:  {output_tokens}")
    print(f"Elapsed: {elapsed:.3f} s on {record['device']}{common.tp_label(args)} (startup {startup_s:.1f} s, warm-up {warmup_s:.1f} s)")
    timed = record["engine_stats_timed"]
    if timed.get("num_steps"):
        print("Host time per step (ms): " + ", ".join(
            f"{k[5:-2]} {timed[k] / timed['num_steps'] * 1e3:.3f}" for k in STEP_PHASES if k in timed)
            + f" over {timed['num_steps']} steps")
    print(f"Results: {path}")
    print(f"Throughput: {result['requests_per_s']:.2f} requests/s, {result['total_tokens_per_s']:.2f} total tokens/s, "
          f"{result['output_tokens_per_s']:.2f} output tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
