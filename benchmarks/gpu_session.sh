#!/usr/bin/env bash
# One lease on a GPU machine: build with CUDA, run the kernel tests and the GPU end-to-end
# tests, then the benchmarks. Logs and JSON go to $OUT (the device tool fetches them).
#   bash benchmarks/gpu_session.sh [stages...]   stages: build ctest pytest latency throughput serving kernels profile peers tp allreduce
# tp (tensor parallelism, 2+ GPUs) is tp-test (test_gpu_tp.py with the 70B test), tp-8b (latency of the 8B
# config at TP 1 and 2) and tp-70b (the 70B config on all GPUs: latency at batch 1, throughput 1000 x
# 1024/128); name those to run a part (the whole of tp can take longer than one 10-minute command).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/llmcore-out}; mkdir -p "$OUT"
touch /tmp/llmcore-session-start
stages=${*:-build ctest pytest latency throughput}
source benchmarks/device_env.sh
export PYTHONPATH=$PWD/python:$PWD/tests/python PYTHONUNBUFFERED=1
# Python packages the machine lacks (the server's fastapi, uvicorn, ...), carried as wheels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
# The device tree has no git: the commit comes from COMMIT, written where the tree was prepared
# (git rev-parse --short HEAD > COMMIT), unless LLMCORE_COMMIT is set.
export LLMCORE_COMMIT=${LLMCORE_COMMIT:-$(cat COMMIT 2>/dev/null || echo unknown)}
build=/tmp/llmcore-build
has() { [[ " $stages " == *" $1 "* ]]; }
if has build; then
  cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a-real \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" > "$OUT/build.log" 2>&1 &&
    cmake --build $build -j "$(nproc)" >> "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -30 "$OUT/build.log"; exit 1; }
  echo "build ok"
fi
cp $build/_C*.so python/llmcore/
if has ctest; then
  timeout 300 ctest --test-dir $build -j 8 --output-on-failure > "$OUT/ctest.log" 2>&1
  echo "ctest rc=$? $(grep -E 'tests passed' "$OUT/ctest.log")"; grep -E "\(Failed\)|\(SEGFAULT\)|Timeout" "$OUT/ctest.log" | head
fi
if has pytest; then
  timeout 400 python3 -m pytest tests/python/test_gpu.py -v -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest gpu rc=$?"; grep -E "PASSED|FAILED|SKIPPED|Error|assert" "$OUT/pytest_gpu.log" | head -20
fi
if has latency; then
  timeout 300 python3 benchmarks/latency.py --model benchmarks/configs/llama-3-8b > "$OUT/latency.log" 2>&1
  echo "latency rc=$?"; tail -3 "$OUT/latency.log"
fi
if has throughput; then
  timeout 420 python3 benchmarks/throughput.py --model benchmarks/configs/llama-3-8b --input-len 1024 \
    --output-len 128 --num-prompts 1000 > "$OUT/throughput.log" 2>&1
  echo "throughput rc=$?"; tail -3 "$OUT/throughput.log"
fi
if has serving; then
  timeout 590 python3 benchmarks/serving.py --launch-server --model benchmarks/configs/llama-3-8b \
    --tokenizer python/llmcore/models/tiny-random --load-format dummy --max-concurrency 64 --compare-offline \
    --disable-tqdm > "$OUT/serving.log" 2>&1
  echo "serving rc=$?"; tail -3 "$OUT/serving.log"
fi
if has kernels; then
  timeout 300 python3 benchmarks/kernels.py --binary $build/bench_kernels > "$OUT/kernels.log" 2>&1
  echo "kernels rc=$?"; cat "$OUT/kernels.log" | tail -60
fi
if has profile; then
  timeout 400 python3 benchmarks/profile_step.py --model benchmarks/configs/llama-3-8b > "$OUT/profile.log" 2>&1
  echo "profile rc=$?"; grep -E "^== |^ " "$OUT/profile.log" | head -60
fi
if has peers; then
  timeout 420 python3 benchmarks/peers/hf_transformers.py --model benchmarks/configs/llama-3-8b > "$OUT/peers.log" 2>&1
  echo "peers rc=$?"; tail -5 "$OUT/peers.log"
fi
if has tp || has tp-test || has tp-8b || has tp-70b; then
  # GPUs llmcore sees (CUDA_VISIBLE_DEVICES applies), else the ones nvidia-smi lists.
  ngpu=$(python3 -c "import llmcore; print(llmcore._C.cuda_device_count())" 2>/dev/null ||
         nvidia-smi -L 2>/dev/null | grep -c "^GPU ")
  ngpu=${ngpu:-0}
  # The 70B config (64 query / 8 KV heads) splits over 2, 4 or 8 GPUs: the most that are visible.
  tp70=1; while (( tp70 * 2 <= ngpu && tp70 < 8 )); do tp70=$((tp70 * 2)); done
  echo "tp: $ngpu GPUs visible; the 70B config runs at TP $tp70"
fi
if has tp || has tp-test; then
  LLMCORE_TEST_70B=1 timeout 590 python3 -m pytest tests/python/test_gpu_tp.py -v -s -p no:cacheprovider \
    > "$OUT/pytest_gpu_tp.log" 2>&1
  echo "pytest gpu tp rc=$?"; grep -E "PASSED|FAILED|SKIPPED|Error|assert|TP=|70B" "$OUT/pytest_gpu_tp.log" | head -40
fi
if has tp || has tp-8b; then
  for tp in 1 2; do
    (( tp <= ngpu )) || { echo "latency 8B TP $tp: skipped ($ngpu GPUs)"; continue; }
    timeout 300 python3 benchmarks/latency.py --model benchmarks/configs/llama-3-8b --batch-sizes 1 -tp $tp \
      > "$OUT/latency_8b_tp$tp.log" 2>&1
    echo "latency 8B TP $tp rc=$?"; tail -1 "$OUT/latency_8b_tp$tp.log"
  done
fi
if has tp || has tp-70b; then
  if (( tp70 >= 2 )); then
    timeout 420 python3 benchmarks/latency.py --model benchmarks/configs/llama-3-70b --batch-sizes 1 -tp $tp70 \
      > "$OUT/latency_70b_tp$tp70.log" 2>&1
    echo "latency 70B TP $tp70 rc=$?"; tail -1 "$OUT/latency_70b_tp$tp70.log"
    timeout 590 python3 benchmarks/throughput.py --model benchmarks/configs/llama-3-70b --input-len 1024 \
      --output-len 128 --num-prompts 1000 -tp $tp70 > "$OUT/throughput_70b_tp$tp70.log" 2>&1
    echo "throughput 70B TP $tp70 rc=$?"; tail -1 "$OUT/throughput_70b_tp$tp70.log"
  else
    echo "70B: skipped (needs 2+ GPUs; $ngpu visible)"
  fi
fi
if has allreduce; then  # 2+ GPUs: the tensor-parallel all-reduce + RMSNorm microbenchmark
  for h in 4096 8192; do
    timeout 200 python3 benchmarks/all_reduce.py --binary $build/bench_all_reduce --hidden $h > "$OUT/all_reduce_$h.log" 2>&1
    echo "all_reduce hidden $h rc=$?"; cat "$OUT/all_reduce_$h.log"
  done
fi
# Only this session's records (the device tool brings back a limited number of files).
find benchmarks/results -name "*.json" -newer /tmp/llmcore-session-start -exec cp {} "$OUT/" \;
exit 0
