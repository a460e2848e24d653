// Tensor parallelism on CPU ranks (threads joined by ThreadCommunicator): the collectives' results,
// an aborted group releasing every waiting rank, the worker pool reporting the failed rank's own
// error, and sharded Llama-family models (checkpoint and dummy weights, vocabularies that do not
// split evenly, biases, tied embeddings, replicated KV heads) computing the unsharded model's
// logits.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <future>
#include <thread>

#include "model/llama.h"
#include "model/llama_test_util.h"
#include "model/safetensors.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "parallel/worker_pool.h"

namespace llmcore::parallel {
namespace {

using testing_util::SeqChunk;

// Runs fn(rank) on `world` threads; fails the test instead of hanging if one does not return.
void on_threads(int world, const std::function<void(int)>& fn) {
  std::vector<std::future<void>> done;
  for (int r = 0; r < world; ++r) done.push_back(std::async(std::launch::async, fn, r));
  for (auto& f : done) ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready) << "a rank hung";
  for (auto& f : done) f.get();
}

TEST(ThreadCommunicator, AllReduceSumsAndAllGatherPlacesColumns) {
  constexpr int kWorld = 4;
  auto comms = create_thread_communicators(kWorld);
  on_threads(kWorld, [&](int r) {
    Communicator& comm = *comms[r];
    EXPECT_EQ(comm.rank(), r);
    EXPECT_EQ(comm.world_size(), kWorld);
    for (int round = 0; round < 3; ++round) {  // back-to-back collectives reuse the barrier
      Tensor x = Tensor::empty({5, 7}, DType::kF32);
      for (int i = 0; i < 35; ++i) x.data_as<float>()[i] = static_cast<float>(r * 1000 + i + round);
      comm.all_reduce_sum(x);
      for (int i = 0; i < 35; ++i) EXPECT_EQ(x.data_as<float>()[i], 6000.0f + 4 * (i + round)) << i;
    }
    // 10 columns in parts of 3: ranks hold 3, 3, 3 and 1 (plus 2 padding columns).
    Tensor part = Tensor::empty({2, 3}, DType::kF32);
    for (int row = 0; row < 2; ++row)
      for (int c = 0; c < 3; ++c) part.data_as<float>()[row * 3 + c] = static_cast<float>(100 * row + 3 * r + c);
    Tensor out = Tensor::empty({2, 10}, DType::kF32);
    comm.all_gather_columns(out, part);
    for (int row = 0; row < 2; ++row)
      for (int c = 0; c < 10; ++c) EXPECT_EQ(out.data_as<float>()[row * 10 + c], 100.0f * row + c);
    comm.synchronize();
  });
}

TEST(ThreadCommunicator, AbortReleasesRanksWaitingInACollective) {
  constexpr int kWorld = 3;
  auto comms = create_thread_communicators(kWorld);
  std::atomic<int> aborted{0};
  on_threads(kWorld, [&](int r) {
    if (r == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the others are waiting by now
      comms[r]->abort("rank 1 failed: out of memory");
      return;
    }
    Tensor x = Tensor::zeros({4}, DType::kF32);
    try {
      comms[r]->all_reduce_sum(x);
      ADD_FAILURE() << "rank " << r << " finished a collective rank 1 never joined";
    } catch (const GroupAborted& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1 failed: out of memory"), std::string::npos) << e.what();
      ++aborted;
    }
    EXPECT_THROW(comms[r]->synchronize(), GroupAborted);
  });
  EXPECT_EQ(aborted.load(), 2);
}

TEST(WorkerPool, RethrowsTheFailedRanksOwnErrorNotTheOthersAbort) {
  constexpr int kWorld = 3;
  auto comms = create_thread_communicators(kWorld);
  WorkerPool pool(kWorld, /*spin=*/true);
  std::vector<std::thread::id> ids(kWorld);
  pool.run([&](int r) { ids[r] = std::this_thread::get_id(); }, [](int, const std::exception&) {});
  EXPECT_NE(ids[0], ids[1]);
  std::vector<std::thread::id> again(kWorld);
  pool.run([&](int r) { again[r] = std::this_thread::get_id(); }, [](int, const std::exception&) {});
  EXPECT_EQ(ids, again) << "each rank keeps its thread";

  try {
    pool.run(
        [&](int r) {
          if (r == 2) throw_value_error("checkpoint is missing tensor 'x'");
          Tensor x = Tensor::zeros({4}, DType::kF32);
          comms[r]->all_reduce_sum(x);  // waits for rank 2, which never comes
        },
        [&](int r, const std::exception& e) { comms[r]->abort(e.what()); });
    ADD_FAILURE() << "no error";
  } catch (const GroupAborted& e) {
    ADD_FAILURE() << "rethrew another rank's abort: " << e.what();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kValue);
    EXPECT_NE(std::string(e.what()).find("tensor-parallel rank 2: checkpoint is missing tensor 'x'"),
              std::string::npos)
        << e.what();
  }
}

