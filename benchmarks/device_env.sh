#!/usr/bin/env bash
# Source this on a lent GPU machine (Ubuntu, no network) before building llmcore there.
# Headers/libraries the image lacks come as Debian .deb files in .deb/ (git-ignored, carried
# with the run); each is unpacked into a private prefix only if the system does not have it.
prefix=/tmp/llmcore-prefix
mkdir -p "$prefix"
have_header() { echo "#include <$1>" | ${CXX:-c++} -x c++ -fsyntax-only - >/dev/null 2>&1; }
unpack() { for f in .deb/$1_*.deb; do [ -f "$f" ] && dpkg -x "$f" "$prefix"; done; }
have_header nlohmann/json.hpp || unpack nlohmann-json3-dev
have_header sentencepiece_processor.h || { unpack libsentencepiece-dev; unpack libsentencepiece0; unpack libprotobuf-lite32; }
pkg-config --exists libpcre2-8 || { unpack libpcre2-dev; unpack libpcre2-8-0; }
have_header gtest/gtest.h || unpack libgtest-dev
export CPATH="$prefix/usr/include:$prefix/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}"
export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$prefix/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export CMAKE_PREFIX_PATH="$prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# pkg-config files in a dpkg -x tree point at /usr; point them at the prefix.
for pc in "$prefix"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc "$prefix"/usr/share/pkgconfig/*.pc; do
  [ -f "$pc" ] && sed -i "s#^prefix=/usr#prefix=$prefix/usr#" "$pc"
done
# cuBLAS (and NCCL) from the venv's nvidia wheels when the toolkit lacks them.
py_nvidia=$(python3 -c "import nvidia, os; print(list(nvidia.__path__)[0])" 2>/dev/null)
for d in "$py_nvidia/cu13" "$py_nvidia/cublas"; do
  [ -f "$d/include/cublasLt.h" ] && export LLMCORE_CUBLAS_ROOT="$d" && break
done
export LD_LIBRARY_PATH="${LLMCORE_CUBLAS_ROOT:+$LLMCORE_CUBLAS_ROOT/lib:}$LD_LIBRARY_PATH"
