// llmcore._C: the only pybind11 code. SamplingParams, the engine, the tokenizer, and the
// per-step output deltas the Python layer accumulates into vLLM's RequestOutput objects.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/llm_engine.h"
#include "engine/sampling_params.h"
#include "bindings/bindings.h"
#ifdef LLMCORE_WITH_CUDA
#include "backend/cuda/cuda_device.h"
#endif

namespace py = pybind11;
using namespace llmcore;

namespace {

std::vector<std::string> to_stop_list(const py::object& stop) {
  if (stop.is_none()) return {};
  if (py::isinstance<py::str>(stop)) return {stop.cast<std::string>()};
  return stop.cast<std::vector<std::string>>();
}

std::string repr(const SamplingParams& p) {
  auto opt = [](const auto& o) { return o ? std::to_string(*o) : std::string("None"); };
  std::string stop = "[";
  for (size_t i = 0; i < p.stop.size(); ++i) stop += (i ? ", '" : "'") + p.stop[i] + "'";
  stop += "]";
  return str_cat("SamplingParams(n=", p.n, ", presence_penalty=", p.presence_penalty,
                 ", frequency_penalty=", p.frequency_penalty, ", repetition_penalty=", p.repetition_penalty,
                 ", temperature=", p.temperature, ", top_p=", p.top_p, ", top_k=", p.top_k, ", min_p=", p.min_p,
                 ", seed=", opt(p.seed), ", stop=", stop, ", stop_token_ids=", p.stop_token_ids.size(),
                 " ids, ignore_eos=", p.ignore_eos ? "True" : "False", ", max_tokens=", opt(p.max_tokens),
                 ", min_tokens=", p.min_tokens, ", logprobs=", opt(p.logprobs),
                 ", prompt_logprobs=", opt(p.prompt_logprobs),
                 ", skip_special_tokens=", p.skip_special_tokens ? "True" : "False",
                 ", include_stop_str_in_output=", p.include_stop_str_in_output ? "True" : "False",
                 ", logit_bias=", p.logit_bias.size(), " entries)");
}

py::dict stats_dict(const EngineStats& s) {
  py::dict d;
  d["num_running"] = s.num_running;
  d["num_waiting"] = s.num_waiting;
  d["num_total_blocks"] = s.num_total_blocks;
  d["num_free_blocks"] = s.num_free_blocks;
  d["kv_cache_usage"] = s.kv_cache_usage;
  d["num_preemptions"] = s.num_preemptions;
  d["prefix_cache_queries"] = s.prefix_cache_queries;
  d["prefix_cache_hits"] = s.prefix_cache_hits;
  d["num_prompt_tokens"] = s.num_prompt_tokens;
  d["num_generation_tokens"] = s.num_generation_tokens;
  d["num_steps"] = s.num_steps;
  d["num_requests_finished"] = s.num_requests_finished;
  d["num_requests_aborted"] = s.num_requests_aborted;
  d["time_schedule_s"] = s.time_schedule_s;
  d["time_execute_s"] = s.time_execute_s;
  d["time_sample_s"] = s.time_sample_s;
  d["time_output_s"] = s.time_output_s;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "llmcore native core";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kValue) {
        PyErr_SetString(PyExc_ValueError, e.what());
      } else {
        PyErr_SetString(PyExc_RuntimeError, e.what());
      }
    }
  });

  m.attr("MAX_LOGPROBS") = kMaxLogprobs;
  m.def("cuda_device_count", [] {
#ifdef LLMCORE_WITH_CUDA
    return cuda::device_count();
#else
    return 0;
#endif
  }, "GPUs the CUDA backend can use (0 when it is not built or there is no device).");

  py::class_<SamplingParams>(m, "SamplingParams", R"doc(
How to sample the outputs of one request; vLLM's field names, defaults and ranges.
Invalid values raise ValueError naming the field.)doc")
      .def(py::init([](int n, double presence_penalty, double frequency_penalty, double repetition_penalty,
                       double temperature, double top_p, int top_k, double min_p, std::optional<int64_t> seed,
                       const py::object& stop, std::optional<std::vector<int32_t>> stop_token_ids,
                       bool ignore_eos, std::optional<int> max_tokens, int min_tokens,
                       std::optional<int> logprobs, std::optional<int> prompt_logprobs, bool detokenize,
                       bool skip_special_tokens, bool spaces_between_special_tokens,
                       bool include_stop_str_in_output, std::optional<std::map<int32_t, double>> logit_bias) {
             SamplingParams p;
             p.n = n;
             p.presence_penalty = presence_penalty;
             p.frequency_penalty = frequency_penalty;
             p.repetition_penalty = repetition_penalty;
             p.temperature = temperature;
             p.top_p = top_p;
             p.top_k = top_k;
             p.min_p = min_p;
             p.seed = seed;
             p.stop = to_stop_list(stop);
             if (stop_token_ids) p.stop_token_ids = *stop_token_ids;
             p.ignore_eos = ignore_eos;
             p.max_tokens = max_tokens;
             p.min_tokens = min_tokens;
             p.logprobs = logprobs;
             p.prompt_logprobs = prompt_logprobs;
             p.detokenize = detokenize;
             p.skip_special_tokens = skip_special_tokens;
             p.spaces_between_special_tokens = spaces_between_special_tokens;
             p.include_stop_str_in_output = include_stop_str_in_output;
             if (logit_bias) p.logit_bias = *logit_bias;
             p.validate(0);
             return p;
           }),
           py::arg("n") = 1, py::arg("presence_penalty") = 0.0, py::arg("frequency_penalty") = 0.0,
           py::arg("repetition_penalty") = 1.0, py::arg("temperature") = 1.0, py::arg("top_p") = 1.0,
           py::arg("top_k") = 0, py::arg("min_p") = 0.0, py::arg("seed") = py::none(),
           py::arg("stop") = py::none(), py::arg("stop_token_ids") = py::none(), py::arg("ignore_eos") = false,
           py::arg("max_tokens") = 16, py::arg("min_tokens") = 0, py::arg("logprobs") = py::none(),
           py::arg("prompt_logprobs") = py::none(), py::arg("detokenize") = true,
           py::arg("skip_special_tokens") = true, py::arg("spaces_between_special_tokens") = true,
           py::arg("include_stop_str_in_output") = false, py::arg("logit_bias") = py::none())
      .def_readwrite("n", &SamplingParams::n)
      .def_readwrite("presence_penalty", &SamplingParams::presence_penalty)
      .def_readwrite("frequency_penalty", &SamplingParams::frequency_penalty)
      .def_readwrite("repetition_penalty", &SamplingParams::repetition_penalty)
      .def_readwrite("temperature", &SamplingParams::temperature)
      .def_readwrite("top_p", &SamplingParams::top_p)
      .def_readwrite("top_k", &SamplingParams::top_k)
      .def_readwrite("min_p", &SamplingParams::min_p)
      .def_readwrite("seed", &SamplingParams::seed)
      .def_property(
          "stop", [](const SamplingParams& p) { return p.stop; },
          [](SamplingParams& p, const py::object& v) { p.stop = to_stop_list(v); })
      .def_readwrite("stop_token_ids", &SamplingParams::stop_token_ids)
      .def_readwrite("ignore_eos", &SamplingParams::ignore_eos)
      .def_readwrite("max_tokens", &SamplingParams::max_tokens)
      .def_readwrite("min_tokens", &SamplingParams::min_tokens)
      .def_readwrite("logprobs", &SamplingParams::logprobs)
      .def_readwrite("prompt_logprobs", &SamplingParams::prompt_logprobs)
      .def_readwrite("detokenize", &SamplingParams::detokenize)
      .def_readwrite("skip_special_tokens", &SamplingParams::skip_special_tokens)
      .def_readwrite("spaces_between_special_tokens", &SamplingParams::spaces_between_special_tokens)
      .def_readwrite("include_stop_str_in_output", &SamplingParams::include_stop_str_in_output)
      .def_readwrite("logit_bias", &SamplingParams::logit_bias)
      .def("validate", &SamplingParams::validate, py::arg("vocab_size") = 0,
           "Raises ValueError naming the first invalid field.")
      .def("clone", [](const SamplingParams& p) { return p; })
      .def("__copy__", [](const SamplingParams& p) { return p; })
      .def("__deepcopy__", [](const SamplingParams& p, py::dict) { return p; })
      .def("__repr__", &repr);

  py::class_<TokenLogprob>(m, "TokenLogprob")
      .def_readonly("token_id", &TokenLogprob::token_id)
      .def_readonly("logprob", &TokenLogprob::logprob)
      .def_readonly("rank", &TokenLogprob::rank);
  py::class_<PositionLogprobs>(m, "PositionLogprobs")
      .def_readonly("entries", &PositionLogprobs::entries)
      .def_readonly("decoded", &PositionLogprobs::decoded);
  py::class_<SequenceDelta>(m, "SequenceDelta")
      .def_readonly("index", &SequenceDelta::index)
      .def_readonly("token_ids", &SequenceDelta::token_ids)
      .def_property_readonly("text", [](const SequenceDelta& d) {
        return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(d.text.data(), d.text.size(), "replace"));
      })
      .def_readonly("logprobs", &SequenceDelta::logprobs)
      .def_readonly("cumulative_logprob", &SequenceDelta::cumulative_logprob)
      .def_readonly("finished", &SequenceDelta::finished)
      .def_readonly("finish_reason", &SequenceDelta::finish_reason)
      .def_property_readonly("stop_reason", [](const SequenceDelta& d) -> py::object {
        if (d.has_stop_str) return py::str(d.stop_str);
        if (d.stop_token >= 0) return py::int_(d.stop_token);
        return py::none();
      });
  py::class_<RequestDelta>(m, "RequestDelta")
      .def_readonly("request_id", &RequestDelta::request_id)
      .def_readonly("seqs", &RequestDelta::seqs)
      .def_readonly("prompt_logprobs", &RequestDelta::prompt_logprobs)
      .def_readonly("has_prompt_logprobs", &RequestDelta::has_prompt_logprobs)
      .def_readonly("finished", &RequestDelta::finished)
      .def_readonly("error", &RequestDelta::error)
      .def_readonly("arrival_time", &RequestDelta::arrival_time)
      .def_readonly("first_scheduled_time", &RequestDelta::first_scheduled_time)
      .def_readonly("first_token_time", &RequestDelta::first_token_time)
      .def_readonly("finished_time", &RequestDelta::finished_time)
      .def_readonly("num_cached_tokens", &RequestDelta::num_cached_tokens);

  py::class_<LLMEngine>(m, "Engine", "The native engine: a C++ thread runs the step loop.")
      .def(py::init([](const std::string& model, const std::string& tokenizer, const std::string& device,
                       const std::string& dtype, int max_model_len, int max_num_seqs, int max_num_batched_tokens,
                       bool enable_prefix_caching, bool enable_chunked_prefill, int block_size,
                       int num_gpu_blocks_override, double cpu_kv_cache_space_gib,
                       double gpu_memory_utilization, uint64_t seed,
                       const std::string& load_format, int num_threads, bool enforce_eager,
                       int tensor_parallel_size) {
             EngineConfig c;
             c.model = model;
             c.tokenizer = tokenizer;
             c.device = device;
             c.dtype = dtype;
             c.max_model_len = max_model_len;
             c.max_num_seqs = max_num_seqs;
             c.max_num_batched_tokens = max_num_batched_tokens;
             c.enable_prefix_caching = enable_prefix_caching;
             c.enable_chunked_prefill = enable_chunked_prefill;
             c.block_size = block_size;
             c.num_gpu_blocks_override = num_gpu_blocks_override;
             c.cpu_kv_cache_space_gib = cpu_kv_cache_space_gib;
             c.gpu_memory_utilization = gpu_memory_utilization;
             c.seed = seed;
             c.load_format = load_format;
             c.num_threads = num_threads;
             c.enforce_eager = enforce_eager;
             c.tensor_parallel_size = tensor_parallel_size;
             py::gil_scoped_release release;
             return std::make_unique<LLMEngine>(c);
           }),
           py::arg("model"), py::arg("tokenizer") = "", py::arg("device") = "cpu", py::arg("dtype") = "auto",
           py::arg("max_model_len") = 0, py::arg("max_num_seqs") = 256, py::arg("max_num_batched_tokens") = 0,
           py::arg("enable_prefix_caching") = true, py::arg("enable_chunked_prefill") = true,
           py::arg("block_size") = 16, py::arg("num_gpu_blocks_override") = 0,
           py::arg("cpu_kv_cache_space_gib") = 4.0, py::arg("gpu_memory_utilization") = 0.9,
           py::arg("seed") = 0, py::arg("load_format") = "auto",
           py::arg("num_threads") = 0, py::arg("enforce_eager") = false, py::arg("tensor_parallel_size") = 1)
      .def("add_request", &LLMEngine::add_request, py::arg("request_id"), py::arg("prompt_token_ids"),
           py::arg("params"), py::call_guard<py::gil_scoped_release>())
      .def("abort_request", &LLMEngine::abort_request, py::arg("request_id"),
           py::call_guard<py::gil_scoped_release>())
      .def("get_outputs", &LLMEngine::get_outputs, py::arg("timeout") = -1.0,
           py::call_guard<py::gil_scoped_release>())
      .def("has_unfinished_requests", &LLMEngine::has_unfinished_requests)
      .def("get_stats", [](const LLMEngine& e) { return stats_dict(e.get_stats()); })
      .def("is_healthy", &LLMEngine::is_healthy)
      .def("error", &LLMEngine::error)
      .def("shutdown", &LLMEngine::shutdown, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("max_model_len", &LLMEngine::max_model_len)
      .def_property_readonly("decode_graph_sizes", &LLMEngine::decode_graph_sizes)
      .def_property_readonly("tensor_parallel_size",
                             [](const LLMEngine& e) { return e.config().tensor_parallel_size; })
      .def_property_readonly("startup_times", [](const LLMEngine& e) {
        const StartupTimes& t = e.startup_times();
        py::dict d;
        d["load_weights_s"] = t.load_weights_s;
        d["profile_s"] = t.profile_s;
        d["capture_graphs_s"] = t.capture_graphs_s;
        return d;
      })
      .def_property_readonly("vocab_size", [](const LLMEngine& e) { return e.model_config().vocab_size; })
      .def_property_readonly("eos_token_ids", &LLMEngine::eos_token_ids)
      .def_property_readonly("architecture", [](const LLMEngine& e) { return e.model_config().architecture; })
      .def_property_readonly("tokenizer", &LLMEngine::shared_tokenizer);

  bind_tokenizer(m);
}
