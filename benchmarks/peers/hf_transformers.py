"""The llmcore benchmarks' workloads on HF transformers, same config, random weights, same GPU.

    python3 benchmarks/peers/hf_transformers.py                       # all parts, Llama-3-8B shape
    python3 benchmarks/peers/hf_transformers.py --parts eager,compiled
    python3 benchmarks/peers/hf_transformers.py --parts cb --num-prompts 256

The model is AutoModelForCausalLM.from_config(config, dtype=bfloat16) built on the GPU: HF's
random initialisation, nothing downloaded. Parts (--parts, run in this order):
  cb        offline throughput with transformers' continuous batching, model.generate_batch():
            --num-prompts prompts of --input-len random ids, --output-len new tokens each
            (greedy, EOS disabled), timed after a warm-up call that builds and warms the same
            continuous-batching manager (persistent_manager=True: the timed call reuses it, its
            KV cache allocated and any CUDA graphs captured). Where generate_batch does not exist (transformers
            < 4.56) it falls back to model.generate() on padded static batches of --batch-size,
            and the JSON's "method" says which ran. Reports vLLM's three rates.
  eager     batch-1 latency: model.generate(do_sample=False, min_new_tokens=max_new_tokens)
            with the default dynamic cache, no compilation.
  compiled  the same with a static cache (generation_config.cache_implementation = "static"),
            which transformers (>= 4.48) compiles by itself for the decode steps (its default
            CompileConfig: mode="reduce-overhead", so CUDA graphs): HF's static-cache + compile
            path as transformers 5 runs it.
  compiled_forward (optional) HF's older documented recipe on top of that:
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True).
            With transformers 5.17 and torch 2.11 it fails (CUDA-graph outputs overwritten by a
            later replay, once with a segfault: seen on an H200), with or without
            generation_config.disable_compile; kept to check later versions.
For the batch-1 parts, prompts are --decode-input-len random ids; prefill = median time of
generate(max_new_tokens=1); decode ms/token = (median t(N) - median t(1)) / (N - 1) with
N = --decode-output-len, as benchmarks/latency.py computes it; --num-iters-warmup untimed runs
of each length come first (compilation and CUDA-graph capture happen there).

Each part prints one line; a one-line summary comes last. JSON (device, commit, command, every
timing) goes to benchmarks/results/hf_transformers-<device>-<date>.json or --output-json. A part
that fails is recorded with its error and the others still run; the exit status is then 1.
Models whose bf16 weights exceed --max-weight-fraction of the device's memory (the 70B config
on one H100/H200) are refused: they are for llmcore with tensor parallelism.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import inspect
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402

PART_ORDER = ["cb", "eager", "compiled", "compiled_forward"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=common.DEFAULT_MODEL, help="config directory")
    p.add_argument("--hf-overrides", default=None,
                   help='JSON merged into config.json, e.g. \'{"num_hidden_layers": 2}\'')
    p.add_argument("--parts", default="eager,compiled,cb",
                   help=f"comma-separated, from {','.join(PART_ORDER)} (default eager,compiled,cb; "
                        "compiled_forward failed with transformers 5.17 / torch 2.11)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu is for smoke tests")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--attn-implementation", default=None, help="passed to from_config (default: HF's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-weight-fraction", type=float, default=0.6,
                   help="refuse models whose weights exceed this fraction of device memory")
    t = p.add_argument_group("throughput part (cb), as benchmarks/throughput.py")
    t.add_argument("--num-prompts", type=common.positive_int, default=256)
    t.add_argument("--input-len", type=common.positive_int, default=1024)
    t.add_argument("--output-len", type=common.positive_int, default=128)
    t.add_argument("--num-warmup-prompts", type=common.positive_int, default=8)
    t.add_argument("--cb-num-blocks", type=common.positive_int, default=None,
                   help="ContinuousBatchingConfig.num_blocks")
    t.add_argument("--cb-max-batch-tokens", type=common.positive_int, default=None,
                   help="ContinuousBatchingConfig.max_batch_tokens")
    t.add_argument("--cb-max-memory-percent", type=float, default=None,
                   help="ContinuousBatchingConfig.max_memory_percent")
    t.add_argument("--batch-size", type=common.positive_int, default=32,
                   help="batch of the padded-generate fallback (only without generate_batch)")
    d = p.add_argument_group("batch-1 parts (eager, compiled, compiled_forward), as benchmarks/latency.py")
    d.add_argument("--decode-input-len", type=common.positive_int, default=128)
    d.add_argument("--decode-output-len", type=common.positive_int, default=128)
    d.add_argument("--num-iters", type=common.positive_int, default=5)
    d.add_argument("--num-iters-warmup", type=common.positive_int, default=3)
    p.add_argument("--output-json", default=None, help="result file (default: benchmarks/results/...)")
    return p


# -- setup -------------------------------------------------------------------------------------
def device_memory_bytes(torch, device: str) -> int:
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages)


def build_model(args, config_dict: Dict[str, Any], torch):
    """HF's model of config_dict's shapes, randomly initialised directly on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = config_dict.get("model_type")
    if not model_type:
        raise SystemExit("error: config.json has no model_type")
    fields = {k: v for k, v in config_dict.items() if k != "model_type"}
    config = AutoConfig.for_model(model_type, **fields)
    dtype = getattr(torch, args.dtype)
    kwargs: Dict[str, Any] = {"dtype": dtype}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    if next(model.parameters()).device.type != args.device:  # a version that ignored the context
        model = model.to(args.device)
    model.generation_config.pad_token_id = 0  # prompts are unpadded; this only silences a warning
    return model.eval()


def sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(torch, device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# -- batch-1 latency parts ----------------------------------------------------------------------
def time_generate(model, torch, device: str, prompt, max_new_tokens: int) -> float:
    """Seconds for one generate of max_new_tokens tokens (checked) after prompt [1, input_len]."""
    sync(torch, device)
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    sync(torch, device)
    seconds = time.perf_counter() - start
    new = out.shape[-1] - prompt.shape[-1]
    if new != max_new_tokens:
        raise RuntimeError(f"generate produced {new} new tokens, expected {max_new_tokens}")
    return seconds


def batch1_latency(model, torch, args, vocab_size: int, gen) -> Dict[str, Any]:
    n = args.decode_output_len
    num_runs = 2 * (args.num_iters_warmup + args.num_iters)
    prompts = iter(torch.randint(0, vocab_size, (num_runs, 1, args.decode_input_len), generator=gen))

    def run(tokens: int) -> float:
        return time_generate(model, torch, args.device, next(prompts).to(args.device), tokens)

    # Long runs first: a static cache sized for N + input tokens then also serves the 1-token runs
    # without being rebuilt (a rebuild would recompile).
    warm_s = [run(n) for _ in range(args.num_iters_warmup)] + [run(1) for _ in range(args.num_iters_warmup)]
    full = [run(n) for _ in range(args.num_iters)]
    prefill = [run(1) for _ in range(args.num_iters)]
    t1, tn = common.median(prefill), common.median(full)
    decode_s = (tn - t1) / (n - 1)
    return {
        "warmup_s": warm_s,
        "prefill_s": prefill,
        "full_s": full,
        "prefill_ms": t1 * 1e3,
        "end_to_end_ms": tn * 1e3,
        "end_to_end_tokens_per_s": n / tn,
        "decode_ms_per_token": decode_s * 1e3,
        "decode_tokens_per_s": 1.0 / decode_s if decode_s > 0 else None,
    }


def reset_compilation(model, torch) -> None:
    """Forgets compiled graphs, so one compiled part does not run on another's."""
    for attr in ("_compiled_call", "_last_compile_config"):
        if attr in model.__dict__:
            delattr(model, attr)
    torch._dynamo.reset()


def part_eager(model, torch, args, vocab_size, gen) -> Dict[str, Any]:
    model.generation_config.cache_implementation = None
    result = batch1_latency(model, torch, args, vocab_size, gen)
    result["method"] = "generate, dynamic cache, no compile"
    return result


def part_compiled(model, torch, args, vocab_size, gen) -> Dict[str, Any]:
    reset_compilation(model, torch)
    model.generation_config.cache_implementation = "static"
    model.generation_config.disable_compile = False
    try:
        result = batch1_latency(model, torch, args, vocab_size, gen)
    finally:
        model.generation_config.cache_implementation = None
        reset_compilation(model, torch)
    result["method"] = ("generate, cache_implementation='static', compiled by transformers itself "
                        "(its default CompileConfig: mode='reduce-overhead')")
    result["compile_config"] = str(getattr(model.generation_config, "compile_config", None))
    return result


def part_compiled_forward(model, torch, args, vocab_size, gen) -> Dict[str, Any]:
    reset_compilation(model, torch)
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    try:
        result = batch1_latency(model, torch, args, vocab_size, gen)
    finally:
        del model.forward  # the instance attribute; the class's forward shows through again
        model.generation_config.cache_implementation = None
        reset_compilation(model, torch)
    result["method"] = ("generate, cache_implementation='static', model.forward = torch.compile(model.forward, "
                        "mode='reduce-overhead', fullgraph=True)")
    return result


# -- throughput part ----------------------------------------------------------------------------
def cb_config_for(args, num_prompts: int):
    """(ContinuousBatchingConfig or None, the fields set, the fields this version lacks).

    max_requests_per_batch is set to what generate_batch derives from a num_prompts workload
    (min(num_prompts, 1024)), so the manager built by the small warm-up call is sized as the
    timed call's own would be."""
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:
        try:
            from transformers.generation.configuration_utils import ContinuousBatchingConfig
        except ImportError:
            ContinuousBatchingConfig = None
    wanted = {"max_requests_per_batch": min(num_prompts, 1024), "num_blocks": args.cb_num_blocks,
              "max_batch_tokens": args.cb_max_batch_tokens, "max_memory_percent": args.cb_max_memory_percent}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if ContinuousBatchingConfig is None:
        return None, wanted, []
    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    kept = {k: v for k, v in wanted.items() if k in names}
    return ContinuousBatchingConfig(**kept), kept, sorted(set(wanted) - names)


def part_cb(model, torch, args, vocab_size, gen) -> Dict[str, Any]:
    from transformers import GenerationConfig

    inputs = [t.tolist() for t in torch.randint(0, vocab_size, (args.num_prompts, args.input_len), generator=gen)]
    warm = [t.tolist() for t in torch.randint(0, vocab_size, (min(args.num_warmup_prompts, args.num_prompts),
                                                                args.input_len), generator=gen)]
    if not hasattr(model, "generate_batch"):
        return padded_throughput(model, torch, args, inputs, warm)

    # EOS disabled (eos_token_id None -> -1 in the manager), greedy: every request runs its
    # max_new_tokens, as ignore_eos does in llmcore.
    gen_config = GenerationConfig(max_new_tokens=args.output_len, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
    cb_config, cb_fields, cb_missing = cb_config_for(args, args.num_prompts)
    kwargs: Dict[str, Any] = {"generation_config": gen_config}
    signature = inspect.signature(model.generate_batch).parameters
    if cb_config is not None and "continuous_batching_config" in signature:
        kwargs["continuous_batching_config"] = cb_config
    else:  # transformers < 5.x: the knobs lived on GenerationConfig
        for k, v in cb_fields.items():
            setattr(gen_config, k, v)
    persistent = "persistent_manager" in signature

    from transformers.utils import import_utils

    attn_before = model.config._attn_implementation
    flash = {name: bool(getattr(import_utils, name)(**({"kernels_fallback_ok": True} if "kernels_fallback_ok" in
                                                        inspect.signature(getattr(import_utils, name)).parameters
                                                        else {})))
             for name in ("is_flash_attn_2_available", "is_flash_attn_3_available") if hasattr(import_utils, name)}

    t0 = time.perf_counter()
    warm_out = model.generate_batch(warm, max_new_tokens=args.output_len, progress_bar=False,
                                    **({"persistent_manager": True} if persistent else {}), **kwargs)
    warmup_s = time.perf_counter() - t0
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    resolved = getattr(manager, "continuous_batching_config", None)
    reused = manager is not None and bool(getattr(manager, "warmed_up", False))
    if len(warm_out) != len(warm):
        raise RuntimeError(f"warm-up generate_batch returned {len(warm_out)} of {len(warm)} requests")
    try:
        sync(torch, args.device)
        t0 = time.perf_counter()
        outputs = model.generate_batch(inputs, max_new_tokens=args.output_len, progress_bar=False, **kwargs)
        sync(torch, args.device)
        elapsed = time.perf_counter() - t0
    finally:
        if hasattr(model, "destroy_cached_continuous_batching_manager"):
            model.destroy_cached_continuous_batching_manager()
    results = list(outputs.values())
    failed = [r.request_id for r in results if getattr(r, "error", None)]
    if len(results) != len(inputs) or failed:
        raise RuntimeError(f"generate_batch returned {len(results)} of {len(inputs)} requests; "
                           f"failed: {failed[:5]}")
    output_tokens = sum(len(r.generated_tokens) for r in results)
    short = sum(1 for r in results if len(r.generated_tokens) != args.output_len)
    prompt_tokens = sum(len(x) for x in inputs)
    return {
        "method": "generate_batch (continuous batching)",
        "warmup_s": warmup_s,
        # True: the timed call ran on the warmed-up manager (graphs captured, cache allocated);
        # False: the timed call built and warmed up its own, and elapsed_s includes that.
        "timed_call_reused_warm_manager": reused,
        "continuous_batching_config_set": cb_fields,
        "continuous_batching_config_unsupported": cb_missing,
        "continuous_batching_config_resolved": repr(resolved) if resolved is not None else None,
        "attn_implementation_before": attn_before,
        "flash_attention_available": flash,
        **rates(elapsed, len(inputs), prompt_tokens, output_tokens, short),
    }


def padded_throughput(model, torch, args, inputs: List[List[int]], warm: List[List[int]]) -> Dict[str, Any]:
    """Fallback without generate_batch: generate() on batches of --batch-size equal-length prompts."""
    def run(batch: List[List[int]]) -> int:
        ids = torch.tensor(batch, device=args.device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=args.output_len, min_new_tokens=args.output_len, pad_token_id=0)
        return (out.shape[-1] - ids.shape[-1]) * ids.shape[0]

    t0 = time.perf_counter()
    run(warm)
    warmup_s = time.perf_counter() - t0
    sync(torch, args.device)
    t0 = time.perf_counter()
    output_tokens = sum(run(inputs[i:i + args.batch_size]) for i in range(0, len(inputs), args.batch_size))
    sync(torch, args.device)
    elapsed = time.perf_counter() - t0
    short = 0 if output_tokens == len(inputs) * args.output_len else len(inputs)
    return {"method": f"generate on padded static batches of {args.batch_size} (no generate_batch)",
            "warmup_s": warmup_s,
            **rates(elapsed, len(inputs), sum(len(x) for x in inputs), output_tokens, short)}


def rates(elapsed: float, num_requests: int, prompt_tokens: int, output_tokens: int, short: int) -> Dict[str, Any]:
    return {
        "elapsed_s": elapsed,
        "num_requests": num_requests,
        "num_prompt_tokens": prompt_tokens,
        "num_output_tokens": output_tokens,
        "num_completions_short": short,
        "requests_per_s": num_requests / elapsed,
        "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed,
        "output_tokens_per_s": output_tokens / elapsed,
    }


# -- report -------------------------------------------------------------------------------------
def describe(part: str, r: Dict[str, Any], args) -> str:
    if "error" in r:
        return f"HF {part}: FAILED: {r['error']}"
    if part == "cb":
        return (f"HF cb ({r['method']}, {r['num_requests']} prompts, {args.input_len} in / {args.output_len} out): "
                f"Throughput: {r['requests_per_s']:.2f} requests/s, {r['total_tokens_per_s']:.2f} total tokens/s, "
                f"{r['output_tokens_per_s']:.2f} output tokens/s")
    rate = r["decode_tokens_per_s"]
    return (f"HF {part} (batch 1, {args.decode_input_len} in / {args.decode_output_len} out): prefill "
            f"{r['prefill_ms']:.2f} ms, decode {r['decode_ms_per_token']:.3f} ms/token "
            f"({rate:.1f} tok/s), end to end {r['end_to_end_tokens_per_s']:.1f} tok/s"
            if rate else f"HF {part}: decode time not measurable (t(N) <= t(1))")


def short_summary(part: str, r: Dict[str, Any]) -> str:
    if "error" in r:
        return f"{part} FAILED"
    if part == "cb":
        return f"cb {r['total_tokens_per_s']:.0f} total tok/s"
    rate = r.get("decode_tokens_per_s")
    return f"{part} {rate:.1f} tok/s" if rate else f"{part} n/a"


PARTS = {"cb": part_cb, "eager": part_eager, "compiled": part_compiled, "compiled_forward": part_compiled_forward}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise SystemExit(f"error: --parts takes a comma-separated list from {PART_ORDER}; got {args.parts!r}")
    if args.decode_output_len < 2:
        raise SystemExit("error: --decode-output-len must be at least 2")
    parts = [p for p in PART_ORDER if p in parts]

    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU")
    config = common.read_config(args.model)
    config.update(common.parse_overrides(args.hf_overrides))
    num_params = common.num_parameters(config)
    weight_bytes = num_params * torch.finfo(getattr(torch, args.dtype)).bits // 8
    memory = device_memory_bytes(torch, args.device)
    if weight_bytes > args.max_weight_fraction * memory:
        raise SystemExit(
            f"error: {args.model} has {num_params / 1e9:.1f}B parameters ({weight_bytes / 2**30:.0f} GiB in "
            f"{args.dtype}), over {args.max_weight_fraction:.0%} of this device's {memory / 2**30:.0f} GiB; "
            "HF transformers on one device is not run for it (this config is for llmcore with tensor parallelism)")

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    model = build_model(args, config, torch)
    build_s = time.perf_counter() - t0
    vocab_size = int(config["vocab_size"])

    record = common.new_record("hf_transformers", args.device, args, "torch", "transformers")
    record.update({"model_config": config, "num_parameters": num_params, "build_s": build_s,
                   "attn_implementation": model.config._attn_implementation, "parts": {}})
    # Written after every part, so a part that kills the process leaves the others' results.
    out_path = common.write_record(record, args.output_json)
    failed = False
    for part in parts:  # generate / generate_batch set no_grad themselves, as users run them
        record["parts"][part] = {"error": "did not finish (the process died in this part)"}
        common.write_record(record, str(out_path))
        t0 = time.perf_counter()
        try:
            result = PARTS[part](model, torch, args, vocab_size, gen)
        except Exception as e:  # record it and go on with the other parts
            failed = True
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["part_wall_s"] = time.perf_counter() - t0
        record["parts"][part] = result
        if args.device == "cuda":
            record["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        common.write_record(record, str(out_path))
        print(describe(part, result, args), flush=True)
        free_memory(torch, args.device)

    print(f"Results: {out_path}")
    print(f"hf_transformers {transformers.__version__} (torch {torch.__version__}) on {record['device']}: "
          + "; ".join(short_summary(p, record["parts"][p]) for p in parts))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
