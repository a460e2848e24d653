// Paged attention launchers (decode and prefill over the paged KV cache).
#pragma once

#include <cuda_runtime.h>

#include "backend/backend.h"
#include "core/tensor.h"
