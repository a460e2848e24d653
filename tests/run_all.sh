#!/usr/bin/env bash
# The whole test suite: GoogleTest (via ctest) and pytest. Expects the package installed
# (pip install .) and the test requirements (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/tests
# The CUDA kernel tests need a GPU; without one (CI) the test build leaves the CUDA backend out
# (pip install . has compiled it already).
cuda=OFF
nvidia-smi -L >/dev/null 2>&1 && cuda=ON
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMCORE_BUILD_PYTHON=OFF -DLLMCORE_CUDA=$cuda >/dev/null
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
python3 -m pytest tests/python -q -p no:cacheprovider "$@"
