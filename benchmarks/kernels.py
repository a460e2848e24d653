"""Kernel microbenchmarks: llmcore's decode and prefill attention and its linear layers on one GPU,
against the measured ceilings (device copy bandwidth) and against torch.matmul on the same GEMM
shapes, in the same process run.

Runs the C++ benchmark `bench_kernels` (benchmarks/kernels/bench_kernels.cpp, built with the tests:
cmake -DLLMCORE_BUILD_TESTS=ON; --binary to point at it), then times torch.matmul(x, W.T) in bf16
on every linear shape it measured (CUDA events, median of 7 x 20 calls after warm-up, random
inputs). The decode GEMM rows (M = 1..256) cycle through enough weight copies that no call reads
its weight from L2, for llmcore's kernel, its cuBLASLt linear and torch.matmul alike. Writes benchmarks/results/kernels-<device>-<date>.json and prints one summary line.

    python3 benchmarks/kernels.py --binary /tmp/llmcore-build/bench_kernels
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", type=Path, default=common.ROOT / "build" / "tests" / "bench_kernels")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--output-json", default=None)
    return p


def torch_matmul_ms(torch, m: int, n: int, k: int, copies: int = 1) -> float:
    """Median ms of torch.matmul(x, w.T, out=...) in bf16 (for the lm_head llmcore writes fp32
    logits, 2x the output bytes; torch here writes bf16, so that row flatters torch). With
    copies > 1 the calls cycle through that many weights, as bench_kernels' skinny rows do."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand((m, k), device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
    w0 = torch.rand((n, k), device="cuda", dtype=torch.bfloat16, generator=g) * 2 - 1
    ws = [w0] + [w0.clone() for _ in range(copies - 1)]
    out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
    turn = [0]

    def fn():
        torch.matmul(x, ws[turn[0]].T, out=out)
        turn[0] = (turn[0] + 1) % copies
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(7):
        start.record()
        for _ in range(20):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 20)
    return statistics.median(times)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.binary.is_file():
        raise SystemExit(f"error: {args.binary} not found: build with the CUDA backend and LLMCORE_BUILD_TESTS=ON")
    cmd = [str(args.binary), "--heads", str(args.heads), "--kv-heads", str(args.kv_heads),
           "--head-dim", str(args.head_dim), "--block-size", str(args.block_size)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    data = json.loads(res.stdout)

    import torch

    for row in data["linear"]:
        ms = torch_matmul_ms(torch, row["m"], row["n"], row["k"])
        row["torch_ms"] = ms
        row["torch_TFLOP/s"] = 2.0 * row["m"] * row["n"] * row["k"] / (ms * 1e-3) / 1e12
        row["pct_of_torch"] = 100.0 * ms / row["ms"] if row["ms"] > 0 else None
        for role in ("prompt", "generated"):
            if row.get(f"{role}_ms"):
                row[f"{role}_pct_of_torch"] = 100.0 * ms / row[f"{role}_ms"]

    copy_gbs = data["copy"]["GB/s"]
    for row in data.get("skinny", []):
        copies = max(1, -(-(256 << 20) // (2 * row["n"] * row["k"])))
        row["torch_ms"] = torch_matmul_ms(torch, row["m"], row["n"], row["k"], copies)
        for t in row["tilings"]:
            t["pct_of_copy"] = 100.0 * row["bytes"] / (t["ms"] * 1e-3) / 1e9 / copy_gbs
        best = min(row["tilings"], key=lambda t: t["ms"])
        default = next(t for t in row["tilings"] if t["default"])
        row["best_ms"], row["default_ms"] = best["ms"], default["ms"]
        row["default_pct_of_copy"] = default["pct_of_copy"]
        row["cublas_pct_of_copy"] = 100.0 * row["bytes"] / (row["cublas_ms"] * 1e-3) / 1e9 / copy_gbs

    record = common.new_record("kernels", "cuda", args, "torch")
    record.update({"command_binary": cmd, "results": data})
    path = common.write_record(record, args.output_json)

    copy = data["copy"]["GB/s"]
    print(f"copy {copy:.0f} GB/s (read + write) on {data['gpu']}")
    for r in data["decode_attention"]:
        print(f"decode attention batch {r['batch']:3d} context {r['context']:5d}: {r['ms']:.3f} ms, "
              f"{r['GB/s']:.0f} GB/s = {r['pct_of_copy']:.0f}% of copy")
    for r in data["prefill_attention"]:
        print(f"prefill attention {r['tokens']:5d} tokens causal: {r['ms']:.3f} ms, {r['TFLOP/s']:.0f} TFLOP/s")
    for r in data["linear"]:
        print(f"linear {r['name']:8s} M={r['m']:5d} N={r['n']:6d} K={r['k']:5d}: {r['ms']:.4f} ms "
              f"{r['TFLOP/s']:6.1f} TFLOP/s {r['GB/s']:6.0f} GB/s; torch.matmul {r['torch_ms']:.4f} ms "
              f"-> llmcore at {r['pct_of_torch']:.0f}% of torch"
              + (f"; prompt plan {r['prompt_ms']:.4f} ms ({r['prompt_pct_of_torch']:.0f}%), generated-row plan "
                 f"{r['generated_ms']:.4f} ms ({r['generated_pct_of_torch']:.0f}%)" if "prompt_pct_of_torch" in r else ""))
    for r in data.get("skinny", []):
        best = min(r["tilings"], key=lambda t: t["ms"])
        print(f"decode GEMM {r['name']:8s} M={r['m']:4d}: {r['default_ms']:.4f} ms = {r['default_pct_of_copy']:.0f}% of copy "
              f"(best tiling {best['cols']}x{best['rows']} {best['ms']:.4f}); cuBLASLt linear {r['cublas_ms']:.4f} ms "
              f"= {r['cublas_pct_of_copy']:.0f}%; torch.matmul {r['torch_ms']:.4f} ms"
              + (f"; with SwiGLU fused {r['gated_ms']:.4f} ms (decode GEMM then silu_and_mul {r['unfused_ms']:.4f})"
                 if "gated_ms" in r else ""))
    for r in data.get("sampling", []):
        print(f"sampling {r['rows']:3d} rows x 128256 {r['mode']:17s}: {r['ms']:.4f} ms, {r['us_per_row']:.1f} us/row "
              f"= {r['passes']:.1f} reads of the logits at copy speed")
    print(f"Results: {path}")
    b64 = [r for r in data["decode_attention"] if r["batch"] == 64]
    big = [r for r in data["linear"] if r["m"] >= 2048]
    pre = [r for r in data["prefill_attention"] if r["tokens"] == 4096]
    print("Kernels: decode attention b64 " + ", ".join(f"ctx {r['context']} {r['pct_of_copy']:.0f}%" for r in b64)
          + " of copy; prefill attention 4k " + (f"{pre[0]['TFLOP/s']:.0f} TFLOP/s" if pre else "n/a")
          + f"; linear M>=2048 at {min(r['pct_of_torch'] for r in big):.0f}-{max(r['pct_of_torch'] for r in big):.0f}% of torch.matmul"
          + (f" (prompt plan {min(r['prompt_pct_of_torch'] for r in big):.0f}-"
             f"{max(r['prompt_pct_of_torch'] for r in big):.0f}%)" if big and all("prompt_pct_of_torch" in r for r in big) else "")
          + "".join(f"; decode GEMM M={m} at {min(r['default_pct_of_copy'] for r in sk)/1:.0f}-"
                    f"{max(r['default_pct_of_copy'] for r in sk):.0f}% of copy"
                    for m in (1, 8, 64) for sk in [[r for r in data.get("skinny", []) if r["m"] == m]] if sk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
