#include "tokenizer/unicode_normalization.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "tokenizer/unicode_chars.h"
#include "tokenizer/unicode_tables.h"

namespace llmcore {

namespace {

constexpr uint32_t kNumCodePoints = 0x110000;
constexpr uint32_t kBlockBits = 8;  // the two-stage property table uses blocks of 256 code points

// Hangul syllables compose and decompose by arithmetic (Unicode 3.12), not by table.
constexpr uint32_t kSBase = 0xAC00;
constexpr uint32_t kLBase = 0x1100;
constexpr uint32_t kVBase = 0x1161;
constexpr uint32_t kTBase = 0x11A7;
constexpr uint32_t kLCount = 19;
constexpr uint32_t kVCount = 21;
constexpr uint32_t kTCount = 28;
constexpr uint32_t kNCount = kVCount * kTCount;
constexpr uint32_t kSCount = kLCount * kNCount;

// Property bits above the 8-bit canonical combining class.
constexpr uint16_t kNfcNo = 1 << 8;
constexpr uint16_t kNfcMaybe = 1 << 9;
constexpr uint16_t kNfkcNo = 1 << 10;
constexpr uint16_t kNfkcMaybe = 1 << 11;
constexpr uint16_t kHasCanonicalDecomposition = 1 << 12;
constexpr uint16_t kHasDecomposition = 1 << 13;  // canonical or compatibility

struct Decomposition {
  uint32_t offset = 0;  // into UnicodeData::pool_
  uint32_t length = 0;
  bool compat = false;
};

// The generated tables decoded into lookup structures, once per process.
class UnicodeData {
 public:
  static const UnicodeData& get() {
    static const UnicodeData data;
    return data;
  }

  uint16_t props(uint32_t cp) const {
    return blocks_[(static_cast<size_t>(stage1_[cp >> kBlockBits]) << kBlockBits) |
                   (cp & ((1u << kBlockBits) - 1))];
  }
  static uint8_t ccc_of(uint16_t props) { return static_cast<uint8_t>(props & 0xFF); }
  uint8_t ccc(uint32_t cp) const { return ccc_of(props(cp)); }

  // Appends the full (recursive) decomposition of cp: canonical only, or also compatibility.
  void decompose(uint32_t cp, bool compat, std::vector<uint32_t>* out) const {
    if (cp - kSBase < kSCount) {
      const uint32_t index = cp - kSBase;
      out->push_back(kLBase + index / kNCount);
      out->push_back(kVBase + (index % kNCount) / kTCount);
      if (index % kTCount != 0) out->push_back(kTBase + index % kTCount);
      return;
    }
    if ((props(cp) & (compat ? kHasDecomposition : kHasCanonicalDecomposition)) == 0) {
      out->push_back(cp);
      return;
    }
    const Decomposition& d = decompositions_.at(cp);
    for (uint32_t k = 0; k < d.length; ++k) decompose(pool_[d.offset + k], compat, out);
  }

  // The primary composite of (first, second), or 0 when they do not compose.
  uint32_t compose(uint32_t first, uint32_t second) const {
    if (first - kLBase < kLCount && second - kVBase < kVCount) {
      return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
    }
    if (first - kSBase < kSCount && (first - kSBase) % kTCount == 0 && second > kTBase &&
        second - kTBase < kTCount) {
      return first + (second - kTBase);
    }
    auto it = compositions_.find(pair_key(first, second));
    return it == compositions_.end() ? 0 : it->second;
  }

  // Appends the lowercase mapping of cp.
  void lowercase(uint32_t cp, std::string* out) const {
    auto simple = lower_simple_.find(cp);
    if (simple != lower_simple_.end()) {
      append_utf8(out, simple->second);
      return;
    }
    auto special = lower_special_.find(cp);
    if (special != lower_special_.end()) {
      for (uint32_t c : special->second) append_utf8(out, c);
      return;
    }
    append_utf8(out, cp);
  }

 private:
  static uint64_t pair_key(uint32_t first, uint32_t second) {
    return (static_cast<uint64_t>(first) << 21) | second;
  }

