#!/usr/bin/env bash
# One lease that checks and profiles the attention kernels on a Hopper GPU (sm_90a):
#   1. benchmarks/kernels/probe_wgmma_bits.cu (warpgroup MMA vs mma.sync: raw instructions and the
#      kernels' own tile functions, bits compared);
#   2. the default build (90a: prompt CTAs of head dim 128 on the warpgroup MMA): test_cuda and the
#      GPU end-to-end tests, the attention rows of bench_kernels and an ncu profile of one
#      4096-token prefill launch;
#   3. a 90 build of the same sources (mma.sync everywhere, same tiles) for the same two.
# Run from the repository root on the device; everything lands in $OUT/attn_check.tar.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/llmcore-out}; mkdir -p "$OUT"
W=/tmp/attn_check; rm -rf $W; mkdir -p $W
( nvcc -O3 -std=c++17 -arch=sm_90a -I. -Icsrc benchmarks/kernels/probe_wgmma_bits.cu csrc/core/dtype.cpp \
    -o /tmp/probe_wgmma_bits > $W/probe_build.log 2>&1 && timeout 60 /tmp/probe_wgmma_bits > $W/probe.json 2> $W/probe.err
  echo "probe rc=$?" >> $W/probe.err ) &
ppid=$!
bash benchmarks/gpu_session.sh build > $W/build.txt 2>&1 || { cat $W/build.txt; exit 1; }
mv $OUT/build.log $W/ 2>/dev/null
source benchmarks/device_env.sh
export PYTHONPATH=$PWD/python:$PWD/tests/python:/tmp/site PYTHONUNBUFFERED=1
( cmake -S . -B /tmp/build90 -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90-real \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" > $W/build90.log 2>&1 &&
  cmake --build /tmp/build90 -j 12 --target bench_kernels >> $W/build90.log 2>&1; echo "build90 rc=$?" >> $W/build90.log ) &
bpid=$!
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
profile() {  # $1 binary, $2 name
  timeout 60 $1 --attention-only 1 > $W/attn_$2.json 2> $W/attn_$2.err; echo "attn $2 rc=$?"
  python3 - "$W/attn_$2.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(" ".join(f"b{x['batch']}c{x['context']}={x['pct_of_copy']}%" for x in r["decode_attention"]))
print(" ".join(f"p{x['tokens']}={x['TFLOP/s']}" for x in r["prefill_attention"]))
PY
  [ -n "$NCU" ] && timeout -s KILL 150 "$NCU" --clock-control none --kernel-name-base demangled \
    --kernel-name "regex:PagedAttentionKernel" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section LaunchStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables --section InstructionStats \
    $1 --prefill-tokens 4096 > $W/ncu_$2.txt 2>&1; echo "ncu $2 rc=$?"
  grep -E "Duration|Throughput|Registers|Achieved Occupancy|Block Limit|Bank|Pipe|Warp Cycles Per Issued|Issued Ipc" $W/ncu_$2.txt | head -30
}
wait $ppid; cat $W/probe.err
timeout 200 /tmp/llmcore-build/test_cuda > $W/test_cuda.log 2>&1; echo "test_cuda rc=$?"; tail -1 $W/test_cuda.log
grep -E "^\[  FAILED" $W/test_cuda.log | head
cp /tmp/llmcore-build/_C*.so python/llmcore/
timeout 150 python3 -m pytest tests/python/test_gpu.py -q -p no:cacheprovider > $W/pytest_gpu.log 2>&1; echo "pytest gpu rc=$?"; tail -1 $W/pytest_gpu.log
profile /tmp/llmcore-build/bench_kernels 90a
wait $bpid; tail -1 $W/build90.log
[ -x /tmp/build90/bench_kernels ] && profile /tmp/build90/bench_kernels 90
(cd $W && tar -cf $OUT/attn_check.tar .)
