"""All-reduce microbenchmark for tensor parallelism: what one row-parallel layer's output costs to
reduce and normalize (residual += all_reduce(x); x = rms_norm(residual) * w) on every visible GPU,
with the fused LL kernel, the LL and two-phase one-shot kernels, and NCCL, for 1 to 256 rows of
bf16 at --hidden (one row per sequence in a decode step).

Runs the C++ benchmark `bench_all_reduce` (benchmarks/kernels/bench_all_reduce.cpp, built with the
tests when NCCL is found; --binary to point at it): each rank replays a CUDA graph of --reps calls,
all ranks at once, timed with CUDA events on rank 0, median of --trials. Needs 2 or more GPUs.
Writes benchmarks/results/all_reduce-<device>-<date>.json and prints one summary line.

    python3 benchmarks/all_reduce.py --binary /tmp/llmcore-build/bench_all_reduce --hidden 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WAYS = ("fused", "ll_then_norm", "two_phase_then_norm", "nccl_then_norm")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", type=Path, default=common.ROOT / "build" / "tests" / "bench_all_reduce")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--trials", type=int, default=9)
    p.add_argument("--output-json", default=None)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.binary.is_file():
        raise SystemExit(f"error: {args.binary} not found: build with the CUDA backend, NCCL and LLMCORE_BUILD_TESTS=ON")
    cmd = [str(args.binary), "--hidden", str(args.hidden), "--reps", str(args.reps), "--trials", str(args.trials)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    data = json.loads(res.stdout)
    record = common.new_record("all_reduce", "cuda", args)
    record.update({"command_binary": cmd, "results": data})
    path = common.write_record(record, args.output_json)
    for r in data["rows"]:
        ways = ", ".join(f"{w} {r[w + '_us']:.1f}" for w in WAYS if r.get(w + "_us") is not None)
        print(f"rows {r['rows']:4d} ({r['bytes'] // 1024:5d} KiB): {ways} us; all-reduce alone: ll {r['ll_us']:.1f}, "
              f"two-phase {r['two_phase_us']:.1f}, nccl {r['nccl_us']:.1f} us; add_rms_norm {r['add_rms_norm_us']:.1f} us")
    print(f"Results: {path}")
    one = data["rows"][0]
    print(f"All-reduce ({data['gpu']} x {data['world']}, hidden {data['hidden']}): one row reduced + normalized in "
          f"{one['fused_us']:.1f} us fused vs {one['nccl_then_norm_us']:.1f} us with NCCL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
