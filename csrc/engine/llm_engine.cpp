#include "engine/llm_engine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/llm_engine_internal.h"

namespace llmcore {

using engine_detail::contains;
using engine_detail::now_s;
using engine_detail::seq_delta;

namespace {

// The largest decode batch with a CUDA graph (vLLM's cap too); bigger decode steps run eagerly,
// their launch overhead being small next to their GPU time.
constexpr int kMaxDecodeGraphBatch = 512;

// Engines that never run more than this many sequences compute generated-token rows with the
// decode GEMM (kernels/linear/skinny_gemm.cu): up to 16 rows it reads the weights faster than
// cuBLASLt (8B shapes on an H100: batch-1 decode 6.15 ms/token against 7.74), beyond that it is
// slower. The choice is per engine, never per step, so a row's kernel cannot depend on the batch.
constexpr int kDecodeGemmMaxSeqs = 16;

// generation_config.json's eos_token_id (an int, a list of ints, null or absent) of a checkpoint
// directory; empty when the file or the field is missing. Models like Llama-3-Instruct list their
// end-of-turn token (<|eot_id|>) only here.
std::vector<int64_t> generation_config_eos_ids(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "generation_config.json";
  if (!std::filesystem::is_regular_file(path)) return {};
  std::ifstream in(path);
  LLMCORE_CHECK_ARG(in.good(), "cannot read ", path.string());
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  LLMCORE_CHECK_ARG(!j.is_discarded() && j.is_object(), path.string(), " is not a JSON object");
  if (!j.contains("eos_token_id") || j.at("eos_token_id").is_null()) return {};
  const nlohmann::json& eos = j.at("eos_token_id");
  std::vector<int64_t> ids;
  if (eos.is_number_integer()) {
    ids.push_back(eos.get<int64_t>());
  } else {
    LLMCORE_CHECK_ARG(eos.is_array(), path.string(),
                      " field 'eos_token_id' must be an integer or a list of integers, got ", eos.dump());
    for (const nlohmann::json& e : eos) {
      LLMCORE_CHECK_ARG(e.is_number_integer(), path.string(),
                        " field 'eos_token_id' must hold integers, got ", eos.dump());
      ids.push_back(e.get<int64_t>());
    }
  }
  return ids;
}

// LLMCORE_FAULT_INJECT: a test seam that makes the engine fail on purpose, so the real error
// path (every live request failed, is_healthy() false) can be tested end to end. Grammar:
// comma-separated key=value pairs: `step=N` (the N-th step, counted from 1, throws
// std::runtime_error inside the step loop) and optionally `rank=R` (tensor-parallel rank R's
// worker throws in its N-th step instead, so the other ranks' handling of a failed peer is tested).
struct FaultPlan {
  int64_t step = 0;  // 0: no fault
  int rank = -1;     // -1: the engine thread
};

FaultPlan parse_fault_plan(const char* spec) {
  FaultPlan plan;
  if (spec == nullptr || *spec == '\0') return plan;
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, ',')) {
    const size_t eq = item.find('=');
    LLMCORE_CHECK_ARG(eq != std::string::npos, "LLMCORE_FAULT_INJECT='", spec,
                      "': each item must be key=value (e.g. step=3); got '", item, "'");
    const std::string key = item.substr(0, eq);
    const std::string value = item.substr(eq + 1);
    LLMCORE_CHECK_ARG(key == "step" || key == "rank", "LLMCORE_FAULT_INJECT='", spec, "': unknown key '", key,
                      "' (known: step, rank)");
    size_t used = 0;
    int64_t n = 0;
    try {
      n = std::stoll(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    const int64_t min = key == "step" ? 1 : 0;
    LLMCORE_CHECK_ARG(used == value.size() && !value.empty() && n >= min, "LLMCORE_FAULT_INJECT='", spec, "': ",
                      key, " must be an integer >= ", min, "; got '", value, "'");
    if (key == "step") {
      plan.step = n;
    } else {
      plan.rank = static_cast<int>(n);
    }
  }
  LLMCORE_CHECK_ARG(plan.rank < 0 || plan.step > 0, "LLMCORE_FAULT_INJECT='", spec, "': rank needs a step");
  return plan;
}

// The plan of the engine whose loop runs on this thread (each engine has its own loop thread).
thread_local FaultPlan t_fault_plan;

}  // namespace

LLMEngine::LLMEngine(const EngineConfig& config) : config_(config), seed_rng_(config.seed) {
  namespace fs = std::filesystem;
  const bool dummy = config.load_format == "dummy";
  LLMCORE_CHECK_ARG(dummy || config.load_format == "auto",
                    "load_format must be 'auto' or 'dummy'; got '", config.load_format, "'");
  LLMCORE_CHECK_ARG(fs::is_directory(config.model), "model must be a checkpoint directory; '",
                    config.model, "' is not a directory");
  LLMCORE_CHECK_ARG(fs::exists(fs::path(config.model) / "config.json"), "model directory '",
                    config.model, "' has no config.json");
  LLMCORE_CHECK_ARG(config.device == "cpu" || config.device == "cuda",
                    "device must be 'cpu' or 'cuda'; got '", config.device, "'");
  if (config.device == "cpu") {
    LLMCORE_CHECK_ARG(config.dtype == "auto" || config.dtype == "float32" || config.dtype == "float",
                      "device='cpu' computes in float32: dtype must be 'auto' or 'float32'; got '",
                      config.dtype, "'");
  } else {
    LLMCORE_CHECK_ARG(config.gpu_memory_utilization > 0 && config.gpu_memory_utilization <= 1,
                      "gpu_memory_utilization must be in (0, 1]; got ", config.gpu_memory_utilization);
  }
  // vLLM's choices on GPUs. 64 suits Hopper's prompt attention best (one TMA box per 64-key
  // tile); every kernel takes any of them.
  LLMCORE_CHECK_ARG(config.block_size == 8 || config.block_size == 16 || config.block_size == 32 ||
                        config.block_size == 64 || config.block_size == 128,
                    "block_size must be 8, 16, 32, 64 or 128; got ", config.block_size);
  LLMCORE_CHECK_ARG(config.max_num_seqs >= 1, "max_num_seqs must be >= 1; got ", config.max_num_seqs);

  model_config_ = ModelConfig::from_file((fs::path(config.model) / "config.json").string());
  tokenizer_ = load_tokenizer(config.tokenizer.empty() ? config.model : config.tokenizer);

  // Stop ids: the union of the tokenizer's EOS, config.json's eos_token_id and
  // generation_config.json's eos_token_id, in that order.
  if (tokenizer_->eos_token_id() >= 0) eos_token_ids_.push_back(tokenizer_->eos_token_id());
  std::vector<int64_t> config_eos = model_config_.eos_token_ids;
  for (int64_t id : generation_config_eos_ids(config.model)) config_eos.push_back(id);
  for (int64_t id : config_eos) {
    if (!contains(eos_token_ids_, static_cast<int32_t>(id))) eos_token_ids_.push_back(static_cast<int32_t>(id));
  }

  const int max_pos = static_cast<int>(model_config_.max_position_embeddings);
  max_model_len_ = config.max_model_len > 0 ? config.max_model_len : max_pos;
  LLMCORE_CHECK_ARG(max_model_len_ <= max_pos, "max_model_len (", max_model_len_,
                    ") exceeds the model's max_position_embeddings (", max_pos, ")");
  int max_batched = config.max_num_batched_tokens;
  if (max_batched <= 0) max_batched = std::max(8192, config.enable_chunked_prefill ? 0 : max_model_len_);
  LLMCORE_CHECK_ARG(config.enable_chunked_prefill || max_batched >= max_model_len_,
                    "max_num_batched_tokens (", max_batched, ") must be >= max_model_len (",
                    max_model_len_, ") when chunked prefill is disabled");

  ExecutorConfig ec;
  ec.model_dir = config.model;
  ec.device = config.device;
  if (config.device == "cpu") {
    ec.dtype = DType::kF32;
  } else if (config.dtype == "auto") {
    // As vLLM: the checkpoint's half type; float32 checkpoints run in bfloat16.
    ec.dtype = model_config_.dtype == DType::kF16 ? DType::kF16 : DType::kBF16;
  } else {
    ec.dtype = parse_float_dtype(config.dtype, "dtype");
    LLMCORE_CHECK_ARG(ec.dtype != DType::kF32, "device='cuda' computes in bfloat16 or float16; dtype='",
                      config.dtype, "' is not supported there");
  }
  ec.load_format = dummy ? LoadFormat::kDummy : LoadFormat::kAuto;
  ec.seed = config.seed;
  ec.block_size = config.block_size;
  ec.num_threads = config.num_threads;
  ec.tensor_parallel_size = config.tensor_parallel_size;
  ec.generated_rows_apart = config.device != "cpu";
  ec.decode_gemm = config.max_num_seqs <= kDecodeGemmMaxSeqs;
  if (const char* timeout = std::getenv("LLMCORE_TP_STEP_TIMEOUT_S")) ec.tp_step_timeout_s = std::atof(timeout);
  const FaultPlan fault = parse_fault_plan(std::getenv("LLMCORE_FAULT_INJECT"));
  if (fault.rank >= 0) {
    LLMCORE_CHECK_ARG(fault.rank < config.tensor_parallel_size, "LLMCORE_FAULT_INJECT: rank ", fault.rank,
                      " does not exist with tensor_parallel_size ", config.tensor_parallel_size);
    ec.fault_rank = fault.rank;
    ec.fault_step = fault.step;
  }
  const double t_load = now_s();
  executor_ = std::make_unique<Executor>(ec, model_config_);
  startup_times_.load_weights_s = now_s() - t_load;

  const int blocks_per_seq = (max_model_len_ + config.block_size - 1) / config.block_size;
  int num_blocks = config.num_gpu_blocks_override;
  if (num_blocks <= 0 && config.device != "cpu") {
    const double t_profile = now_s();
    num_blocks = executor_->profile_num_kv_blocks(config.gpu_memory_utilization, max_batched,
                                                  config.max_num_seqs, max_model_len_);
    startup_times_.profile_s = now_s() - t_profile;
  } else if (num_blocks <= 0) {
    // The budget holds every rank's share of a block.
    const size_t block_bytes = Executor::kv_block_bytes(model_config_, config.block_size, executor_->kv_dtype(),
                                                        config.tensor_parallel_size) *
                               static_cast<size_t>(config.tensor_parallel_size);
    const double budget = config.cpu_kv_cache_space_gib * (1ull << 30);
    const double by_memory = budget / static_cast<double>(block_bytes);
    // More than every seat holding a full-length sequence is never used.
    const double useful = static_cast<double>(config.max_num_seqs) * (blocks_per_seq + 1);
    num_blocks = static_cast<int>(std::min({by_memory, useful, 1e7}));
  }
  LLMCORE_CHECK_ARG(num_blocks >= blocks_per_seq, "the KV cache (", num_blocks, " blocks of ",
                    config.block_size, " tokens) cannot hold one max_model_len (", max_model_len_,
                    ") sequence; raise the cache size or lower max_model_len");
  executor_->allocate_kv_cache(num_blocks);
  if (config.device != "cpu" && !config.enforce_eager) {
    const double t_graphs = now_s();
    executor_->capture_decode_graphs(std::min(config.max_num_seqs, kMaxDecodeGraphBatch), max_model_len_);
    startup_times_.capture_graphs_s = now_s() - t_graphs;
  }
  block_manager_ = std::make_unique<BlockManager>(num_blocks, config.block_size, config.enable_prefix_caching,
                                                  ec.generated_rows_apart);

  SchedulerConfig sc;
  sc.max_num_seqs = config.max_num_seqs;
  sc.max_num_batched_tokens = max_batched;
  sc.max_model_len = max_model_len_;
  sc.enable_chunked_prefill = config.enable_chunked_prefill;
  scheduler_ = std::make_unique<Scheduler>(sc, *block_manager_);

  update_stats();
  thread_ = std::thread([this, fault] {
    if (fault.rank < 0) t_fault_plan = fault;  // else the executor's rank throws
    loop();
  });
}

LLMEngine::~LLMEngine() { shutdown(); }

void LLMEngine::shutdown() {
  {
    std::lock_guard<std::mutex> lk(in_mu_);
    stop_ = true;
  }
  in_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  out_cv_.notify_all();
  // The weights and the KV cache go back now, not when the last Python reference does.
  executor_.reset();
}

std::string LLMEngine::error() const {
  std::lock_guard<std::mutex> lk(stats_mu_);
  return error_;
}

void LLMEngine::add_request(const std::string& request_id, std::vector<int32_t> prompt,
                            const SamplingParams& params) {
  const int64_t vocab = model_config_.vocab_size;
  LLMCORE_CHECK_ARG(!prompt.empty(), "the prompt must not be empty (0 tokens)");
  for (size_t i = 0; i < prompt.size(); ++i) {
    LLMCORE_CHECK_ARG(prompt[i] >= 0 && prompt[i] < vocab, "prompt_token_ids[", i, "] = ", prompt[i],
                      " is outside the vocabulary [0, ", vocab, ")");
  }
  params.validate(vocab);
  const int prompt_len = static_cast<int>(prompt.size());
  LLMCORE_CHECK_ARG(prompt_len < max_model_len_, "the prompt has ", prompt_len,
                    " tokens, which leaves no room to generate within max_model_len (", max_model_len_, ")");
  const int max_tokens = params.max_tokens ? *params.max_tokens : max_model_len_ - prompt_len;
  LLMCORE_CHECK_ARG(prompt_len + max_tokens <= max_model_len_, "the prompt (", prompt_len,
                    " tokens) plus max_tokens (", max_tokens, ") is ", prompt_len + max_tokens,
                    " tokens, over max_model_len (", max_model_len_, ")");
  LLMCORE_CHECK_ARG(params.min_tokens <= max_tokens, "min_tokens (", params.min_tokens,
                    ") must be <= max_tokens (", max_tokens, ")");
  LLMCORE_CHECK_ARG(params.n <= config_.max_num_seqs, "n (", params.n, ") exceeds max_num_seqs (",
                    config_.max_num_seqs, "): the outputs of one request run side by side");
  // Worst case: the prompt's blocks shared by all n outputs, each output's own blocks plus a
  // copied partial block.
  const int n = params.n;
  const int64_t need = n == 1 ? block_manager_->blocks_for_tokens(prompt_len + max_tokens)
                              : block_manager_->blocks_for_tokens(prompt_len) +
                                    static_cast<int64_t>(n) * (block_manager_->blocks_for_tokens(max_tokens) + 1);
  LLMCORE_CHECK_ARG(need <= block_manager_->num_blocks(), "the request (", prompt_len, " prompt tokens, max_tokens ",
                    max_tokens, ", n ", n, ") needs up to ", need, " KV cache blocks but the cache has only ",
                    block_manager_->num_blocks());

  auto req = std::make_unique<Request>();
  req->id = request_id;
  req->params = params;
  req->max_tokens = max_tokens;
  req->arrival_time = now_s();
  if (!params.ignore_eos) req->stop_masked_ids = eos_token_ids_;
  auto st = std::make_unique<SeqState>();
  st->seq.token_ids = std::move(prompt);
  st->seq.num_prompt_tokens = prompt_len;
  req->seqs.push_back(std::move(st));
  {
    std::lock_guard<std::mutex> lk(in_mu_);
    // Not the request's fault: RuntimeError (the Python layer's EngineDeadError), not ValueError.
    if (!healthy_.load()) throw_runtime_error("the engine has stopped after an error: ", error_);
    if (stop_) throw_runtime_error("the engine is shut down");
    LLMCORE_CHECK_ARG(live_ids_.insert(request_id).second, "request_id '", request_id, "' is already in use");
    pending_.push_back(std::move(req));
  }
  in_cv_.notify_one();
}

void LLMEngine::abort_request(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lk(in_mu_);
    if (!live_ids_.count(request_id)) return;
    pending_aborts_.push_back(request_id);
  }
  in_cv_.notify_one();
}

