// Unicode normalization forms (UAX #15) and lowercasing over tables generated from Python's
// unicodedata (unicode_tables.cpp), for the NFC / NFD / NFKC / NFKD / Lowercase normalizers of
// tokenizer.json. Input must be valid UTF-8.
#pragma once

#include <string>
#include <string_view>

namespace llmcore {

enum class NormalizationForm { kNFC, kNFD, kNFKC, kNFKD };

// `s` in the given form. Text that passes the quick check (ASCII, most CJK) comes back as a copy
// without decomposing.
std::string normalize_unicode(std::string_view s, NormalizationForm form);

// Full lowercase mapping of each character on its own (Rust's char::to_lowercase, which
// Hugging Face's Lowercase normalizer uses): "İ" -> "i̇", "Σ" -> "σ" in every position.
std::string to_lowercase(std::string_view s);

// The Unicode version of the tables.
const char* unicode_tables_version();

}  // namespace llmcore