  UnicodeData() {
    namespace t = unicode_tables;
    std::vector<uint16_t> flat(kNumCodePoints, 0);  // [kNumCodePoints], folded into blocks below
    for (size_t r = 0; r < t::kNumCombiningClassRuns; ++r) {
      const uint32_t* run = t::kCombiningClassRuns + 3 * r;
      for (uint32_t cp = run[0]; cp <= run[1]; ++cp) flat[cp] |= static_cast<uint16_t>(run[2]);
    }
    for (size_t r = 0; r < t::kNumQuickCheckRuns; ++r) {
      const uint32_t* run = t::kQuickCheckRuns + 3 * r;
      uint16_t flags = 0;
      if (run[2] & 1) flags |= kNfcNo;
      if (run[2] & 2) flags |= kNfcMaybe;
      if (run[2] & 4) flags |= kNfkcNo;
      if (run[2] & 8) flags |= kNfkcMaybe;
      for (uint32_t cp = run[0]; cp <= run[1]; ++cp) flat[cp] |= flags;
    }
    for (uint32_t cp = kSBase; cp < kSBase + kSCount; ++cp) {
      flat[cp] |= kHasCanonicalDecomposition | kHasDecomposition;
    }

    uint32_t cp = 0;
    size_t pos = 0;
    while (pos < t::kDecompositionsSize) {
      const uint32_t header = t::kDecompositions[pos++];
      cp += header >> 6;
      Decomposition d;
      d.compat = (header >> 5) & 1;
      d.length = header & 31;
      d.offset = static_cast<uint32_t>(pool_.size());
      LLMCORE_CHECK(pos + d.length <= t::kDecompositionsSize && cp < kNumCodePoints,
                    "corrupt decomposition table at ", pos);
      pool_.insert(pool_.end(), t::kDecompositions + pos, t::kDecompositions + pos + d.length);
      pos += d.length;
      decompositions_[cp] = d;
      flat[cp] |= kHasDecomposition;
      if (!d.compat) flat[cp] |= kHasCanonicalDecomposition;
    }
    // Primary composites: canonical pairs whose composite is not excluded (NFC_QC = No marks
    // exactly the Full_Composition_Exclusion characters).
    for (const auto& [composite, d] : decompositions_) {
      if (!d.compat && d.length == 2 && (flat[composite] & kNfcNo) == 0) {
        compositions_[pair_key(pool_[d.offset], pool_[d.offset + 1])] = composite;
      }
    }

    cp = 0;
    for (size_t i = 0; i < t::kNumLowercaseSimple; ++i) {
      cp += static_cast<uint32_t>(t::kLowercaseSimple[2 * i]);
      lower_simple_[cp] = static_cast<uint32_t>(static_cast<int64_t>(cp) + t::kLowercaseSimple[2 * i + 1]);
    }
    for (size_t i = 0; i < t::kLowercaseSpecialSize;) {
      const uint32_t from = t::kLowercaseSpecial[i];
      const uint32_t n = t::kLowercaseSpecial[i + 1];
      lower_special_[from].assign(t::kLowercaseSpecial + i + 2, t::kLowercaseSpecial + i + 2 + n);
      i += 2 + n;
    }

    // Fold the flat table into deduplicated blocks: most blocks are all zero or repeat.
    const size_t block_size = size_t{1} << kBlockBits;
    stage1_.resize(kNumCodePoints >> kBlockBits);
    std::unordered_map<std::string, uint16_t> seen;
    for (size_t b = 0; b < stage1_.size(); ++b) {
      std::string key(reinterpret_cast<const char*>(flat.data() + b * block_size),
                      block_size * sizeof(uint16_t));
      auto [it, inserted] = seen.emplace(std::move(key), static_cast<uint16_t>(seen.size()));
      if (inserted) {
        blocks_.insert(blocks_.end(), flat.begin() + b * block_size,
                       flat.begin() + (b + 1) * block_size);
      }
      stage1_[b] = it->second;
    }
  }