std::vector<RequestDelta> LLMEngine::get_outputs(double timeout_s) {
  std::unique_lock<std::mutex> lk(out_mu_);
  auto ready = [&] { return !outputs_.empty() || !healthy_.load(); };
  if (timeout_s < 0) {
    out_cv_.wait(lk, ready);
  } else {
    out_cv_.wait_for(lk, std::chrono::duration<double>(timeout_s), ready);
  }
  std::vector<RequestDelta> out(std::make_move_iterator(outputs_.begin()), std::make_move_iterator(outputs_.end()));
  outputs_.clear();
  return out;
}

bool LLMEngine::has_unfinished_requests() const {
  std::lock_guard<std::mutex> lk(in_mu_);
  return !live_ids_.empty();
}

std::vector<int> LLMEngine::decode_graph_sizes() const {
  return executor_ ? executor_->decode_graph_sizes() : std::vector<int>{};
}

EngineStats LLMEngine::get_stats() const {
  std::lock_guard<std::mutex> lk(stats_mu_);
  return stats_;
}

void LLMEngine::update_stats() {
  EngineStats s = counters_;
  s.num_running = scheduler_->num_running();
  s.num_waiting = scheduler_->num_waiting();
  s.num_total_blocks = block_manager_->num_blocks();
  s.num_free_blocks = block_manager_->num_free_blocks();
  s.kv_cache_usage = block_manager_->usage();
  s.num_preemptions = scheduler_->num_preemptions();
  s.prefix_cache_queries = block_manager_->prefix_cache_queries();
  s.prefix_cache_hits = block_manager_->prefix_cache_hits();
  std::lock_guard<std::mutex> lk(stats_mu_);
  stats_ = s;
}

