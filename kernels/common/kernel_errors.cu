// Messages for the KernelError bits that kernels report through the device error word.
#include "kernels/kernels.h"

namespace llmcore::kernels {

const char* kernel_error_name(int bit) {
  switch (bit) {
    case kErrTokenId:
      return "embedding: a token id is outside [0, vocab_size)";
    case kErrGatherIndex:
      return "gather_rows: an index is outside the source rows";
    case kErrPosition:
      return "rotary_embedding: a position is outside the rotary table";
    case kErrSlot:
      return "write_kv_cache: a slot is past the end of the cache";
  }
  return "unknown kernel error";
}

}  // namespace llmcore::kernels
