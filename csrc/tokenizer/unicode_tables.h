// Raw Unicode data for the tokenizer.json normalizers, generated into unicode_tables.cpp by
// gen_unicode_tables.py (formats documented there). Only unicode_normalization.cpp reads these.
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmcore::unicode_tables {

extern const char kUnicodeVersion[];
extern const uint32_t kCombiningClassRuns[];  // [kNumCombiningClassRuns][3] {first, last, ccc}
extern const size_t kNumCombiningClassRuns;
extern const uint32_t kDecompositions[];  // [kDecompositionsSize] header + code point records
extern const size_t kDecompositionsSize;
extern const uint32_t kQuickCheckRuns[];  // [kNumQuickCheckRuns][3] {first, last, flags}
extern const size_t kNumQuickCheckRuns;
extern const int32_t kLowercaseSimple[];  // [kNumLowercaseSimple][2] {cp delta, lower - cp}
extern const size_t kNumLowercaseSimple;
extern const uint32_t kLowercaseSpecial[];  // [kLowercaseSpecialSize] {cp, n, n code points}
extern const size_t kLowercaseSpecialSize;

}  // namespace llmcore::unicode_tables