void LLMEngine::publish(std::vector<RequestDelta> deltas) {
  if (deltas.empty()) return;
  {
    std::lock_guard<std::mutex> lk(out_mu_);
    for (RequestDelta& d : deltas) outputs_.push_back(std::move(d));
  }
  out_cv_.notify_all();
}

void LLMEngine::loop() {
  while (true) {
    std::deque<std::unique_ptr<Request>> adds;
    std::vector<std::string> aborts;
    {
      std::unique_lock<std::mutex> lk(in_mu_);
      in_cv_.wait(lk, [&] {
        return stop_ || !pending_.empty() || !pending_aborts_.empty() || scheduler_->has_unfinished();
      });
      if (stop_) break;
      adds.swap(pending_);
      aborts.swap(pending_aborts_);
    }
    try {
      for (auto& r : adds) admit(std::move(r));
      for (const std::string& id : aborts) abort_now(id);
      if (scheduler_->has_unfinished()) step();
    } catch (const std::exception& e) {
      // A broken invariant: fail every live request and stop serving rather than risk
      // corrupted KV state.
      std::vector<Request*> all;
      for (auto& kv : requests_) all.push_back(kv.second.get());
      {
        std::lock_guard<std::mutex> lk(stats_mu_);
        error_ = e.what();
      }
      healthy_.store(false);
      ready_.clear();
      update_stats();
      fail_requests(all, e.what());
      out_cv_.notify_all();
      break;
    }
    // Stats first, so a caller that sees a request finish also sees its blocks freed.
    update_stats();
    publish(std::move(ready_));
    ready_.clear();
  }
}

