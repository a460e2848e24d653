// Paged attention over the KV cache: one launcher for every query row of a step (prefill
// chunks, chunk continuations after cached context and decode rows alike).
//
// Batch invariance: the bits of an output row depend only on its query vector, its position,
// the sliding window and the cached keys and values of its sequence; never on the other
// sequences of the step, on how its prompt was split into chunks, or on whether its context
// was prefix-cached. Keys are visited in tiles aligned at absolute positions and grouped in
// partitions of kPagedAttentionPartitionSize keys (also aligned at absolute positions); every
// row's result is the same left fold over its partitions, whether one CTA walks them all or
// one CTA per partition writes them to the workspace for a combine kernel (paged_attention.cu
// has the argument).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "backend/backend.h"
#include "core/tensor.h"

namespace llmcore::kernels {

// Keys per split-K partition: a decode row whose keys span several partitions gets one CTA per
// partition (flash decoding); a fixed number, so the partitions are those of the row alone.
constexpr int kPagedAttentionPartitionSize = 512;

// Device bytes paged_attention() needs as `workspace` for this step: fp32 partial outputs of
// the decode rows whose context spans several partitions. 0 when no row can be split
// (meta.max_seq_len <= kPagedAttentionPartitionSize, or meta.min_query_len > 1: no decode row).
// Depends only on the host ints of `meta`.
size_t paged_attention_workspace_bytes(const AttentionMetadata& meta, const AttnShape& shape);

// Causal attention of the q part of qkv over the paged cache, which already holds this step's
// k and v. Tensors live on the device:
//   out      [T, Hq * D]            bf16 or fp16
//   qkv      [T, (Hq + 2 Hkv) * D]  same dtype
//   k_cache, v_cache [NB, Hkv, BS, D] same dtype
//   meta.query_start_loc [S + 1], meta.seq_lens [S], meta.block_tables [S, max_blocks] int32;
//   meta.num_seqs / max_query_len / min_query_len / max_seq_len are host ints, bounds of the
//   sequences' query lengths and lengths: min_query_len must not exceed any query length (1 is
//   always safe), max_query_len and max_seq_len must not be below any (they choose the kernels
//   that run: a prompt's rows are computed only if max_query_len admits them).
// Query token i of sequence s sits at position seq_lens[s] - query_len(s) + i and attends to
// keys [max(0, pos - sliding_window + 1), pos] (sliding_window 0: [0, pos]). Scores are
// (q . k) * scale. Head dims 32, 64, 96, 128, 256; any block size; any Hq / Hkv ratio.
// `workspace` holds at least paged_attention_workspace_bytes(meta, shape) bytes (may be null
// when that is 0), 16-byte aligned. Runs asynchronously on `stream`. Device-side metadata is
// never trusted for addressing: a block id outside [0, NB) (or a position past the block table)
// where keys are read is not dereferenced and turns the sequence's rows that read it into NaN.
void paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                     const AttentionMetadata& meta, const AttnShape& shape, float scale,
                     int sliding_window, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

}  // namespace llmcore::kernels
