#pragma once
// Private to hop::http: what an HTTP/1 connection is made of, for the
// client (lib/http/client_pool.hpp's connection) and the server
// (lib/http/server_connection.hpp) alike: the transport, the bytes read
// and not yet parsed, and the llhttp parser, stepped one event at a time.
// The roles above it decide what an event means and when to read more.

#include "codec.hpp"
#include "transport.hpp"

#include <hop/detail/assert.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>

namespace hop::http::detail {

/// The bytes read and not yet parsed. Holds no memory while empty and
/// released, so a connection between messages costs nothing here.
class input_buffer {
public:
    std::string_view view() const noexcept { return {m_data.get() + m_begin, m_end - m_begin}; }
    bool empty() const noexcept { return m_begin == m_end; }
    void consume(std::size_t n) noexcept {
        m_begin += n;
        if (m_begin == m_end) m_begin = m_end = 0;
    }
    /// Room for a read of up to `want` bytes: the free tail, after
    /// compacting, or a larger buffer when it is full of unparsed bytes
    /// (doubling up to 256 KiB, then `want` at a time).
    std::span<char> space(std::size_t want);
    void commit(std::size_t n) noexcept { m_end += n; }
    /// Frees the buffer if it holds nothing.
    void release() noexcept {
        if (m_begin == m_end) {
            m_data.reset();
            m_cap = 0;
            m_begin = m_end = 0;
        }
    }
    /// Frees a buffer over `keep` bytes that holds nothing.
    void shrink(std::size_t keep) noexcept {
        if (m_cap > keep) release();
    }

private:
    std::unique_ptr<char[]> m_data;
    std::size_t m_cap = 0;
    std::size_t m_begin = 0;
    std::size_t m_end = 0;
};

/// The transport, its input and the parser of one HTTP/1 connection, and
/// where it is. next_event() and finish() make every move between
/// messages, heads and bodies; hand_over() the last one.
///
///   between --bytes of a message, no event yet--> head
///   between, head --head event--> body
///   body --message_end--> between
///   between --hand_over--> handed_over (another protocol has the transport)
struct h1_connection {
    enum class state : std::uint8_t { between, head, body, handed_over };

    h1_connection(transport t, parser::kind k, parser::limits l) : io(std::move(t)), parse(k, l) {}
    h1_connection(const h1_connection&) = delete;
    h1_connection& operator=(const h1_connection&) = delete;

    state at() const noexcept { return m_state; }

    /// The next event in what is buffered (need_more: all of it taken);
    /// the bytes it used are consumed. A body event's bytes stay valid
    /// until the next read.
    /// @throws parse_error (the status to answer, and why).
    parser::event next_event() {
        HOP_ASSERT(m_state != state::handed_over, "an HTTP/1 event after the connection was handed over");
        std::size_t used = 0;
        const parser::event ev = parse.parse(in.view(), used);
        in.consume(used);
        move_on(ev);
        return ev;
    }
    /// The peer ended its side: parser::finish (a body that runs until the
    /// close ends with message_end).
    /// @throws parse_error if a message was cut short.
    parser::event finish() {
        HOP_ASSERT(m_state != state::handed_over, "an HTTP/1 event after the connection was handed over");
        const parser::event ev = parse.finish();
        move_on(ev);
        return ev;
    }

    class read_operation;
    /// Reads at most `want` more bytes into the input; resumes with how
    /// many (0: the peer ended its side). A transport read, no frame.
    read_operation read_more(std::size_t want);

    class next_bytes_operation;
    /// Between messages, nothing buffered: waits for the peer's next bytes
    /// and reads up to `want` of them into the input's free space, holding
    /// as little as it can meanwhile. Resumes with how many bytes were read
    /// (not committed), 0 at the end of the stream, or
    /// next_bytes_operation::again (a wake found nothing: await another).
    next_bytes_operation next_bytes(std::size_t want);

    /// What another protocol takes over (HTTP/2 after its preface, the
    /// bytes after an Upgrade or a CONNECT): the transport and the bytes
    /// read but not parsed, in order.
    struct handed {
        transport io;
        std::string unread;
    };
    /// Between messages only. The connection is left without a transport.
    handed hand_over();

    transport io;
    input_buffer in;
    parser parse;

private:
    void move_on(parser::event ev) noexcept {
        switch (ev) {
            case parser::event::head:
                HOP_ASSERT(m_state == state::between || m_state == state::head, "a head inside a body");
                m_state = state::body;
                break;
            case parser::event::body:
                HOP_ASSERT(m_state == state::body, "body bytes before a head");
                break;
            case parser::event::message_end:
                HOP_ASSERT(m_state == state::body, "the end of a message that had no head");
                m_state = state::between;
                break;
            case parser::event::need_more:
                if (m_state == state::between && parse.started()) m_state = state::head;
                break;
        }
    }

    state m_state = state::between;
};

/// `co_await c.read_more(want)`: the transport's read into the input's
/// free space, committed when it resumes.
class h1_connection::read_operation {
public:
    read_operation(input_buffer& in, transport& io, std::size_t want) : m_in(&in), m_op(io.read_some(in.space(want))) {}
    bool await_ready() { return m_op.await_ready(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        return m_op.await_suspend(h);
    }
    std::size_t await_resume() {
        const std::size_t n = m_op.await_resume();
        m_in->commit(n);
        return n;
    }

private:
    input_buffer* m_in;
    transport::read_operation m_op;
};

inline h1_connection::read_operation h1_connection::read_more(std::size_t want) { return {in, io, want}; }

/// `co_await c.next_bytes(want)`. One loop operation, built in place in
/// one slot of the awaiting frame (a connection waits here for most of its
/// life, so the slot is what an idle connection costs):
///   - TCP on a readiness loop: a wait until the socket is readable, with
///     the input buffer freed, then a non-blocking read into a new one;
///   - otherwise (io_uring, TLS): the transport's read, into the input's
///     buffer.
class h1_connection::next_bytes_operation {
public:
    /// A wake that found nothing to read.
    static constexpr std::size_t again = static_cast<std::size_t>(-1);

    next_bytes_operation(h1_connection& c, std::size_t want) : m_c(&c), m_want(want), m_waiting(c.io.cheap_readiness_wait()) {
        if (m_waiting) {
            c.in.release();
            ::new (static_cast<void*>(&m_wait)) hop::detail::fd_wait_operation(c.io.wait_readable());
        } else {
            ::new (static_cast<void*>(&m_read)) transport::read_operation(c.io.read_some(c.in.space(want)));
        }
    }
    ~next_bytes_operation() {
        if (m_waiting) {
            m_wait.~fd_wait_operation();
        } else {
            using op = transport::read_operation;
            m_read.~op();
        }
    }
    next_bytes_operation(const next_bytes_operation&) = delete;
    next_bytes_operation& operator=(const next_bytes_operation&) = delete;

    bool await_ready() { return m_waiting ? m_wait.await_ready() : m_read.await_ready(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        return m_waiting ? m_wait.await_suspend(h) : m_read.await_suspend(h);
    }
    std::size_t await_resume() {
        if (!m_waiting) return m_read.await_resume();
        (void)m_wait.await_resume();
        return m_c->io.try_read_some(m_c->in.space(m_want), again);
    }

private:
    h1_connection* m_c;
    std::size_t m_want;
    bool m_waiting;
    union {
        hop::detail::fd_wait_operation m_wait;
        transport::read_operation m_read;
    };
};

inline h1_connection::next_bytes_operation h1_connection::next_bytes(std::size_t want) { return {*this, want}; }

}  // namespace hop::http::detail
