#pragma once
// Private to the implementation: what hop::http::client is made of below
// its request logic (lib/http/client.cpp):
//
//   request_timers a request's stop source and its two deadlines (pool,
//                  connect or read; total), which stop it when they expire;
//   loop_agent     one per (client, loop): the client's queues in that
//                  loop's deadline service (lib/http/deadlines.hpp), and the
//                  deadline that closes the loop's idle connections (expired,
//                  or closed by the server), and drops them from the pool
//                  when the loop is destroyed;
//   connection     a socket, its parser and its read buffer;
//   client_state   the pool: slots, idle connections per (loop, host:port),
//                  the FIFO of requests waiting for a slot, and a short
//                  name cache. One mutex, never held across a co_await.
//
// Lock order: the pool's mutex, then the deadline service's (agent_for
// makes an agent's queues under the pool's lock). The service calls no
// deadline with its lock held, so a fired timeout may take the pool's lock
// (a pool waiter's stop callback does).

#include "deadlines.hpp"
#include "h1_connection.hpp"
#include "proxy.hpp"
#include "stop_scope.hpp"

#include <hop/detail/loop_op.hpp>
#include <hop/detail/timer.hpp>
#include <hop/future.hpp>
#include <hop/http/client.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/tls.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hop::http::detail {

// ---- timeouts -----------------------------------------------------------------

enum class timeout_kind : std::uint8_t { none = 0, pool = 1, connect = 2, read = 3, total = 4 };

class loop_agent;
class client_state;

/// One request's timing: the stop source its IO runs under, which timeout
/// (if any) stopped it, and its two deadlines (pool / connect / read, and
/// total). Lives in heap memory the request owns: the deadlines never move.
struct request_timers {
    std::shared_ptr<loop_agent> agent;
    std::stop_source stop;
    std::atomic<timeout_kind> fired{timeout_kind::none};
    /// clock ticks of the last progress (read timeouts count from it).
    std::atomic<clock::rep> last_progress{0};

    request_timers() {
        phase.owner = this;
        total.owner = this;
    }
    request_timers(const request_timers&) = delete;
    request_timers& operator=(const request_timers&) = delete;
    ~request_timers();

    void progress() noexcept { last_progress.store(clock::now().time_since_epoch().count(), std::memory_order_relaxed); }
    /// Starts the pool / connect / read phase's timeout (off if `d` <= 0).
    void arm_phase(timeout_kind k, std::chrono::milliseconds d);
    void disarm_phase() noexcept;
    /// total_timeout: `deadline` fixed when the request began.
    void arm_total(clock::time_point deadline);
    void disarm_total() noexcept;

private:
    struct entry final : deadline {
        request_timers* owner = nullptr;
        timeout_kind kind = timeout_kind::none;
        void expired(bool loop_closing) noexcept override;
    };
    entry phase;
    entry total;
};

/// One per (client, loop): the client's deadline queues on that loop, and
/// the deadline of the loop's idle connections. Thread-safe.
class loop_agent {
public:
    loop_agent(std::shared_ptr<deadline_service> service, const client_options& o, std::weak_ptr<client_state> st);
    loop_agent(const loop_agent&) = delete;
    loop_agent& operator=(const loop_agent&) = delete;
    ~loop_agent();

    io_loop& loop() const noexcept { return m_pool.service().loop(); }
    deadline_queue& queue(timeout_kind k) noexcept;
    /// An idle connection on this loop expires at `t`.
    void note_idle_deadline(clock::time_point t);
    /// The client is going away: its idle connections are not swept here
    /// any more.
    void stop() noexcept;

private:
    // Sweeps the loop's idle connections when the first expires; armed
    // (at max while none is idle) until the client goes, so the loop's
    // closing is heard.
    struct idle_sweep final : deadline {
        loop_agent* agent = nullptr;
        void expired(bool loop_closing) noexcept override;
    };

    std::weak_ptr<client_state> m_state;
    deadline_queue m_pool;
    deadline_queue m_connect;
    deadline_queue m_read;
    deadline_queue m_total;
    deadline_queue m_idle;
    idle_sweep m_sweep;
};

// ---- connections ----------------------------------------------------------------

/// Where a pooled connection may be reused: the loop it was made on and
/// `origin`: scheme://host:port, for a direct connection; the proxy (and
/// its credentials) for http:// through one; the origin and the proxy for
/// a CONNECT tunnel. A connection is never shared between these kinds.
struct pool_key {
    io_loop* loop = nullptr;
    std::string origin;
    bool operator==(const pool_key&) const = default;
};

struct pool_key_hash {
    std::size_t operator()(const pool_key& k) const noexcept {
        return std::hash<std::string>{}(k.origin) ^ (std::hash<const void*>{}(k.loop) * 0x9e3779b97f4a7c15ull);
    }
};

/// One connection to a server: its transport, input and response parser
/// (whose state carries over from one response to the next), and where
/// the pool may reuse it.
struct connection : h1_connection {
    connection(transport t, const pool_key& k, std::size_t max_header_bytes);

    pool_key key;
    std::uint64_t served = 0;  // responses completed on it
    clock::time_point idle_since{};

    /// The socket's descriptor (for the idle peek).
    int fd() const noexcept { return io.native_handle(); }
    void close() noexcept { io.close(); }
};

/// False if the server has closed `fd` (or sent bytes nobody asked for):
/// a non-blocking peek.
bool still_open(int fd) noexcept;

class client_state;

