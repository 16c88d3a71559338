// The parts of an HTTP/1 connection shared by the client and the server
// (lib/http/h1_connection.hpp).

#include "h1_connection.hpp"

#include <algorithm>
#include <cstring>

namespace hop::http::detail {

namespace {
constexpr std::size_t doubling_limit = 256 * 1024;
}

std::span<char> input_buffer::space(std::size_t want) {
    if (m_begin == m_end) m_begin = m_end = 0;
    if (m_cap < want && m_begin == m_end) {
        m_data.reset();
        m_data.reset(new char[want]);
        m_cap = want;
    } else if (m_end == m_cap) {
        if (m_begin > 0) {
            std::memmove(m_data.get(), m_data.get() + m_begin, m_end - m_begin);
            m_end -= m_begin;
            m_begin = 0;
        } else {
            // Full of bytes the parser has not taken (it takes all it is
            // given unless it stops at an event): grow.
            const std::size_t cap = m_cap < doubling_limit ? std::max(want, m_cap * 2) : m_cap + want;
            std::unique_ptr<char[]> bigger(new char[cap]);
            std::memcpy(bigger.get(), m_data.get(), m_end);
            m_data = std::move(bigger);
            m_cap = cap;
        }
    }
    return {m_data.get() + m_end, m_cap - m_end};
}

h1_connection::handed h1_connection::hand_over() {
    HOP_ASSERT(m_state == state::between, "a connection handed over in the middle of a message");
    handed h{std::move(io), std::string(in.view())};
    in.consume(in.view().size());
    in.release();
    m_state = state::handed_over;
    return h;
}

}  // namespace hop::http::detail
