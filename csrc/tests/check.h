// Minimal unit-test harness for the scheduler's C++ tests (no external framework needed):
//   TEST_CASE(name) { CHECK(cond); CHECK_EQ(a, b); CHECK_THROWS(expr, Type); }
//   int main() { return run_all_tests(); }
#pragma once

#include <exception>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace check {

struct Failure {
  std::string where;
  std::string what;
};

struct Registry {
  std::vector<std::pair<std::string, std::function<void()>>> tests;
  static Registry& get() {
    static Registry r;
    return r;
  }
};

struct Register {
  Register(const char* name, std::function<void()> fn) { Registry::get().tests.emplace_back(name, std::move(fn)); }
};

[[noreturn]] inline void fail(const char* file, int line, const std::string& what) {
  throw Failure{std::string(file) + ":" + std::to_string(line), what};
}

// Enums print as their integer value.
template <typename T>
auto printable(const T& v) {
  if constexpr (std::is_enum_v<T>) {
    return static_cast<std::underlying_type_t<T>>(v);
  } else {
    return v;
  }
}

template <typename A, typename B>
void check_eq(const A& a, const B& b, const char* text, const char* file, int line) {
  if (a == b) return;
  std::ostringstream os;
  os << text << "  (" << printable(a) << " vs " << printable(b) << ")";
  fail(file, line, os.str());
}

inline int run_all_tests() {
  int failed = 0;
  for (auto& [name, fn] : Registry::get().tests) {
    try {
      fn();
      std::cout << "[ ok ] " << name << "\n";
    } catch (const Failure& f) {
      ++failed;
      std::cout << "[FAIL] " << name << " at " << f.where << ": " << f.what << "\n";
    } catch (const std::exception& e) {
      ++failed;
      std::cout << "[FAIL] " << name << ": unexpected exception: " << e.what() << "\n";
    }
  }
  std::cout << Registry::get().tests.size() - failed << "/" << Registry::get().tests.size() << " passed\n";
  return failed == 0 ? 0 : 1;
}

}  // namespace check

#define CHECK_CONCAT2(a, b) a##b
#define CHECK_CONCAT(a, b) CHECK_CONCAT2(a, b)
#define TEST_CASE(name)                                                       \
  static void name();                                                         \
  static check::Register CHECK_CONCAT(register_, name)(#name, &name);         \
  static void name()
#define CHECK(cond) \
  do {              \
    if (!(cond)) check::fail(__FILE__, __LINE__, #cond); \
  } while (0)
#define CHECK_EQ(a, b) check::check_eq((a), (b), #a " == " #b, __FILE__, __LINE__)
#define CHECK_THROWS(expr, Type)                                                  \
  do {                                                                            \
    bool thrown_ = false;                                                         \
    try {                                                                         \
      (void)(expr);                                                               \
    } catch (const Type&) {                                                       \
      thrown_ = true;                                                             \
    }                                                                             \
    if (!thrown_) check::fail(__FILE__, __LINE__, #expr " did not throw " #Type); \
  } while (0)
