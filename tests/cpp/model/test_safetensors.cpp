// safetensors: write/read round trips, the on-disk layout checked byte by byte, sharded
// checkpoints, and corrupt or incomplete files erroring with the file and tensor names.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "model_test_util.h"

namespace llmcore {
namespace {

using testing_util::ScratchDir;
using testing_util::value_error_of;

// A CPU tensor whose bytes are a deterministic function of `salt`.
Tensor patterned(Shape shape, DType dtype, int salt) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  auto* bytes = static_cast<unsigned char*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i)
    bytes[i] = static_cast<unsigned char>((i * 31 + salt * 7 + 3) & 0xff);
  return t;
}

void expect_same(const Tensor& got, const Tensor& want, const std::string& name) {
  EXPECT_EQ(got.dtype(), want.dtype()) << name;
  EXPECT_EQ(got.shape(), want.shape()) << name;
  EXPECT_EQ(got.device(), Device::kCPU) << name;
  ASSERT_EQ(got.nbytes(), want.nbytes()) << name;
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.nbytes()), 0) << name;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << std::string(data_bytes, '\0');
}

TEST(Safetensors, RoundTripAllDtypes) {
  ScratchDir dir;
  std::map<std::string, Tensor> tensors = {
      {"w.f32", patterned({3, 5}, DType::kF32, 1)},
      {"w.f16", patterned({7}, DType::kF16, 2)},
      {"w.bf16", patterned({2, 3, 3}, DType::kBF16, 3)},
      {"ids.i32", patterned({4}, DType::kI32, 4)},
      {"ids.i64", patterned({1, 3}, DType::kI64, 5)},
      {"mask.u8", patterned({5}, DType::kU8, 6)},
      {"scalar", patterned({}, DType::kF32, 7)},
      {"empty", patterned({0, 4}, DType::kBF16, 8)},
  };
  // fp16 / bf16 payloads that are real numbers, not just bit patterns.
  auto* h = tensors["w.f16"].data_as<uint16_t>();
  auto* b = tensors["w.bf16"].data_as<uint16_t>();
  for (int i = 0; i < 7; ++i) h[i] = float_to_fp16(0.5f * i - 1.25f);
  for (int i = 0; i < 18; ++i) b[i] = float_to_bf16(3.0f - 0.75f * i);
  write_safetensors(dir.file("model.safetensors"), tensors);

  const WeightStore store = WeightStore::open(dir.path());
  std::vector<std::string> names;
  for (const auto& kv : tensors) names.push_back(kv.first);
  EXPECT_EQ(store.names(), names);
  for (const auto& kv : tensors) {
    EXPECT_TRUE(store.has(kv.first));
    expect_same(store.get(kv.first), kv.second, kv.first);
  }
  EXPECT_FLOAT_EQ(fp16_to_float(store.get("w.f16").data_as<uint16_t>()[6]), 1.75f);
  EXPECT_FLOAT_EQ(bf16_to_float(store.get("w.bf16").data_as<uint16_t>()[4]), 0.0f);
}

TEST(Safetensors, FileLayoutMatchesFormat) {
  ScratchDir dir;
  std::map<std::string, Tensor> tensors = {
      {"b", patterned({3}, DType::kU8, 1)},
      {"a", patterned({2, 2}, DType::kF16, 2)},
      {"c", patterned({3}, DType::kI64, 3)},
      {"d", patterned({1}, DType::kF32, 4)},
  };
  const std::string path = dir.file("x.safetensors");
  write_safetensors(path, tensors);
  const std::string bytes = read_all(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  const std::string header_text = bytes.substr(8, n);
  // Names appear in sorted order in the header text.
  size_t last = 0;
  for (const char* name : {"\"a\"", "\"b\"", "\"c\"", "\"d\""}) {
    const size_t pos = header_text.find(name);
    ASSERT_NE(pos, std::string::npos) << name;
    EXPECT_GT(pos, last) << name;
    last = pos;
  }
  const nlohmann::json header = nlohmann::json::parse(header_text);
  const size_t data_size = bytes.size() - 8 - n;
  // The buffer is covered exactly, without holes, and every tensor starts aligned to its item size.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  const std::map<std::string, size_t> item = {{"a", 2}, {"b", 1}, {"c", 8}, {"d", 4}};
  for (const auto& kv : tensors) {
    const auto& info = header.at(kv.first);
    const uint64_t begin = info.at("data_offsets")[0], end = info.at("data_offsets")[1];
    EXPECT_EQ(end - begin, kv.second.nbytes()) << kv.first;
    EXPECT_EQ(begin % item.at(kv.first), 0u) << kv.first;
    EXPECT_EQ(std::memcmp(bytes.data() + 8 + n + begin, kv.second.data(), kv.second.nbytes()), 0)
        << kv.first;
    spans.push_back({begin, end});
  }
  std::sort(spans.begin(), spans.end());
  uint64_t cursor = 0;
  for (const auto& s : spans) {
    EXPECT_EQ(s.first, cursor);
    cursor = s.second;
  }
  EXPECT_EQ(cursor, data_size);
  EXPECT_EQ(header.at("a").at("dtype"), "F16");
  EXPECT_EQ(header.at("c").at("dtype"), "I64");
  EXPECT_EQ(header.at("a").at("shape"), nlohmann::json::array({2, 2}));
}

TEST(Safetensors, ViewsOutliveTheStore) {
  ScratchDir dir;
  const Tensor w = patterned({64, 64}, DType::kF32, 9);
  write_safetensors(dir.file("model.safetensors"), {{"w", w}});
  Tensor view;
  {
    const WeightStore store = WeightStore::open(dir.path());
    view = store.get("w");
  }
  expect_same(view, w, "w");
}

TEST(Safetensors, ShardedIndex) {
  ScratchDir dir;
  const Tensor a = patterned({4, 4}, DType::kBF16, 1), b = patterned({8}, DType::kF32, 2),
               c = patterned({2, 3}, DType::kF16, 3);
  write_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"a", a}, {"b", b}});
  write_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"c", c}});
  // A stray file the index does not list is not part of the checkpoint.
  write_safetensors(dir.file("consolidated.safetensors"), {{"stray", b}});
  {
    std::ofstream out(dir.file("model.safetensors.index.json"));
    out << R"({"metadata": {"total_size": 100}, "weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
      "c": "model-00002-of-00002.safetensors"}})";
  }
  const WeightStore store = WeightStore::open(dir.path());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_FALSE(store.has("stray"));
  expect_same(store.get("a"), a, "a");
  expect_same(store.get("b"), b, "b");
  expect_same(store.get("c"), c, "c");
}

