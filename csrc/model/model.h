// A decoder-only model over a Backend: weights in the backend's memory and a forward pass over
// one scheduled step (any mix of prefill chunks and decode tokens).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "model/config.h"

namespace llmcore {

struct ForwardInput {
  Tensor token_ids;       // [T] int32, on the device
  Tensor positions;       // [T] int32, on the device
  AttentionMetadata attn;
  Tensor logits_indices;  // [L] int32, on the device: rows of the step whose logits are wanted
  Tensor logits_out;      // optional [L, V] float32 on the device: where the logits go (CUDA graph
                          // replays read them from a fixed address); unset: a new tensor
  RowKinds row_kinds;     // which of the T rows are generated tokens (backend.h); default: none
  RowKinds logits_row_kinds;  // the same for the L logits rows (each the kind of its source row)
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // Runs one step; fills the cache slots of the step's tokens. Returns logits [L, V] float32 on
  // the backend's device (input.logits_out when set). Enqueues work without synchronizing, so a
  // CUDA graph can capture it.
  virtual Tensor forward(const ForwardInput& input, KVCache& kv_cache) = 0;
};

enum class LoadFormat { kAuto, kDummy };

namespace parallel {
class Communicator;
}

// Which tensor-parallel shard a model instance is (parallel/sharding.h): rank `rank` of `size`,
// its collectives going through `comm` (unused when size is 1).
struct TensorParallel {
  int rank = 0;
  int size = 1;
  parallel::Communicator* comm = nullptr;
};

// Builds the model for config.architecture. kAuto reads safetensors from `dir` (throwing
// ValueError naming any missing or mis-shaped tensor); kDummy draws random weights of the
// configured shapes from `seed`. With tp.size > 1 the instance holds and reads only rank
// tp.rank's slices, and its forward pass joins the other ranks' through tp.comm.
std::unique_ptr<Model> create_model(const ModelConfig& config, const std::string& dir,
                                    Backend& backend, LoadFormat load_format, uint64_t seed,
                                    const TensorParallel& tp = {});

}  // namespace llmcore
