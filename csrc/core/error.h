// Errors and checks. User mistakes throw ValueError-kind errors that name the parameter, the
// value and the limit; broken invariants throw RuntimeError-kind errors. The bindings map
// ErrorKind to the Python exception type.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace llmcore {

enum class ErrorKind { kValue, kRuntime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void throw_value_error(Args&&... args) {
  throw Error(ErrorKind::kValue, str_cat(std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void throw_runtime_error(Args&&... args) {
  throw Error(ErrorKind::kRuntime, str_cat(std::forward<Args>(args)...));
}

}  // namespace llmcore

// Invalid user input (-> ValueError). Message parts are streamed: LLMCORE_CHECK_ARG(n > 0, "n must be >= 1, got ", n)
#define LLMCORE_CHECK_ARG(cond, ...)                                   \
  do {                                                                 \
    if (!(cond)) ::llmcore::throw_value_error(__VA_ARGS__);            \
  } while (0)

// Broken internal invariant (-> RuntimeError), with the location.
#define LLMCORE_CHECK(cond, ...)                                                             \
  do {                                                                                       \
    if (!(cond))                                                                             \
      ::llmcore::throw_runtime_error(__FILE__, ":", __LINE__, ": check failed: " #cond ": ", \
                                     ##__VA_ARGS__);                                         \
  } while (0)