void LLMEngine::seed_sequence(Request& req, Sequence& seq) {
  if (req.params.seed) {
    const uint64_t s = static_cast<uint64_t>(*req.params.seed);
    std::seed_seq ss{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint32_t>(seq.index)};
    seq.rng.seed(ss);
  } else {
    seq.rng.seed(seed_rng_());
  }
}

void LLMEngine::admit(std::unique_ptr<Request> req) {
  Request& r = *req;
  SeqState& st = *r.seqs[0];
  st.seq.seq_id = next_seq_id_++;
  st.seq.index = 0;
  st.seq.params = &r.params;
  st.seq.use_prefix_cache = !r.params.prompt_logprobs.has_value();
  seed_sequence(r, st.seq);
  if (r.params.detokenize) {
    st.detok = std::make_unique<IncrementalDetokenizer>(*tokenizer_, st.seq.token_ids, r.params.skip_special_tokens,
                                                        r.params.stop, r.params.include_stop_str_in_output);
  }
  counters_.num_prompt_tokens += st.seq.num_prompt_tokens;
  seq_index_[&st.seq] = {&r, &st};
  scheduler_->add(&st.seq);
  requests_[r.id] = std::move(req);
}

void LLMEngine::step() {
  const double t_start = now_s();
  SchedulerOutput out = scheduler_->schedule();
  LLMCORE_CHECK(!out.empty(), "the scheduler made no progress with ", scheduler_->num_running(),
                " running and ", scheduler_->num_waiting(), " waiting sequences");
  ++counters_.num_steps;
  if (counters_.num_steps == t_fault_plan.step) {
    throw std::runtime_error("fault injected at step " + std::to_string(t_fault_plan.step) +
                             " (LLMCORE_FAULT_INJECT)");
  }
  const double t_sched = now_s();

  // Which logits rows each scheduled sequence needs: prompt positions whose next-token
  // logprobs are due, and the last row when it samples.
  std::vector<LogitsRequest> lrs(out.scheduled.size());
  std::vector<int> prompt_rows(out.scheduled.size(), 0);
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const ScheduledSequence& ss = out.scheduled[i];
    const Sequence& seq = *ss.seq;
    Request& req = *seq_index_.at(&seq).first;
    if (req.first_scheduled_time == 0) req.first_scheduled_time = t_sched;
    const int start = seq.num_computed_tokens;
    const int end = start + ss.num_tokens;
    if (req.params.prompt_logprobs && seq.index == 0 && req.prompt_logprobs_next < seq.num_prompt_tokens) {
      const int prompt_end = std::max(start, std::min(end, seq.num_prompt_tokens - 1));
      prompt_rows[i] = prompt_end - start;
      lrs[i] = {0, prompt_rows[i] + (ss.sample ? 1 : 0)};
      LLMCORE_CHECK(!ss.sample || prompt_end == end - 1 || prompt_rows[i] == 0);
      if (ss.sample && prompt_rows[i] == 0) lrs[i] = {ss.num_tokens - 1, 1};
    } else if (ss.sample) {
      lrs[i] = {ss.num_tokens - 1, 1};
    }
  }

  // The logits stay where the backend computed them; rows are sampled or scored there.
  const Tensor logits = executor_->execute(out, lrs);
  const int vocab = static_cast<int>(logits.dim(1));
  const float* rows = logits.data_as<float>();
  const double t_executed = now_s();

  // Prompt logprobs: logits at position p score prompt token p + 1, all of the step's in one batch.
  std::vector<SampleRequest> prompt_scores;
  {
    int row = 0;
    for (size_t i = 0; i < out.scheduled.size(); ++i) {
      const ScheduledSequence& ss = out.scheduled[i];
      const Sequence& seq = *ss.seq;
      const Request& req = *seq_index_.at(&seq).first;
      const int start = seq.num_computed_tokens;  // before scheduler_->update
      for (int r = 0; r < prompt_rows[i]; ++r) {
        const int pos = start + r + 1;
        if (pos < req.prompt_logprobs_next) continue;
        SampleRequest sr;
        sr.logits = rows + static_cast<size_t>(row + r) * vocab;
        sr.params = &req.params;
        sr.forced_token = seq.token_ids[pos];
        sr.num_logprobs = *req.params.prompt_logprobs;
        prompt_scores.push_back(sr);
      }
      row += lrs[i].num_rows;
    }
  }
  const std::vector<SampleResult> prompt_results =
      prompt_scores.empty() ? std::vector<SampleResult>{} : executor_->sample(prompt_scores, vocab);
  size_t next_prompt_result = 0;
  scheduler_->update(out);

  std::unordered_map<Request*, RequestDelta> deltas;
  std::vector<Request*> order;
  std::vector<SampleRequest> sample_rows;
  std::vector<std::pair<Request*, SeqState*>> sample_owners;
  int row = 0;
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const ScheduledSequence& ss = out.scheduled[i];
    Sequence& seq = *ss.seq;
    auto [req_ptr, st_ptr] = seq_index_.at(&seq);
    Request& req = *req_ptr;
    if (!deltas.count(&req)) order.push_back(&req);
    RequestDelta& delta = delta_for(deltas, req);
    delta.first_scheduled_time = req.first_scheduled_time;
    if (seq.num_cached_tokens > 0 && seq.index == 0) delta.num_cached_tokens = seq.num_cached_tokens;

    // Prompt logprobs, in the order they were scored above.
    const int start = seq.num_computed_tokens - ss.num_tokens;
    for (int r = 0; r < prompt_rows[i]; ++r) {
      const int pos = start + r + 1;
      if (pos < req.prompt_logprobs_next) continue;
      const SampleResult& scored = prompt_results.at(next_prompt_result++);
      if (req.prompt_logprobs.empty()) req.prompt_logprobs.emplace_back();  // position 0: None
      req.prompt_logprobs.push_back(make_position(scored.chosen, scored.top));
      req.prompt_logprobs_next = pos + 1;
    }
    if (req.params.prompt_logprobs && seq.index == 0 && ss.sample && !delta.has_prompt_logprobs &&
        seq.num_output_tokens() == 0) {
      if (req.prompt_logprobs.empty()) req.prompt_logprobs.emplace_back();
      req.prompt_logprobs_next = seq.num_prompt_tokens;
      delta.prompt_logprobs = req.prompt_logprobs;
      delta.has_prompt_logprobs = true;
    }
    row += lrs[i].num_rows;
    if (!ss.sample) continue;

    const float* sample_row = rows + static_cast<size_t>(row - 1) * vocab;
    std::vector<SeqState*> samplers = {st_ptr};
    if (req.params.n > 1 && !req.forked) {
      // Parallel sampling: the prompt was computed once; the other n - 1 outputs share its
      // blocks (copy-on-write) and sample from the same logits with their own generators.
      req.forked = true;
      for (int k = 1; k < req.params.n; ++k) {
        auto child = std::make_unique<SeqState>();
        Sequence& c = child->seq;
        c.seq_id = next_seq_id_++;
        c.index = k;
        c.params = &req.params;
        c.token_ids = seq.token_ids;
        c.num_prompt_tokens = seq.num_prompt_tokens;
        c.num_computed_tokens = seq.num_computed_tokens;
        c.num_cached_tokens = seq.num_cached_tokens;
        c.use_prefix_cache = seq.use_prefix_cache;
        seed_sequence(req, c);
        if (req.params.detokenize) {
          child->detok = std::make_unique<IncrementalDetokenizer>(
              *tokenizer_, c.token_ids, req.params.skip_special_tokens, req.params.stop,
              req.params.include_stop_str_in_output);
        }
        block_manager_->fork(seq, c);
        scheduler_->add_running(&c);
        seq_index_[&c] = {&req, child.get()};
        samplers.push_back(child.get());
        req.seqs.push_back(std::move(child));
      }
    }
    for (SeqState* s : samplers) {
      SampleRequest sr;
      sr.logits = sample_row;
      sr.params = &req.params;
      sr.token_ids = &s->seq.token_ids;
      sr.num_prompt_tokens = s->seq.num_prompt_tokens;
      sr.rng = &s->seq.rng;
      sr.eos_token_ids = &req.stop_masked_ids;
      sr.num_logprobs = req.params.logprobs ? *req.params.logprobs : -1;
      sample_rows.push_back(sr);
      sample_owners.emplace_back(&req, s);
    }
  }

  const std::vector<SampleResult> results = executor_->sample(sample_rows, vocab);
  const double t_done = now_s();
  std::vector<std::string> finished_ids;
  for (size_t i = 0; i < results.size(); ++i) {
    auto [req, st] = sample_owners[i];
    if (req->first_token_time == 0) req->first_token_time = t_done;
    RequestDelta& delta = delta_for(deltas, *req);
    delta.first_token_time = req->first_token_time;
    append_token(*req, *st, results[i], delta);
  }

  std::vector<RequestDelta> ready;
  for (Request* req : order) {
    RequestDelta& d = deltas.at(req);
    if (req->num_finished == static_cast<int>(req->seqs.size()) && (req->forked || req->params.n == 1)) {
      d.finished = true;
      d.finished_time = t_done;
      finished_ids.push_back(req->id);
      ++counters_.num_requests_finished;
    }
    if (!d.seqs.empty() || d.has_prompt_logprobs || d.finished) ready.push_back(std::move(d));
  }
  for (const std::string& id : finished_ids) {
    auto it = requests_.find(id);
    for (auto& s : it->second->seqs) seq_index_.erase(&s->seq);
    requests_.erase(it);
  }
  if (!finished_ids.empty()) {
    std::lock_guard<std::mutex> lk(in_mu_);
    for (const std::string& id : finished_ids) live_ids_.erase(id);
  }
  for (RequestDelta& d : ready) ready_.push_back(std::move(d));
  const double t_end = now_s();
  counters_.time_schedule_s += t_sched - t_start;
  counters_.time_execute_s += t_executed - t_sched;
  counters_.time_sample_s += t_done - t_executed;
  counters_.time_output_s += t_end - t_done;
}

