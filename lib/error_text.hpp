#pragma once
// Error text shared by the parts that wrap one error in another (private).

#include <string>
#include <string_view>
#include <system_error>

namespace hop::detail {

/// e.what() without the ": <errno text>" std::system_error appends to its
/// message: for a new system_error with the same code, which appends it again.
inline std::string without_code_text(const std::system_error& e) {
    std::string_view w = e.what();
    const std::string tail = ": " + e.code().message();
    if (w.size() > tail.size() && w.ends_with(tail)) w.remove_suffix(tail.size());
    return std::string(w);
}

}  // namespace hop::detail
