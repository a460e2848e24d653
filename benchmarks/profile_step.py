"""Where a step's time goes: every GPU kernel of llmcore's engine (its own kernels and cuBLAS), as
recorded by the CUDA profiler that ships with PyTorch (CUPTI traces every kernel in the process),
for three workloads on a full-size dummy model:

  decode-b1    batch 1 decode (128-token prompt), --decode-tokens tokens
  decode-bN    batch --batch decode (128-token prompts)
  prefill      --prefill-prompts prompts of --prefill-len tokens, one output token each
  offline      throughput.py's run (--offline-prompts x --offline-input-len / --offline-output-len,
               all at once, temperature 1), traced for --window-s seconds starting --window-start-s
               into the generate call: the steady state of continuous batching, prompt chunks
               and decodes mixed (not in the default --workloads)

For each: wall time per step, summed kernel time per step (the GPU busy fraction: the rest is the
host: launches, scheduling, sampling, syncs) and the kernels ranked by total time, grouped by
name. Also the engine's own host-phase counters per step, and per GPU its timeline: how long it
was busy and idle per step, and the largest idle gaps by the pair of kernels around them (with
tensor parallelism a gap before a collective is time spent waiting for another GPU). The
profiler's own overhead lengthens host-side gaps, so read those as upper bounds.

    python3 benchmarks/profile_step.py --model benchmarks/configs/llama-3-8b
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PHASES = ("time_schedule_s", "time_execute_s", "time_sample_s", "time_output_s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="batch size of the decode-bN workload")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--prefill-len", type=int, default=1024)
    p.add_argument("--prefill-prompts", type=int, default=8)
    p.add_argument("--offline-prompts", type=int, default=1000)
    p.add_argument("--offline-input-len", type=int, default=1024)
    p.add_argument("--offline-output-len", type=int, default=128)
    p.add_argument("--window-start-s", type=float, default=15.0,
                   help="offline: seconds into the generate call when the trace starts")
    p.add_argument("--window-s", type=float, default=2.0, help="offline: seconds traced")
    p.add_argument("--top", type=int, default=15, help="kernels listed per workload")
    p.add_argument("--workloads", default="decode-b1,decode-bN,prefill",
                   help="comma-separated subset of decode-b1, decode-bN, prefill, offline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", default=None)
    common.add_engine_args(p)
    return p


def short(name: str) -> str:
    name = name.replace("(anonymous namespace)::", "").replace("void ", "", 1).split("(")[0]
    return name if len(name) <= 70 else name[:67] + "..."


def profile(llm, llmcore, torch, prompts, max_tokens, top):
    params = llmcore.SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens, detokenize=False)
    reqs = [{"prompt_token_ids": ids} for ids in prompts]
    llm.generate(reqs, params, use_tqdm=False)  # warm-up: plans, caches
    return trace(llm, torch, lambda: llm.generate(reqs, params, use_tqdm=False), top)


def profile_window(llm, llmcore, torch, prompts, max_tokens, start_s, window_s, top):
    """One generate call of all the prompts on a thread; the trace covers [start_s, start_s +
    window_s) of it (CUPTI sees every thread's kernels), the per-step figures the steps in it."""
    params = llmcore.SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=max_tokens,
                                    detokenize=False)
    reqs = [{"prompt_token_ids": ids} for ids in prompts]
    warm = llmcore.SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=4, detokenize=False)
    llm.generate(reqs[:16], warm, use_tqdm=False)
    done = []
    worker = threading.Thread(target=lambda: done.append(llm.generate(reqs, params, use_tqdm=False)))
    t0 = time.perf_counter()
    worker.start()
    time.sleep(start_s)
    r = trace(llm, torch, lambda: time.sleep(window_s), top)
    worker.join()
    if not done:
        raise SystemExit("error: the offline generate call failed (its traceback is above)")
    r["window"] = {"start_s": start_s, "window_s": window_s, "generate_s": time.perf_counter() - t0}
    return r


