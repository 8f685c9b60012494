// Exceptions the scheduler throws. The binding maps InputError to
// editx.errors.InvalidInputError and InvariantError to AssertionError.
#pragma once

#include <stdexcept>
#include <string>

namespace editx::sched {

// The caller passed something wrong (unknown id, bad value, call out of protocol order).
// Thrown before any state changes, so a rejected call leaves the scheduler as it was.
struct InputError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Internal bookkeeping is inconsistent (a bug); raised by check_invariants().
struct InvariantError : std::logic_error {
  using std::logic_error::logic_error;
};

inline void require(bool ok, const char* message) {
  if (!ok) throw InputError(message);
}

inline void require(bool ok, const std::string& message) {
  if (!ok) throw InputError(message);
}

// For checks on hot paths: the message is only built when the check fails.
template <typename MakeMessage>
inline void require_lazy(bool ok, MakeMessage make_message) {
  if (!ok) throw InputError(make_message());
}

inline void invariant(bool ok, const std::string& message) {
  if (!ok) throw InvariantError(message);
}

}  // namespace editx::sched
