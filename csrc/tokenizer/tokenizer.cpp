#include "tokenizer/tokenizer.h"

#include <filesystem>

#include "core/error.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/sentencepiece_tokenizer.h"
#include "tokenizer/tokenizer_config.h"

namespace llmcore {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  LLMCORE_CHECK_ARG(fs::is_directory(dir), "tokenizer directory ", dir, " does not exist");
  // tokenizer.json is what transformers' fast tokenizers run, so it wins when a checkpoint
  // ships both files.
  const fs::path hf_json = fs::path(dir) / "tokenizer.json";
  if (fs::is_regular_file(hf_json)) {
    return HfTokenizer::from_file(hf_json.string(), read_tokenizer_config(dir));
  }
  const fs::path model = fs::path(dir) / "tokenizer.model";
  if (fs::is_regular_file(model)) {
    return std::make_unique<SentencePieceTokenizer>(model.string(), read_tokenizer_config(dir));
  }
  throw_value_error("no tokenizer found in ", dir,
                    ": expected tokenizer.json (Hugging Face) or tokenizer.model (sentencepiece)");
}

}  // namespace llmcore
