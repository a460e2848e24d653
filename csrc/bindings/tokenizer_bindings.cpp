// _C.Tokenizer: the native tokenizer of a checkpoint directory, usable without a model (the
// engine shares the same object).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "tokenizer/tokenizer.h"

namespace py = pybind11;

namespace llmcore {

namespace {
// Decoded text can hold U+FFFD for incomplete UTF-8 but is always valid UTF-8; decode leniently
// anyway so a tokenizer bug shows as U+FFFD rather than an exception.
py::str to_py(const std::string& s) {
  return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
}
}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer", "A checkpoint's native tokenizer.")
      .def("encode", &Tokenizer::encode, py::arg("text"), py::arg("add_special_tokens") = true,
           py::call_guard<py::gil_scoped_release>())
      .def("decode", [](const Tokenizer& t, const std::vector<int32_t>& ids, bool skip_special_tokens) {
             std::string s;
             {
               py::gil_scoped_release release;
               s = t.decode(ids, skip_special_tokens);
             }
             return to_py(s);
           }, py::arg("ids"), py::arg("skip_special_tokens") = true)
      .def("id_to_token", [](const Tokenizer& t, int32_t id) { return to_py(t.id_to_token(id)); }, py::arg("id"))
      .def("token_to_id", &Tokenizer::token_to_id, py::arg("token"))
      .def("is_special", &Tokenizer::is_special, py::arg("id"))
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("bos_token_id", &Tokenizer::bos_token_id)
      .def_property_readonly("eos_token_id", &Tokenizer::eos_token_id);
  m.def("load_tokenizer", [](const std::string& dir) { return std::shared_ptr<Tokenizer>(load_tokenizer(dir)); },
        py::arg("path"), "Loads the tokenizer of a checkpoint directory: tokenizer.json when present, else tokenizer.model.");
}

}  // namespace llmcore