  std::vector<uint16_t> stage1_;  // [kNumCodePoints / 256] block index
  std::vector<uint16_t> blocks_;  // [num_blocks * 256] ccc | property bits
  std::unordered_map<uint32_t, Decomposition> decompositions_;
  std::vector<uint32_t> pool_;  // decomposition code points
  std::unordered_map<uint64_t, uint32_t> compositions_;
  std::unordered_map<uint32_t, uint32_t> lower_simple_;
  std::unordered_map<uint32_t, std::vector<uint32_t>> lower_special_;
};

// UAX #15 quick check: true when `s` is certainly already in `form`.
bool quick_check_yes(const UnicodeData& data, std::string_view s, NormalizationForm form) {
  uint8_t last_ccc = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      last_ccc = 0;
      ++pos;
      continue;
    }
    size_t len = 0;
    const uint32_t cp = decode_utf8_char(s, pos, &len);
    pos += len;
    const uint16_t p = data.props(cp);
    const uint8_t ccc = UnicodeData::ccc_of(p);
    if (ccc != 0 && last_ccc > ccc) return false;
    switch (form) {
      case NormalizationForm::kNFC:
        if (p & (kNfcNo | kNfcMaybe)) return false;
        break;
      case NormalizationForm::kNFKC:
        if (p & (kNfkcNo | kNfkcMaybe)) return false;
        break;
      case NormalizationForm::kNFD:
        if (p & kHasCanonicalDecomposition) return false;
        break;
      case NormalizationForm::kNFKD:
        if (p & kHasDecomposition) return false;
        break;
    }
    last_ccc = ccc;
  }
  return true;
}

}  // namespace

std::string normalize_unicode(std::string_view s, NormalizationForm form) {
  const UnicodeData& data = UnicodeData::get();
  if (quick_check_yes(data, s, form)) return std::string(s);

  const bool compat = form == NormalizationForm::kNFKC || form == NormalizationForm::kNFKD;
  std::vector<uint32_t> chars;  // [num code points] decomposed text
  chars.reserve(s.size() + 8);
  size_t pos = 0;
  while (pos < s.size()) {
    size_t len = 0;
    const uint32_t cp = decode_utf8_char(s, pos, &len);
    pos += len;
    data.decompose(cp, compat, &chars);
  }

  // Canonical ordering: each run of non-starters sorted stably by combining class.
  for (size_t i = 0; i < chars.size();) {
    if (data.ccc(chars[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i + 1;
    while (end < chars.size() && data.ccc(chars[end]) != 0) ++end;
    if (end - i > 1) {
      std::stable_sort(chars.begin() + i, chars.begin() + end,
                       [&](uint32_t a, uint32_t b) { return data.ccc(a) < data.ccc(b); });
    }
    i = end;
  }

  if (form == NormalizationForm::kNFC || form == NormalizationForm::kNFKC) {
    // Canonical composition: a character joins the last starter unless something between them
    // has a combining class >= its own (it would be "blocked").
    if (!chars.empty()) {
      size_t starter = 0;
      int last_ccc = data.ccc(chars[0]) == 0 ? 0 : 256;
      size_t out = 1;
      for (size_t i = 1; i < chars.size(); ++i) {
        const uint32_t c = chars[i];
        const int ccc = data.ccc(c);
        const uint32_t composite = data.compose(chars[starter], c);
        if (composite != 0 && (last_ccc < ccc || last_ccc == 0)) {
          chars[starter] = composite;
          continue;
        }
        if (ccc == 0) starter = out;
        last_ccc = ccc;
        chars[out++] = c;
      }
      chars.resize(out);
    }
  }

  std::string result;
  result.reserve(s.size() + 8);
  for (uint32_t cp : chars) append_utf8(&result, cp);
  return result;
}

std::string to_lowercase(std::string_view s) {
  const UnicodeData& data = UnicodeData::get();
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    const char c = s[pos];
    if (static_cast<uint8_t>(c) < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
      ++pos;
      continue;
    }
    size_t len = 0;
    const uint32_t cp = decode_utf8_char(s, pos, &len);
    pos += len;
    data.lowercase(cp, &out);
  }
  return out;
}

const char* unicode_tables_version() { return unicode_tables::kUnicodeVersion; }

}  // namespace llmcore