def trace(llm, torch, run, top):
    """Profiles run(): the CUDA kernels and runtime calls of the whole process (without a GPU, a
    smoke run, only the host counters); per-step figures divide by the engine steps meanwhile."""
    # CPU as well: the CUDA runtime calls (launches, copies, syncs) are host events with timestamps.
    # Without a GPU there is nothing to trace (and the CPU tracer would stall the engine's threads).
    gpu = torch.cuda.is_available()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with (torch.profiler.profile(activities=acts) if gpu else contextlib.nullcontext()) as prof:
        # The counters inside the trace: starting and stopping it take a while, during which an
        # engine running on another thread (the offline window) keeps stepping.
        before = llm.llm_engine.get_stats()
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
        after = llm.llm_engine.get_stats()
    steps = after["num_steps"] - before["num_steps"]
    by_name = defaultdict(lambda: [0.0, 0])
    total_us = 0.0
    events = prof.events() if gpu else []
    for ev in events:
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        dur = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
        by_name[short(ev.name)][0] += dur
        by_name[short(ev.name)][1] += 1
        total_us += dur
    timelines = timeline(events, torch, max(steps, 1))
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])
    kernels = [{"name": n, "total_ms": us / 1e3, "calls": c, "ms_per_step": us / 1e3 / max(steps, 1),
                "share": us / total_us if total_us else 0.0} for n, (us, c) in ranked]
    return {
        "steps": steps,
        "wall_ms_per_step": wall / max(steps, 1) * 1e3,
        "kernel_ms_per_step": total_us / 1e3 / max(steps, 1),
        "gpu_busy_fraction": (total_us / 1e6) / wall if wall else None,
        "host_ms_per_step": {k[5:-2]: (after[k] - before[k]) / max(steps, 1) * 1e3 for k in PHASES if k in after},
        "generated_tokens_per_step": (after["num_generation_tokens"] - before["num_generation_tokens"]) / max(steps, 1),
        "kernels": kernels[: max(top, 40)],
        "timeline": timelines,
        "runtime": runtime_calls(events, torch, max(steps, 1)),
    }


def runtime_calls(events, torch, steps):
    """The host side of the GPU work: CUDA runtime/driver calls ranked by total host time, and for
    the traced call as a whole (read them per step when it ran one step): the host time from the
    trace's start to the first runtime call (the Python call, scheduling, input preparation), from
    that call to the first kernel's start (uploads, first launches), and from the last kernel's end
    to the end of the last runtime call (readback). The tracer's own first buffer request (~2 ms on
    an H100 host, "Activity Buffer Request") falls inside the second leg: read it as an upper bound."""
    calls = defaultdict(lambda: [0.0, 0])
    host = []
    gpu = []
    for ev in events:
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            gpu.append((ev.time_range.start, ev.time_range.end))
        elif ev.name.startswith(("cuda", "cu")):
            calls[ev.name][0] += ev.time_range.end - ev.time_range.start
            calls[ev.name][1] += 1
            host.append((ev.time_range.start, ev.time_range.end))
    ranked = sorted(calls.items(), key=lambda kv: -kv[1][0])[:12]
    out = {"calls": [{"name": n, "ms_per_step": us / 1e3 / steps, "count": c} for n, (us, c) in ranked]}
    if host and gpu:
        first_call = min(s for s, _ in host)
        last_call = max(e for _, e in host)
        out["trace_start_to_first_call_ms"] = first_call / 1e3  # event times count from the trace's start
        out["first_call_to_first_kernel_ms"] = (min(s for s, _ in gpu) - first_call) / 1e3
        out["last_kernel_to_last_call_end_ms"] = (last_call - max(e for _, e in gpu)) / 1e3
    return out


