#pragma once
// What the socket and file operations share: the byte-buffer concepts their
// reads and writes accept, and end_of_stream_error.

#include <cstddef>
#include <iterator>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace hop {

/// read_exact reached the end of the stream before the buffer was full.
class end_of_stream_error : public std::runtime_error {
public:
    end_of_stream_error(const std::string& what, std::size_t bytes_read)
        : std::runtime_error(what), m_bytes_read(bytes_read) {}
    /// How many bytes did arrive (they are in the buffer).
    std::size_t bytes_read() const noexcept { return m_bytes_read; }

private:
    std::size_t m_bytes_read;
};

namespace detail {

/// Anything contiguous of bytes: std::string, std::string_view,
/// std::vector<char>, std::array<std::byte, N>, std::span<unsigned char>...
template <class R>
concept byte_buffer = requires(R& r) {
    std::data(r);
    std::size(r);
} && sizeof(*std::data(std::declval<R&>())) == 1 &&
    std::is_trivially_copyable_v<std::remove_cvref_t<decltype(*std::data(std::declval<R&>()))>>;

template <class R>
concept mutable_byte_buffer =
    byte_buffer<R> && !std::is_const_v<std::remove_reference_t<decltype(*std::data(std::declval<R&>()))>>;

}  // namespace detail

}  // namespace hop
