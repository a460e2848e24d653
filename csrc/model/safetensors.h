// Read-only access to safetensors checkpoints through mmap: a single `model.safetensors`, any
// `*.safetensors` set, or a sharded `model.safetensors.index.json`. Tensors are views into the
// mapping, which stays alive while the WeightStore (or any view's keepalive) does.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace llmcore {

class WeightStore {
 public:
  // `dir` holds the checkpoint. Throws ValueError when there is no safetensors file, or when a
  // header is malformed (naming the file).
  static WeightStore open(const std::string& dir);

  bool has(const std::string& name) const;
  // CPU view in the file's dtype. Throws ValueError naming the tensor when it is missing.
  Tensor get(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  struct Entry {
    Tensor view;
    std::string file;
  };
  std::map<std::string, Entry> entries_;
  std::vector<std::shared_ptr<void>> mappings_;
};

// Writes tensors to a .safetensors file (tests and tools; not a hot path).
void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors);

}  // namespace llmcore