void LLMEngine::abort_now(const std::string& request_id) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return;
  Request& req = *it->second;
  RequestDelta d;
  d.request_id = req.id;
  d.arrival_time = req.arrival_time;
  d.first_scheduled_time = req.first_scheduled_time;
  d.first_token_time = req.first_token_time;
  for (auto& st : req.seqs) {
    if (st->seq.finished()) continue;
    finish_seq(req, *st, FinishReason::kAbort);
    SequenceDelta& sd = seq_delta(d, st->seq.index);
    if (st->detok) sd.text = st->detok->flush();
    sd.finished = true;
    sd.finish_reason = "abort";
    sd.cumulative_logprob = st->seq.cumulative_logprob;
  }
  d.finished = true;
  d.finished_time = now_s();
  ++counters_.num_requests_finished;
  ++counters_.num_requests_aborted;
  for (auto& s : req.seqs) seq_index_.erase(&s->seq);
  requests_.erase(it);
  {
    std::lock_guard<std::mutex> lk(in_mu_);
    live_ids_.erase(request_id);
  }
  ready_.push_back(std::move(d));
}

void LLMEngine::fail_requests(const std::vector<Request*>& reqs, const std::string& message) {
  std::vector<RequestDelta> out;
  std::vector<std::string> ids;
  for (Request* req : reqs) {
    RequestDelta d;
    d.request_id = req->id;
    d.error = message;
    d.finished = true;
    d.finished_time = now_s();
    for (auto& st : req->seqs) {
      if (!st->seq.finished()) {
        try {
          finish_seq(*req, *st, FinishReason::kAbort);
        } catch (const std::exception&) {
          // The engine is stopping; the request is reported failed either way.
        }
      }
    }
    ids.push_back(req->id);
    out.push_back(std::move(d));
  }
  for (const std::string& id : ids) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;
    for (auto& s : it->second->seqs) seq_index_.erase(&s->seq);
    requests_.erase(it);
  }
  {
    std::lock_guard<std::mutex> lk(in_mu_);
    for (const std::string& id : ids) live_ids_.erase(id);
    for (auto& r : pending_) {
      RequestDelta d;
      d.request_id = r->id;
      d.error = message;
      d.finished = true;
      out.push_back(std::move(d));
      live_ids_.erase(r->id);
    }
    pending_.clear();
  }
  publish(std::move(out));
}

}  // namespace llmcore
