// safetensors layout: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data
// buffer; offsets are relative to the buffer's start.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace llmcore {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kIndexFile = "model.safetensors.index.json";

struct StDType {
  const char* name;
  DType dtype;
};
constexpr StDType kStDTypes[] = {
    {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
    {"I32", DType::kI32}, {"I64", DType::kI64}, {"U8", DType::kU8},
};

const char* st_dtype_name(DType t) {
  for (const StDType& d : kStDTypes) {
    if (d.dtype == t) return d.name;
  }
  return "?";
}

// Read-only private mapping of the whole file; the returned pointer unmaps when the last owner
// (the WeightStore or a tensor view) lets go.
std::shared_ptr<void> map_file(const std::string& path, size_t* size_out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LLMCORE_CHECK_ARG(fd >= 0, "cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw_value_error("cannot stat safetensors file '", path, "': ", std::strerror(err));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw_value_error("safetensors file '", path, "' is ", size,
                      " bytes, smaller than the 8-byte header length");
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps its own reference to the file
  LLMCORE_CHECK_ARG(addr != MAP_FAILED, "cannot mmap safetensors file '", path,
                    "': ", std::strerror(err));
  *size_out = size;
  return std::shared_ptr<void>(addr, [size](void* p) { ::munmap(p, size); });
}

int64_t json_uint(const json& v, const std::string& path, const std::string& tensor,
                  const char* field) {
  LLMCORE_CHECK_ARG(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
                    "safetensors file '", path, "': tensor '", tensor, "' has an invalid ", field,
                    " entry ", v.dump());
  return v.get<int64_t>();
}

// Parses one file's header and hands each tensor (a view into the mapping) to `insert`.
void add_file(const std::string& path, std::vector<std::shared_ptr<void>>& mappings,
              const std::function<void(const std::string& name, Tensor view)>& insert) {
  size_t size = 0;
  std::shared_ptr<void> mapping = map_file(path, &size);
  const auto* base = static_cast<const unsigned char*>(mapping.get());
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  LLMCORE_CHECK_ARG(header_len <= size - 8, "safetensors file '", path, "': header length ",
                    header_len, " exceeds the file size ", size, " (truncated or not safetensors)");
  json header;
  try {
    header = json::parse(base + 8, base + 8 + header_len);
  } catch (const json::parse_error& e) {
    throw_value_error("safetensors file '", path, "': header is not valid JSON: ", e.what());
  }
  LLMCORE_CHECK_ARG(header.is_object(), "safetensors file '", path,
                    "': header is not a JSON object");

  const size_t data_start = 8 + header_len;
  const size_t data_size = size - data_start;
  for (const auto& item : header.items()) {
    const std::string& name = item.key();
    if (name == "__metadata__") continue;
    const json& info = item.value();
    LLMCORE_CHECK_ARG(info.is_object() && info.contains("dtype") && info.contains("shape") &&
                          info.contains("data_offsets") && info.at("dtype").is_string() &&
                          info.at("shape").is_array() && info.at("data_offsets").is_array() &&
                          info.at("data_offsets").size() == 2,
                      "safetensors file '", path, "': tensor '", name,
                      "' needs dtype, shape and data_offsets [begin, end]; got ", info.dump());
    const std::string dtype_str = info.at("dtype").get<std::string>();
    const StDType* st = nullptr;
    for (const StDType& d : kStDTypes) {
      if (dtype_str == d.name) st = &d;
    }
    LLMCORE_CHECK_ARG(st != nullptr, "safetensors file '", path, "': tensor '", name,
                      "' has dtype ", dtype_str,
                      ", which is not supported (F32, F16, BF16, I32, I64, U8)");
    Shape shape;
    int64_t numel = 1;
    for (const json& d : info.at("shape")) {
      shape.push_back(json_uint(d, path, name, "shape"));
      numel *= shape.back();
    }
    const uint64_t begin =
        static_cast<uint64_t>(json_uint(info.at("data_offsets")[0], path, name, "data_offsets"));
    const uint64_t end =
        static_cast<uint64_t>(json_uint(info.at("data_offsets")[1], path, name, "data_offsets"));
    LLMCORE_CHECK_ARG(begin <= end && end <= data_size, "safetensors file '", path, "': tensor '",
                      name, "' data_offsets [", begin, ", ", end,
                      "] lie outside the data buffer of ", data_size, " bytes (truncated file?)");
    const uint64_t expected = static_cast<uint64_t>(numel) * dtype_size(st->dtype);
    LLMCORE_CHECK_ARG(end - begin == expected, "safetensors file '", path, "': tensor '", name,
                      "' spans ", end - begin, " bytes but shape ", shape_str(shape), " of ",
                      dtype_str, " needs ", expected);
    void* data = const_cast<unsigned char*>(base + data_start + begin);
    insert(name, Tensor::wrap(data, std::move(shape), st->dtype, Device::kCPU, mapping));
  }
  mappings.push_back(std::move(mapping));
}

}  // namespace

