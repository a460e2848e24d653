// Test support for tokenizer tests: a small sentencepiece model trained once per test process
// (BPE, byte fallback, 512 pieces, Llama's identity normalizer) and throwaway checkpoint
// directories holding it.
#pragma once

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace llmcore::test_util {

namespace fs = std::filesystem;

// Removes every directory made by make_temp_dir() when the test process exits.
class TempDirRegistry {
 public:
  ~TempDirRegistry() {
    std::error_code ignored;
    for (const auto& dir : dirs_) fs::remove_all(dir, ignored);
  }
  std::string make() {
    std::string pattern = (fs::temp_directory_path() / "llmcore_tok_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dirs_.push_back(pattern);
    return pattern;
  }

 private:
  std::vector<std::string> dirs_;
};

inline std::string make_temp_dir() {
  static TempDirRegistry registry;
  return registry.make();
}

inline void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out.good()) throw std::runtime_error("cannot write " + path.string());
}

// English sentences with numbers, frequent CJK text (learned as pieces) and rare CJK / emoji
// (left to byte fallback at 512 pieces).
inline std::string training_corpus() {
  const std::vector<std::string> subjects = {"the model",    "a server",      "this engine",
                                             "the cache",    "our scheduler", "every request",
                                             "the tokenizer"};
  const std::vector<std::string> verbs = {"reads",     "writes",  "decodes", "encodes",
                                          "schedules", "returns", "streams", "counts"};
  const std::vector<std::string> objects = {
      "tokens", "blocks of memory", "text", "numbers", "the prompt", "many batches", "hello world"};
  const std::vector<std::string> cjk = {"中文测试文本", "我们的模型", "日本語のテキスト",
                                        "你好世界", "模型推理服务"};
  const std::vector<std::string> rare = {"龘", "😀", "🎉", "🚀", "é", "ß", "Ω", "✓"};
  std::mt19937 rng(1234);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  std::string corpus;
  for (int i = 0; i < 3000; ++i) {
    std::string line = pick(subjects) + " " + pick(verbs) + " " + pick(objects);
    line += " " + std::to_string(rng() % 100000) + ".";
    if (i % 3 == 0) line += " " + pick(cjk);
    if (i % 50 == 0) line += " " + pick(rare);
    if (i % 7 == 0) line = "The " + line.substr(4);
    corpus += line + "\n";
  }
  return corpus;
}

// Path of the trained model. Pieces: 0 <unk>, 1 <s>, 2 </s>, 3 <pad>, then the control symbol
// <ctrl>, the user-defined symbol <user>, 256 byte pieces and learned merges.
inline const std::string& trained_model_path() {
  static const std::string path = [] {
    const fs::path dir = make_temp_dir();
    write_file(dir / "corpus.txt", training_corpus());
    const std::string args = "--input=" + (dir / "corpus.txt").string() +
                             " --model_prefix=" + (dir / "sp").string() +
                             " --vocab_size=512 --model_type=bpe --byte_fallback=true"
                             " --character_coverage=0.995 --pad_id=3 --control_symbols=<ctrl>"
                             // Llama's normalizer: text kept as is, spaces included.
                             " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                             " --user_defined_symbols=<user> --num_threads=1 --minloglevel=2";
    const auto status = sentencepiece::SentencePieceTrainer::Train(args);
    if (!status.ok()) throw std::runtime_error("training failed: " + status.ToString());
    return (dir / "sp.model").string();
  }();
  return path;
}

// The reference the tokenizer wraps, loaded on its own.
inline const sentencepiece::SentencePieceProcessor& reference_sp() {
  static const sentencepiece::SentencePieceProcessor* sp = [] {
    auto* p = new sentencepiece::SentencePieceProcessor();
    const auto status = p->Load(trained_model_path());
    if (!status.ok()) throw std::runtime_error("load failed: " + status.ToString());
    return p;
  }();
  return *sp;
}

// A fresh checkpoint directory with tokenizer.model and, when config_json is not empty,
// tokenizer_config.json.
inline std::string make_checkpoint(const std::string& config_json = "") {
  const fs::path dir = make_temp_dir();
  fs::copy_file(trained_model_path(), dir / "tokenizer.model");
  if (!config_json.empty()) write_file(dir / "tokenizer_config.json", config_json);
  return dir.string();
}

inline std::vector<int32_t> sp_encode(const std::string& text) {
  std::vector<int> ids;
  if (!reference_sp().Encode(text, &ids).ok()) throw std::runtime_error("encode failed");
  return std::vector<int32_t>(ids.begin(), ids.end());
}

inline std::string sp_decode(const std::vector<int32_t>& ids) {
  std::string text;
  if (!reference_sp().Decode(std::vector<int>(ids.begin(), ids.end()), &text).ok()) {
    throw std::runtime_error("decode failed");
  }
  return text;
}

inline int32_t sp_id(const std::string& piece) {
  const int id = reference_sp().PieceToId(piece);
  if (reference_sp().IdToPiece(id) != piece) throw std::runtime_error("no piece " + piece);
  return id;
}

// Code-point-level UTF-8 check, written independently of the library's byte-range tables:
// decode each sequence, then reject overlongs, surrogates and values above U+10FFFF.
inline bool naive_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp;
    if (b0 < 0x80) {
      n = 0;
      cp = b0;
    } else if ((b0 >> 5) == 0x6) {
      n = 1;
      cp = b0 & 0x1F;
    } else if ((b0 >> 4) == 0xE) {
      n = 2;
      cp = b0 & 0x0F;
    } else if ((b0 >> 3) == 0x1E) {
      n = 3;
      cp = b0 & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // truncated sequence
    for (int k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b >> 6) != 0x2) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

}  // namespace llmcore::test_util