TEST(Safetensors, IndexErrorsNameTheTensorOrFile) {
  ScratchDir dir;
  write_safetensors(dir.file("s1.safetensors"), {{"a", patterned({2}, DType::kF32, 1)}});
  {
    std::ofstream out(dir.file("model.safetensors.index.json"));
    out << R"({"weight_map": {"a": "s1.safetensors", "ghost": "s1.safetensors"}})";
  }
  std::string msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("ghost"), std::string::npos) << msg;

  {
    std::ofstream out(dir.file("model.safetensors.index.json"));
    out << R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})";
  }
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("s2.safetensors"), std::string::npos) << msg;

  {
    std::ofstream out(dir.file("model.safetensors.index.json"));
    out << R"({"metadata": {}})";
  }
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("weight_map"), std::string::npos) << msg;
}

TEST(Safetensors, UnindexedFilesAreAllRead) {
  ScratchDir dir;
  write_safetensors(dir.file("b.safetensors"), {{"x", patterned({2}, DType::kF32, 1)}});
  write_safetensors(dir.file("a.safetensors"), {{"y", patterned({3}, DType::kF32, 2)}});
  const WeightStore store = WeightStore::open(dir.path());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"x", "y"}));

  write_safetensors(dir.file("c.safetensors"), {{"x", patterned({2}, DType::kF32, 3)}});
  const std::string msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("b.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("c.safetensors"), std::string::npos) << msg;
}

TEST(Safetensors, MissingTensorNamesIt) {
  ScratchDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"present", patterned({1}, DType::kF32, 1)}});
  const WeightStore store = WeightStore::open(dir.path());
  EXPECT_FALSE(store.has("model.norm.weight"));
  const std::string msg = value_error_of([&] { store.get("model.norm.weight"); });
  EXPECT_NE(msg.find("model.norm.weight"), std::string::npos) << msg;
}

TEST(Safetensors, TruncatedFileNamesFileAndTensor) {
  ScratchDir dir;
  const std::string path = dir.file("model.safetensors");
  // One tensor, so the one that loses bytes is known.
  write_safetensors(path, {{"layer.weight", patterned({16, 16}, DType::kF32, 1)}});
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 10);
  std::string msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer.weight"), std::string::npos) << msg;

  // Cut inside the header, and inside the length prefix.
  std::filesystem::resize_file(path, 20);
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  std::filesystem::resize_file(path, 5);
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

TEST(Safetensors, BadHeadersNameFileAndTensor) {
  ScratchDir dir;
  const std::string path = dir.file("model.safetensors");
  write_raw(path, R"({"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}})", 16);
  std::string msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("F64"), std::string::npos) << msg;

  // Offsets that disagree with shape * item size.
  write_raw(path, R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}})", 24);
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("24"), std::string::npos) << msg;

  write_raw(path, R"({"w": {"dtype": "F32", "shape": [2]}})", 8);
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("data_offsets"), std::string::npos) << msg;

  write_raw(path, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 16);
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;

  write_raw(path, "{not json", 0);
  msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;

  // __metadata__ is skipped, not parsed as a tensor.
  write_raw(
      path,
      R"({"__metadata__": {"format": "pt"}, "w": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]}})",
      3);
  EXPECT_EQ(WeightStore::open(dir.path()).names(), std::vector<std::string>{"w"});
}

TEST(Safetensors, DirectoryErrors) {
  ScratchDir dir;
  std::string msg = value_error_of([&] { WeightStore::open(dir.path()); });
  EXPECT_NE(msg.find(dir.path()), std::string::npos) << msg;
  const std::string missing = dir.file("no_such_dir");
  msg = value_error_of([&] { WeightStore::open(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
}

}  // namespace
}  // namespace llmcore
