#pragma once
/// @file
/// Networking. For now: hop::endpoint (IPv4 and IPv6 socket addresses) and
/// hop::resolve. tcp_stream, tcp_listener and udp_socket are not available
/// yet.

#include <hop/detail/executor.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace hop {

/// An IPv4 or IPv6 address and a port: what sockets bind and connect to.
///
/// @code
/// auto a = hop::endpoint::parse("127.0.0.1:8080");
/// auto b = hop::endpoint::parse("[::1]:80");
/// a.port();         // 8080
/// b.to_string();    // "[::1]:80"
/// @endcode
class endpoint {
public:
    /// 0.0.0.0:0.
    endpoint() noexcept;

    /// Parses "a.b.c.d:port" or "[ipv6]:port" (an IPv6 scope is "[fe80::1%2]"
    /// or "[fe80::1%eth0]"). Names are not looked up here: use hop::resolve.
    /// @throws std::invalid_argument naming the text and what is wrong with it.
    static endpoint parse(std::string_view text);

    /// From a socket address of family AF_INET or AF_INET6.
    /// @throws std::invalid_argument for another family or a short length.
    static endpoint from_sockaddr(const sockaddr* address, socklen_t length);

    static endpoint loopback_v4(std::uint16_t port) noexcept;
    static endpoint loopback_v6(std::uint16_t port) noexcept;
    static endpoint any_v4(std::uint16_t port) noexcept;
    static endpoint any_v6(std::uint16_t port) noexcept;

    bool is_v4() const noexcept { return m_addr.v4.sin_family == AF_INET; }
    bool is_v6() const noexcept { return m_addr.v6.sin6_family == AF_INET6; }
    std::uint16_t port() const noexcept;
    /// The same address with another port.
    endpoint with_port(std::uint16_t port) const noexcept;
    /// "127.0.0.1", "::1", "fe80::1%2".
    std::string address() const;
    /// "127.0.0.1:8080", "[::1]:80": what parse() reads back.
    std::string to_string() const;

    const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&m_addr); }
    socklen_t size() const noexcept { return is_v4() ? sizeof(sockaddr_in) : sizeof(sockaddr_in6); }

    friend bool operator==(const endpoint& a, const endpoint& b) noexcept;

private:
    // Makes this an IPv6 endpoint for `address`, port 0, no scope.
    void reset_v6(const in6_addr& address) noexcept;

    union {
        sockaddr_in v4;
        sockaddr_in6 v6;
    } m_addr;
};

namespace detail {

/// Awaits a future as a cancellation point: a stop request resumes the
/// caller at once with cancelled_error and leaves the work behind it to end
/// on its own (its result is dropped). The waiter node is shared with the
/// future's waiter list, so it outlives whichever side finishes first.
template <class T>
class abandonable_awaiter {
    struct node final : future_waiter {
        std::atomic<int> refs{2};     // the future's list and the awaiter
        std::atomic<bool> claimed{false};
        bool cancelled = false;       // written before the cancel's resume is posted
        resume_item resume;
        executor_base* executor = nullptr;
        void release() noexcept {
            if (refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
        }
        static void on_notify(future_waiter* w) noexcept {
            auto* n = static_cast<node*>(w);
            if (!n->claimed.exchange(true, std::memory_order_acq_rel)) resume_on(n->executor, n->resume);
            n->release();
        }
    };
    struct canceller {
        node* n;
        void operator()() const noexcept {
            if (n->claimed.exchange(true, std::memory_order_acq_rel)) return;
            n->cancelled = true;
            // Never resume inline from inside request_stop.
            if (n->executor) {
                n->executor->post_continuation(&n->resume);
            } else {
                resume_inline(n->resume.handle);
            }
        }
    };

public:
    explicit abandonable_awaiter(future<T> f) : m_future(std::move(f)) {}
    abandonable_awaiter(const abandonable_awaiter&) = delete;
    abandonable_awaiter& operator=(const abandonable_awaiter&) = delete;
    ~abandonable_awaiter() {
        m_callback.reset();
        if (m_node) m_node->release();
    }

    bool await_ready() const { return m_future.done(); }

    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        const std::stop_token& token = token_of(h.promise());
        if (token.stop_requested()) {
            m_stopped = true;
            return false;
        }
        m_node = new node;
        m_node->notify = &node::on_notify;
        m_node->resume.handle = h;
        m_node->executor = current_executor();
        if (token.stop_possible()) m_callback.emplace(token, canceller{m_node});
        if (!m_future.native_state()->add_waiter(m_node)) {
            m_node->refs.fetch_sub(1, std::memory_order_acq_rel);  // never in the list
            // Done already: continue here unless a stop got there first (then
            // its posted resume continues us).
            return m_node->claimed.exchange(true, std::memory_order_acq_rel);
        }
        return true;
    }

    T await_resume() {
        m_callback.reset();
        if (m_stopped || (m_node && m_node->cancelled)) throw cancelled_error("hop: cancelled while waiting");
        return std::move(m_future).get();
    }

private:
    future<T> m_future;
    node* m_node = nullptr;
    bool m_stopped = false;
    std::optional<std::stop_callback<canceller>> m_callback;
};

/// getaddrinfo on the blocking pool.
future<std::vector<endpoint>> resolve_blocking(std::string host, std::uint16_t port);

}  // namespace detail

/// `co_await hop::resolve("localhost", 8080)`: the host's addresses with
/// `port`, IPv6 and IPv4 in getaddrinfo's order of preference. The lookup
/// runs on the blocking pool (never on the loop); the caller resumes on its
/// own executor. A cancellation point: stop resumes the caller at once with
/// cancelled_error and the lookup's result is dropped.
/// @throws std::invalid_argument for an empty host.
/// @throws std::system_error (category "getaddrinfo") naming the host when
///         the name does not resolve.
inline detail::abandonable_awaiter<std::vector<endpoint>> resolve(std::string host, std::uint16_t port) {
    return detail::abandonable_awaiter<std::vector<endpoint>>(detail::resolve_blocking(std::move(host), port));
}

}  // namespace hop