def timeline(events, torch, steps):
    """Per GPU: busy and idle time per step over the traced span, and the idle gaps grouped by the
    kernels before and after them."""
    per_device = defaultdict(list)
    for ev in events:
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per_device[ev.device_index].append((ev.time_range.start, ev.time_range.end, short(ev.name)[:48]))
    out = {}
    for device, evs in sorted(per_device.items()):
        evs.sort()
        busy = 0.0
        gaps = defaultdict(lambda: [0.0, 0])
        start, end, last = evs[0]
        for s, e, name in evs[1:]:
            if s > end:
                busy += end - start
                gaps[f"{last} -> {name}"][0] += s - end
                gaps[f"{last} -> {name}"][1] += 1
                start, end, last = s, e, name
            elif e >= end:
                end, last = e, name
        busy += end - start
        span = evs[-1][1] - evs[0][0]
        top = sorted(gaps.items(), key=lambda kv: -kv[1][0])[:6]
        out[str(device)] = {
            "busy_ms_per_step": busy / 1e3 / steps,
            "idle_ms_per_step": (span - busy) / 1e3 / steps,
            "gaps": [{"between": k, "ms_per_step": us / 1e3 / steps, "count": c} for k, (us, c) in top],
        }
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    llmcore = common.import_llmcore()
    config = common.read_config(args.model)
    model_dir = common.model_with_overrides(args.model, {}, args.load_format)
    device = common.resolve_device(args.device, llmcore)
    llm, engine_kwargs = common.make_llm(args, model_dir, device)
    vocab = int(config["vocab_size"])
    workloads = {
        "decode-b1": (common.random_token_ids(1, 128, vocab, args.seed), args.decode_tokens),
        f"decode-b{args.batch}": (common.random_token_ids(args.batch, 128, vocab, args.seed + 1), args.decode_tokens),
        "prefill": (common.random_token_ids(args.prefill_prompts, args.prefill_len, vocab, args.seed + 2), 1),
    }
    wanted = {w.strip().replace("decode-bN", f"decode-b{args.batch}") for w in args.workloads.split(",")}
    if "offline" in wanted:  # 1000 x 1024 ids: drawn only when asked for
        workloads["offline"] = (common.random_token_ids(args.offline_prompts, args.offline_input_len, vocab,
                                                        args.seed + 3), args.offline_output_len)
    results = {}
    for name, (prompts, max_tokens) in workloads.items():
        if name not in wanted:
            continue
        if name == "offline":
            r = profile_window(llm, llmcore, torch, prompts, max_tokens, args.window_start_s, args.window_s,
                               args.top)
        else:
            r = profile(llm, llmcore, torch, prompts, max_tokens, args.top)
        results[name] = r
        print(f"== {name}: {r['steps']} steps ({r['generated_tokens_per_step']:.1f} tokens sampled per step), "
              f"wall {r['wall_ms_per_step']:.3f} ms/step, kernels "
              f"{r['kernel_ms_per_step']:.3f} ms/step (GPU busy {r['gpu_busy_fraction']:.0%}); host ms/step "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["host_ms_per_step"].items()))
        for k in r["kernels"][: args.top]:
            print(f"   {k['ms_per_step']:8.3f} ms/step {k['share']:6.1%} {k['calls']:6d}x  {k['name']}")
        for dev, t in r["timeline"].items():
            print(f"   GPU {dev}: busy {t['busy_ms_per_step']:.3f} ms/step, idle {t['idle_ms_per_step']:.3f} ms/step; "
                  "largest idle gaps: " + "; ".join(f"{g['between']} {g['ms_per_step'] * 1e3:.1f} us/step ({g['count']}x)"
                                                    for g in t["gaps"][:4]))
        rt = r["runtime"]
        if "first_call_to_first_kernel_ms" in rt:
            print(f"   host: trace start -> first runtime call {rt['trace_start_to_first_call_ms']:.3f} ms; "
                  f"first runtime call -> first kernel {rt['first_call_to_first_kernel_ms']:.3f} ms; "
                  f"last kernel end -> last runtime call end {rt['last_kernel_to_last_call_end_ms']:.3f} ms")
        print("   runtime calls: " + "; ".join(f"{c['name']} {c['ms_per_step']:.3f} ms ({c['count']}x)"
                                                for c in rt["calls"][:8]))
    llm.shutdown()
    record = common.new_record("profile_step", device, args, "torch")
    record.update({"engine_kwargs": engine_kwargs, "results": results})
    path = common.write_record(record, args.output_json)
    print(f"Results: {path}")
    print("Profile: " + "; ".join(f"{n} {r['wall_ms_per_step']:.2f} ms/step ({r['gpu_busy_fraction']:.0%} GPU busy)"
                                  for n, r in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
