// Host launchers of llmcore's CUDA kernels: plain functions over Tensors and a stream, no
// templates (the dispatch from runtime dtype to compile-time types happens in the .cu files).
// Every launcher has a CPU twin in csrc/backend/cpu and a GoogleTest comparing the two.
#pragma once

#include <cuda_runtime.h>

#include "attention/attention.h"
#include "core/tensor.h"
