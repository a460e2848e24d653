#include "tokenizer/tokenizer.h"

#include <filesystem>

#include "core/error.h"
#include "tokenizer/sentencepiece_tokenizer.h"
#include "tokenizer/tokenizer_config.h"

namespace llmcore {

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  LLMCORE_CHECK_ARG(fs::is_directory(dir), "tokenizer directory ", dir, " does not exist");
  const fs::path model = fs::path(dir) / "tokenizer.model";
  if (fs::is_regular_file(model)) {
    return std::make_unique<SentencePieceTokenizer>(model.string(), read_tokenizer_config(dir));
  }
  LLMCORE_CHECK_ARG(!fs::exists(fs::path(dir) / "tokenizer.json"), "tokenizer directory ", dir,
                    " has tokenizer.json but no tokenizer.model: tokenizer.json is not supported "
                    "yet and tokenizer.model was not found");
  throw_value_error("no tokenizer found in ", dir,
                    ": expected tokenizer.model (sentencepiece) or tokenizer.json");
}

}  // namespace llmcore