/// `co_await pool_wait{...}`: a kept-alive connection for the key, or a
/// slot to open a new one, waiting (FIFO) while every slot is taken.
class pool_wait : public hop::detail::primitive_awaiter<pool_wait> {
public:
    pool_wait(client_state& st, const pool_key& key, bool force_new) noexcept
        : m_state(&st), m_key(&key), m_force_new(force_new) {}
    /// Gives back what was granted and not taken.
    ~pool_wait();
    /// @throws cancelled_error; std::logic_error if the client was destroyed.
    void await_resume();

    std::unique_ptr<connection> conn;  // a kept-alive connection, or
    bool slot = false;                 // the right to open one
    bool from_idle = false;            // conn sat idle (it may be stale)

    static pool_wait* from(hop::detail::list_waiter* w) noexcept { return static_cast<pool_wait*>(w); }
    hop::detail::list_waiter* waiter() noexcept { return this; }
    const pool_key& key() const noexcept { return *m_key; }
    bool force_new() const noexcept { return m_force_new; }
    bool closed = false;  // the client went away

private:
    friend class hop::detail::primitive_awaiter<pool_wait>;
    std::mutex& mutex() noexcept;
    hop::detail::waiter_list& list() noexcept;
    bool try_complete(hop::detail::list_waiter*& wake);
    const char* cancel_message() const noexcept { return "hop::http::client: cancelled while waiting for a connection"; }

    client_state* m_state;
    const pool_key* m_key;
    bool m_force_new;
};

/// hop::metrics: a client_state is listed for read_http_clients while it
/// lives; its counters are kept when it goes (lib/http/client_pool.cpp).
class metrics_listing {
public:
    explicit metrics_listing(const client_state* s);
    ~metrics_listing();
    metrics_listing(const metrics_listing&) = delete;
    metrics_listing& operator=(const metrics_listing&) = delete;

private:
    const client_state* m_state;
};

/// Counts a failed request by its kind (std::current_exception() of a catch).
void count_client_failure(std::exception_ptr e) noexcept;

/// The pool, shared by the client, its agents and its requests.
class client_state : public std::enable_shared_from_this<client_state> {
public:
    explicit client_state(client_options o);
    client_state(const client_state&) = delete;
    client_state& operator=(const client_state&) = delete;

    const client_options opts;
    /// The proxies (client_options::proxy, no_proxy, trust_env), read once.
    const proxy_table proxies;
    /// The context for https: opts.tls, or a default client context made
    /// on first use (system CAs, ALPN http/1.1).
    tls::context tls_context();

    // ---- requests' side ----
    /// The agent for `loop` (started on first use); null if the loop is
    /// being destroyed.
    std::shared_ptr<loop_agent> agent_for(io_loop& loop);
    /// Takes a connection or a slot now if it can (as pool_wait does).
    bool try_acquire(pool_wait& w);
    /// A connection that finished a response and may carry another: to a
    /// waiter for its key, else idle (or closed, for a waiter of another
    /// host, when the client is gone, or its loop is closing).
    void release(std::unique_ptr<connection> c);
    /// Closes a connection (failed, cancelled, not reusable) and frees its slot.
    void discard(std::unique_ptr<connection> c) noexcept;
    /// Frees a slot whose connection was never made.
    void release_slot(const std::string& origin) noexcept;
    /// The client is being destroyed.
    void shut_down() noexcept;
    client_stats stats() const;

    std::atomic<std::uint64_t> connects{0};
    std::atomic<std::uint64_t> reuses{0};
    std::atomic<std::uint64_t> retries{0};
    std::atomic<std::uint64_t> tls_resumed{0};

    // ---- names ----
    /// A lookup of host:port, shared by concurrent requests and kept for
    /// 30 s once it succeeded.
    future<std::vector<endpoint>> lookup(const std::string& host, std::uint16_t port);
    /// Drops a failed lookup so the next request asks again.
    void forget_lookup(const std::string& host, std::uint16_t port, const future<std::vector<endpoint>>& f);

    // ---- the agents' side ----
    /// Closes `loop`'s idle connections that expired or that the server
    /// closed; returns when the next one expires (max if none).
    clock::time_point sweep_idle(io_loop& loop);
    /// The loop is going away: drop its idle connections and its agent.
    void drop_loop(io_loop& loop, const loop_agent* agent) noexcept;

private:
    friend class pool_wait;
    using idle_list = std::vector<std::unique_ptr<connection>>;

    bool try_acquire_locked(pool_wait& w);
    bool take_slot_locked(const std::string& origin);
    void close_locked(std::unique_ptr<connection> c) noexcept;
    void grant_locked(hop::detail::wake_list& wakes);
    bool waiter_could_use_locked(const std::string& freed_origin) const;
    std::size_t host_open_locked(const std::string& origin) const noexcept;

    std::once_flag m_tls_once;
    std::optional<tls::context> m_default_tls;

    mutable std::mutex m_mutex;
    bool m_closed = false;
    std::size_t m_open = 0;
    std::size_t m_idle_count = 0;
    std::unordered_map<std::string, std::size_t> m_host_open;
    std::unordered_map<pool_key, idle_list, pool_key_hash> m_idle;
    hop::detail::waiter_list m_waiters;
    std::unordered_map<io_loop*, std::shared_ptr<loop_agent>> m_agents;

    struct name_entry {
        future<std::vector<endpoint>> lookup;
        clock::time_point made;
    };
    std::mutex m_names_mutex;
    std::unordered_map<std::string, name_entry> m_names;

    metrics_listing m_listed{this};  // last: unlisted first, while the rest is whole
};

}  // namespace hop::http::detail
