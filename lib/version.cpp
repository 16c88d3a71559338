#include <hop/version.hpp>

namespace hop {

// The library's own copy of the string, so an application can tell a header
// and library mismatch apart from a match.
const char* version() noexcept { return HOP_VERSION_STRING; }

}  // namespace hop