WeightStore WeightStore::open(const std::string& dir) {
  std::error_code ec;
  LLMCORE_CHECK_ARG(fs::is_directory(dir, ec), "model directory '", dir,
                    "' does not exist or is not a directory");
  WeightStore store;
  auto add = [&store](const std::string& file) {
    add_file(file, store.mappings_, [&](const std::string& name, Tensor view) {
      auto it = store.entries_.find(name);
      if (it != store.entries_.end()) {
        throw_value_error("tensor '", name, "' appears in both '", it->second.file, "' and '", file,
                          "'");
      }
      store.entries_.emplace(name, Entry{std::move(view), file});
    });
  };

  const fs::path index_path = fs::path(dir) / kIndexFile;
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    LLMCORE_CHECK_ARG(in.good(), "cannot open '", index_path.string(), "'");
    json index;
    try {
      index = json::parse(in);
    } catch (const json::parse_error& e) {
      throw_value_error("'", index_path.string(), "' is not valid JSON: ", e.what());
    }
    LLMCORE_CHECK_ARG(
        index.is_object() && index.contains("weight_map") && index.at("weight_map").is_object(),
        "'", index_path.string(), "' has no 'weight_map' object");
    const json& weight_map = index.at("weight_map");
    std::set<std::string> files;
    for (const auto& item : weight_map.items()) {
      LLMCORE_CHECK_ARG(item.value().is_string(), "'", index_path.string(), "': weight_map entry '",
                        item.key(), "' must name a file, got ", item.value().dump());
      files.insert(item.value().get<std::string>());
    }
    LLMCORE_CHECK_ARG(!files.empty(), "'", index_path.string(), "' has an empty weight_map");
    for (const std::string& f : files) {
      add((fs::path(dir) / f).string());
    }
    for (const auto& item : weight_map.items()) {
      const std::string file = (fs::path(dir) / item.value().get<std::string>()).string();
      auto it = store.entries_.find(item.key());
      LLMCORE_CHECK_ARG(it != store.entries_.end() && it->second.file == file, "'",
                        index_path.string(), "' maps tensor '", item.key(), "' to '", file,
                        "', which does not hold it");
    }
    return store;
  }

  std::vector<std::string> files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".safetensors" && e.is_regular_file(ec))
      files.push_back(e.path().string());
  }
  LLMCORE_CHECK_ARG(!files.empty(), "model directory '", dir,
                    "' holds no *.safetensors file and no ", kIndexFile);
  std::sort(files.begin(), files.end());
  for (const std::string& f : files) add(f);
  return store;
}

bool WeightStore::has(const std::string& name) const { return entries_.count(name) != 0; }

Tensor WeightStore::get(const std::string& name) const {
  auto it = entries_.find(name);
  LLMCORE_CHECK_ARG(it != entries_.end(), "tensor '", name, "' is not in the checkpoint");
  return it->second.view;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors) {
  // Data in the order the reference writer uses (larger items first, then by name), so every
  // tensor starts aligned to its item size and the buffer has no holes.
  std::vector<const std::pair<const std::string, Tensor>*> order;
  for (const auto& kv : tensors) {
    LLMCORE_CHECK_ARG(kv.second.device() == Device::kCPU, "write_safetensors: tensor '", kv.first,
                      "' must be on the CPU, got ", device_name(kv.second.device()));
    order.push_back(&kv);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return dtype_size(a->second.dtype()) > dtype_size(b->second.dtype());
  });

  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const auto* kv : order) {
    const Tensor& t = kv->second;
    json shape = json::array();
    for (int64_t d : t.shape()) shape.push_back(d);
    header[kv->first] = {{"dtype", st_dtype_name(t.dtype())},
                         {"shape", shape},
                         {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string header_text = header.dump();  // nlohmann objects are name-sorted
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  LLMCORE_CHECK_ARG(out.good(), "write_safetensors: cannot create '", path, "'");
  unsigned char len_bytes[8];
  const uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len_bytes), 8);
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const auto* kv : order) {
    out.write(static_cast<const char*>(kv->second.data()),
              static_cast<std::streamsize>(kv->second.nbytes()));
  }
  out.flush();
  LLMCORE_CHECK_ARG(out.good(), "write_safetensors: writing '", path, "' failed");
}

}  // namespace llmcore