TEST(WorkerPool, BarrierReleasesRanksWhenOneFailsBeforeIt) {
  WorkerPool pool(3, /*spin=*/false);
  std::atomic<int> stopped{0};
  try {
    pool.run(
        [&](int r) {
          if (r == 1) throw std::runtime_error("bad input");
          try {
            pool.barrier(r);
          } catch (const GroupAborted&) {
            ++stopped;
            throw;
          }
          ADD_FAILURE() << "rank " << r << " passed a barrier rank 1 never reached";
        },
        [](int, const std::exception&) {});
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("tensor-parallel rank 1: bad input"), std::string::npos) << e.what();
  }
  EXPECT_EQ(stopped.load(), 2);
  // The pool is fine afterwards: a clean run passes its barrier.
  std::atomic<int> passed{0};
  pool.run([&](int r) { pool.barrier(r); ++passed; }, [](int, const std::exception&) {});
  EXPECT_EQ(passed.load(), 3);
}

TEST(WorkerPool, ARankThatNeverStopsDoesNotHangTheCaller) {
  auto* pool = new WorkerPool(2, /*spin=*/true);  // leaked if wedged, as the executor does
  std::atomic<bool> release{false};
  const auto start = std::chrono::steady_clock::now();
  try {
    pool->run(
        [&](int r) {
          if (r == 1) throw std::runtime_error("device lost");
          while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // stuck in a device call
        },
        [](int, const std::exception&) {}, /*grace_s=*/0.2);
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("device lost"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("restart the process"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
  EXPECT_TRUE(pool->wedged());
  EXPECT_THROW(pool->run([](int) {}, [](int, const std::exception&) {}), Error);
  release = true;  // let the thread finish before the test ends; the pool itself stays leaked
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

// --- sharded models ------------------------------------------------------------------------------

std::string tiny_config(const std::string& arch, int64_t heads, int64_t kv_heads, int64_t vocab,
                        const std::string& extra = "") {
  std::string s = R"({"architectures": [")" + arch + R"("], "vocab_size": )" + std::to_string(vocab) +
                  R"(, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": )" +
                  std::to_string(heads) + R"(, "num_key_value_heads": )" + std::to_string(kv_heads) +
                  R"(, "head_dim": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0)";
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

constexpr int kBlockSize = 4;
constexpr int kNumBlocks = 12;

// Two steps over two sequences (a prefill chunk, then a chunk next to a decode token); returns
// every requested logits row of both steps.
std::vector<std::vector<float>> run_steps(Model& model, Backend& backend, int64_t kv_heads) {
  const ModelConfig& c = model.config();
  KVCache kv;
  kv.num_blocks = kNumBlocks;
  kv.block_size = kBlockSize;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    kv.k.push_back(backend.empty({kNumBlocks, kv_heads, kBlockSize, c.head_dim}, DType::kF32));
    kv.v.push_back(backend.empty({kNumBlocks, kv_heads, kBlockSize, c.head_dim}, DType::kF32));
  }
  const int32_t last = static_cast<int32_t>(c.vocab_size - 1);  // the last rank's last real row
  std::vector<std::vector<float>> rows;
  for (const std::vector<SeqChunk>& step :
       {std::vector<SeqChunk>{{{3, 41, 7, last, 19}, 0, {2, 5}, {0, 2, 4}}},
        std::vector<SeqChunk>{{{12}, 5, {2, 5}, {0}}, {{last, 0, 9}, 0, {7}, {1, 2}}}}) {
    for (auto& row : testing_util::logits_rows(model.forward(testing_util::make_step(step, kBlockSize), kv))) {
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

// The logits of `tp` CPU ranks (one thread each) running the model; rank 0's are returned.
std::vector<std::vector<float>> sharded_logits(const ModelConfig& c, const std::string& dir, LoadFormat format,
                                               int tp) {
  auto comms = create_thread_communicators(tp);
  std::vector<std::vector<float>> rank0;
  WorkerPool pool(tp, /*spin=*/false);
  pool.run(
      [&](int r) {
        auto backend = create_cpu_backend(1);
        auto model = create_model(c, dir, *backend, format, 99, TensorParallel{r, tp, comms[r].get()});
        auto rows = run_steps(*model, *backend, rank_dims(c, tp, r).num_kv_heads);
        if (r == 0) rank0 = std::move(rows);
      },
      [&](int r, const std::exception& e) { comms[r]->abort(e.what()); });
  return rank0;
}

void expect_close(const std::vector<std::vector<float>>& want, const std::vector<std::vector<float>>& got,
                  const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(want[i].size(), got[i].size()) << what;
    for (size_t v = 0; v < want[i].size(); ++v) {
      ASSERT_TRUE(std::isfinite(got[i][v])) << what << " row " << i << " col " << v;
      worst = std::max(worst, std::abs(static_cast<double>(want[i][v]) - got[i][v]));
    }
  }
  // float32 sums in another order: far below the logits' spread (several units).
  EXPECT_LT(worst, 2e-4) << what;
}

struct ShardCase {
  const char* name;
  std::string config;
};

class ShardedModel : public ::testing::TestWithParam<ShardCase> {};

TEST_P(ShardedModel, MatchesTheUnshardedModel) {
  const ModelConfig c = ModelConfig::from_json_string(GetParam().config);
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("llmcore_tp_" + std::string(GetParam().name) + "_" +
                                                    std::to_string(::getpid()));
  fs::create_directories(dir);
  write_safetensors((dir / "model.safetensors").string(), testing_util::random_checkpoint(c, DType::kF32, 7));
  for (LoadFormat format : {LoadFormat::kAuto, LoadFormat::kDummy}) {
    const char* fmt = format == LoadFormat::kAuto ? "checkpoint" : "dummy";
    const auto want = sharded_logits(c, dir.string(), format, 1);
    for (int tp : {2, 4}) {
      if (c.num_attention_heads % tp != 0) continue;
      expect_close(want, sharded_logits(c, dir.string(), format, tp),
                   std::string(GetParam().name) + " " + fmt + " tp " + std::to_string(tp));
    }
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, ShardedModel,
    ::testing::Values(
        // 50 ids over 4 ranks: parts of 13, the last holding 11 and 2 padding rows.
        ShardCase{"llama_gqa_odd_vocab", tiny_config("LlamaForCausalLM", 4, 2, 50)},
        // 2 KV heads over 4 ranks: each KV head replicated on 2 ranks.
        ShardCase{"llama_biases", tiny_config("LlamaForCausalLM", 8, 2, 64,
                                              R"("attention_bias": true, "mlp_bias": true)")},
        ShardCase{"qwen2_tied", tiny_config("Qwen2ForCausalLM", 4, 4, 61, R"("tie_word_embeddings": true)")},
        ShardCase{"mqa", tiny_config("LlamaForCausalLM", 4, 1, 45)}),
    [](const ::testing::TestParamInfo<ShardCase>& info) { return std::string(info.param.name); });

TEST(ShardedModel, DummyShardsHoldSlicesOfTheSameNumbers) {
  // Rank 1 of 2's down_proj (columns) and q_proj (rows) are the matching slices of the unsharded
  // tensors: the same model at every tensor_parallel_size.
  auto backend = create_cpu_backend(1);
  Tensor whole = Tensor::empty({32, 48}, DType::kF32);
  backend->fill_dummy(whole, 5, 0.5f, {});
  Tensor cols = Tensor::empty({32, 24}, DType::kF32);
  backend->fill_dummy(cols, 5, 0.5f, {24, 48});
  Tensor rows = Tensor::empty({16, 48}, DType::kF32);
  backend->fill_dummy(rows, 5, 0.5f, {16 * 48, -1});
  for (int r = 0; r < 32; ++r)
    for (int k = 0; k < 24; ++k) ASSERT_EQ(cols.data_as<float>()[r * 24 + k], whole.data_as<float>()[r * 48 + 24 + k]);
  for (int i = 0; i < 16 * 48; ++i) ASSERT_EQ(rows.data_as<float>()[i], whole.data_as<float>()[16 * 48 + i]);
}

TEST(ShardedModel, RankDimsAndErrors) {
  const ModelConfig c = ModelConfig::from_json_string(tiny_config("LlamaForCausalLM", 8, 2, 50));
  const RankDims d = rank_dims(c, 4, 3);
  EXPECT_EQ(d.num_heads, 2);
  EXPECT_EQ(d.num_kv_heads, 1);
  EXPECT_EQ(d.intermediate_size, 12);
  EXPECT_EQ(d.vocab_rows, 13);
  EXPECT_EQ(d.vocab_start, 39);
  EXPECT_THROW(rank_dims(c, 3, 0), Error);
  auto backend = create_cpu_backend(1);
  EXPECT_THROW(create_model(c, "/nonexistent", *backend, LoadFormat::kDummy, 1, TensorParallel{0, 2, nullptr}), Error);
}

}  // namespace
}  // namespace llmcore::parallel
