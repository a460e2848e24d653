// Pieces of the _C module defined in their own files.
#pragma once

#include <pybind11/pybind11.h>

namespace llmcore {

// _C.Tokenizer and _C.load_tokenizer(path).
void bind_tokenizer(pybind11::module_& m);

}  // namespace llmcore
