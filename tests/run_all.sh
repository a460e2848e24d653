#!/usr/bin/env bash
# The whole test suite: GoogleTest (via ctest) and pytest. Expects the package installed
# (pip install .) and the test requirements (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/tests
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLMCORE_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
python3 -m pytest tests/python -q -p no:cacheprovider "$@"
