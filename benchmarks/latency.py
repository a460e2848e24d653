"""Latency at fixed batch sizes: prefill time and decode time per output token.

    python3 benchmarks/latency.py --batch-sizes 1,8,64 --input-len 128 --output-len 128

For each batch size B, B prompts of --input-len random token ids go to one llm.generate call:
  prefill   the call with max_tokens=1 (prompt processing plus the first token), median of
            --num-iters runs;
  decode    per output token: (t(max_tokens=N) - t(max_tokens=1)) / (N - 1), each t the median
            of --num-iters runs, N = --output-len;
  tok/s     decode tokens per second per sequence (1000 / decode ms) and for the whole batch
            (B times that); at batch 1 the figure users compare.
Every run draws fresh prompts and prefix caching is off, so no run reuses another's KV blocks.
Sampling is greedy with ignore_eos and detokenize=False. Each batch size is warmed up first
(--num-iters-warmup full runs, untimed).

Prints one line per batch size and a one-line summary last; writes JSON (device, commit,
command, every run's time) to benchmarks/results/latency-<device>-<date>.json or --output-json.
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
    w.add_argument("--batch-sizes", type=common.parse_int_list, default=[1, 8, 64],
                   help="comma-separated batch sizes (default 1,8,64)")
    w.add_argument("--input-len", type=common.positive_int, default=128)
    w.add_argument("--output-len", type=common.positive_int, default=128,
                   help="N in the decode formula; at least 2")
    w.add_argument("--num-iters", type=common.positive_int, default=5, help="timed runs per measurement")
    w.add_argument("--num-iters-warmup", type=int, default=1, help="untimed full runs per batch size")
    w.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    common.add_engine_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--output-json", default=None, help="result file (default: benchmarks/results/...)")
    return p


class Runner:
    """Times llm.generate on fresh random prompts; every call gets prompts no earlier call saw."""

    def __init__(self, llm, llmcore, input_len: int, vocab_size: int, seed: int) -> None:
        self.llm = llm
        self.llmcore = llmcore
        self.input_len = input_len
        self.vocab_size = vocab_size
        self.seed = seed
        self.num_calls = 0

    def run(self, batch_size: int, max_tokens: int) -> float:
        """Seconds for one generate of batch_size prompts x max_tokens tokens (checked)."""
        self.num_calls += 1
        prompts = common.random_token_ids(batch_size, self.input_len, self.vocab_size,
                                          self.seed * 1_000_003 + self.num_calls)
        params = self.llmcore.SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens,
                                             detokenize=False)
        start = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        lengths = {len(o.outputs[0].token_ids) for o in outputs}
        if len(outputs) != batch_size or lengths != {max_tokens}:
            raise SystemExit(f"error: expected {batch_size} completions of {max_tokens} tokens; got "
                             f"{len(outputs)} with lengths {sorted(lengths)}")
        return seconds


STEP_PHASES = ("time_schedule_s", "time_execute_s", "time_sample_s", "time_output_s")


def measure(runner: Runner, batch_size: int, args) -> dict:
    for _ in range(args.num_iters_warmup):
        runner.run(batch_size, args.output_len)
    prefill = [runner.run(batch_size, 1) for _ in range(args.num_iters)]
    before = runner.llm.llm_engine.get_stats()
    full = [runner.run(batch_size, args.output_len) for _ in range(args.num_iters)]
    after = runner.llm.llm_engine.get_stats()
    steps = after["num_steps"] - before["num_steps"]
    # Host time per engine step by phase, over the full runs (mostly decode steps).
    phases = {k[5:-2]: (after[k] - before[k]) / steps * 1e3 for k in STEP_PHASES if k in after and steps}
    t1, tn = common.median(prefill), common.median(full)
    decode_s = (tn - t1) / (args.output_len - 1)
    return {
        "batch_size": batch_size,
        "prefill_s": prefill,
        "full_s": full,
        "prefill_ms": t1 * 1e3,
        "end_to_end_ms": tn * 1e3,
        "decode_ms_per_token": decode_s * 1e3,
        "decode_tokens_per_s_per_seq": 1.0 / decode_s if decode_s > 0 else None,
        "decode_tokens_per_s": batch_size / decode_s if decode_s > 0 else None,
        "prefill_tokens_per_s": batch_size * args.input_len / t1,
        "host_ms_per_step": phases,
    }


def describe(r: dict) -> str:
    rate = r["decode_tokens_per_s_per_seq"]
    rate_text = f"{rate:.1f} tok/s per seq" if rate else "n/a (t(N) <= t(1))"
    return (f"batch {r['batch_size']}: prefill {r['prefill_ms']:.2f} ms, decode {r['decode_ms_per_token']:.3f} "
            f"ms/token ({rate_text})")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.output_len < 2:
        raise SystemExit("error: --output-len must be at least 2 (decode time is t(N) - t(1) over N - 1 tokens)")
    llmcore = common.import_llmcore()
    config = common.read_config(args.model)
    overrides = common.parse_overrides(args.hf_overrides)
    config.update(overrides)
    model_dir = common.model_with_overrides(args.model, overrides, args.load_format)
    device = common.resolve_device(args.device, llmcore)
    if args.max_num_seqs is None and max(args.batch_sizes) > 256:
        args.max_num_seqs = max(args.batch_sizes)  # the engine's default of 256 would split the batch

    t0 = time.perf_counter()
    llm, engine_kwargs = common.make_llm(args, model_dir, device)
    startup_s = time.perf_counter() - t0
    llm_startup = llm.llm_engine.native.startup_times
    print(f"Startup {startup_s:.1f} s: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in llm_startup.items()), flush=True)
    runner = Runner(llm, llmcore, args.input_len, int(config["vocab_size"]), args.seed)

    results = []
    for batch_size in args.batch_sizes:
        r = measure(runner, batch_size, args)
        results.append(r)
        phases = ", ".join(f"{k} {v:.3f}" for k, v in r["host_ms_per_step"].items())
        print(f"Latency {describe(r)}; host ms per step: {phases}", flush=True)
    stats = llm.llm_engine.get_stats()
    llm.shutdown()

    record = common.new_record("latency", device, args, "torch")
    record["versions"]["llmcore"] = getattr(llmcore, "__version__", None)
    record.update({
        "model_config": config,
        "num_parameters": common.num_parameters(config),
        "engine_kwargs": engine_kwargs,
        "tensor_parallel_size": args.tensor_parallel_size,
        "sampling": {"temperature": 0.0, "ignore_eos": True, "detokenize": False},
        "startup_s": startup_s,
        "startup_phases_s": dict(llm_startup),
        "results": results,
        "engine_stats_end": stats,
    })
    path = common.write_record(record, args.output_json)
    print(f"Results: {path}")
    print(f"Latency ({record['device']}{common.tp_label(args)}, {args.input_len} in / {args.output_len} out): "
          + "; ".join(describe(r) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
