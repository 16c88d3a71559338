#pragma once
// Private to hop::http::server: what a server is made of above its
// connections (lib/http/server_connection.hpp):
//
//   deadlines      a shard's queues in its loop's deadline service
//                  (lib/http/deadlines.hpp): no timer per read;
//   server_shard   one per loop the server runs on: its connections, their
//                  deadlines, its counters (lib/http/server_shards.cpp);
//   server_state   what the shards share: options, handler, the connection
//                  cap, the log budget and the shutdown.
//
// The layers: server.cpp (the public facade: bind, serve, stats),
// server_shards.cpp (acceptors, hand-off between loops, sweepers, the
// graceful shutdown), server_connection.cpp (one HTTP/1 connection's
// requests and responses).

#include "deadlines.hpp"

#include <hop/http/server.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task_group.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hop::http::detail {

class server_connection;

// The server is split in shards, one per loop it serves on (one for
// serve(), one per pool loop for serve(io_pool&)). A shard owns the
// connections its loop serves, their deadlines and its counters: nothing
// on the request path is shared between loops. What is shared (options,
// handler, the connection cap, the shutdown) is in server_state.
//
// Shutdown, on every shard: request_shutdown() cancels every acceptor;
// each acceptor closes its listener and counts itself out; the last one
// out sets every shard's m_drain; each shard then drains on its own loop
// (idle connections closed, hand-offs still queued to it are taken and
// closed, grace, cancel, wait). So no connection is handed to a shard
// that drains, and every listener is closed before any connection is.

// Fields marked "loop" are touched on the shard's loop only.
class server_shard {
public:
    server_shard(std::size_t index, io_loop* loop) noexcept : m_index(index), m_loop(loop) {}
    server_shard(const server_shard&) = delete;
    server_shard& operator=(const server_shard&) = delete;

    const std::size_t m_index;
    io_loop* const m_loop;
    // This shard's listener if it runs an acceptor (else closed). Used and
    // closed on the loop.
    tcp_listener m_listener;
    bool m_accepts = false;

    // loop
    task_group m_connections;
    // This shard's queues in its loop's deadline service, made when the
    // shard starts on its loop (start_deadlines), gone when it ends.
    struct deadlines {
        deadlines(const std::shared_ptr<deadline_service>& service, const server_options& o);
        deadline_queue header;  // header_timeout
        deadline_queue idle;    // idle_timeout: keep-alive, body progress, write progress
        deadline_queue linger;  // lingering_timeout: each read of a lingering close
        deadline_queue log;     // log_interval: the log budget's next flush
    };
    std::optional<deadlines> m_deadlines;
    // The log budget's flush, armed in m_deadlines->log while a window is open.
    struct log_flush final : deadline {
        server_state* state = nullptr;
        server_shard* shard = nullptr;
        void expired(bool loop_closing) noexcept override;
    } m_log_flush;
    event m_incoming_done;             // m_incoming reached 0 while draining
    server_connection* m_first = nullptr;  // every open connection
    bool m_draining = false;

    // thread-safe
    event m_drain;  // every acceptor has ended: drain
    // Connections this shard serves or is about to (handed off, not yet
    // started): what least_loaded compares. Written by the acceptor's loop
    // and this one; on its own cache line.
    alignas(64) std::atomic<std::size_t> m_load{0};
    std::atomic<std::size_t> m_incoming{0};  // hand-offs posted to this loop, not yet run
    // Counters, written on this shard's loop only.
    alignas(64) std::atomic<std::uint64_t> m_accepted{0};
    std::atomic<std::uint64_t> m_requests{0};
    std::atomic<std::uint64_t> m_accept_failures{0};

    // loop: joins the loop's deadline service. @throws std::runtime_error
    // if the loop is being destroyed.
    void start_deadlines(server_state& st);
    // loop: once every connection ended.
    void stop_deadlines() noexcept;
    // loop: closes up to `n` connections that wait for a request, the
    // longest-waiting first (keep-alive ones and new ones that sent
    // nothing). Returns how many.
    std::size_t evict_idle(std::size_t n, std::chrono::nanoseconds idle_timeout,
                           std::chrono::nanoseconds header_timeout) noexcept;
    // loop: starts serving `s` here (the connection is counted already).
    void start_connection(const std::shared_ptr<server_state>& st, tcp_stream s);
};

// What the server shares with its shards and their connections.
class server_state {
public:
    explicit server_state(server_options options) : m_options(std::move(options)) {}

    server_options m_options;
    tcp_listener m_listener;  // the bound one, until serve moves it to the accepting shard
    endpoint m_local;
    server::handler m_plain;
    server::stream_handler m_streaming;
    server::body_handler m_body_stream;

    // Written by serve before any shard runs, then only read. stats()
    // reads m_shards[0, m_shard_count).
    std::vector<std::unique_ptr<server_shard>> m_shards;
    std::atomic<std::size_t> m_shard_count{0};
    bool m_hand_off = false;  // least_loaded over several loops: the acceptor hands connections out

    // The connection cap: connections counted and not ended, over every
    // shard.
    std::atomic<std::size_t> m_slots{0};
    event m_slot_free;

    // thread-safe
    std::mutex m_mutex;
    bool m_shutdown_requested = false;  // m_mutex
    bool m_serve_started = false;       // m_mutex
    std::vector<future<void>> m_accepts;  // m_mutex: the running acceptors
    std::atomic<std::size_t> m_acceptors_running{0};
    std::mutex m_log_mutex;
    // Set while an acceptor waits at max_connections: a keep-alive
    // connection that goes idle then closes, to make room.
    std::atomic<bool> m_room_wanted{false};

    // The log budget: what a peer can trigger is logged at most once per
    // log_interval per kind, with a count of the rest. m_log_mutex.
    enum class log_kind : std::uint8_t { tls_handshake, eviction, count };
    struct log_window {
        bool open = false;
        clock::time_point end{};
        std::uint64_t more = 0;  // events after the first in this window
        std::string what;        // the summary's subject
    };
    log_window m_windows[static_cast<std::size_t>(log_kind::count)];

    // Thread-safe, on `sh`'s loop: logs `line` if no window of `kind` is
    // open (opening one, flushed by sh's sweeper at its end), else counts
    // it. `what` names the kind in the summary line.
    void log_limited(server_shard& sh, log_kind kind, const std::string& line, std::string_view what) noexcept;
    // Thread-safe: ends the windows that ended by `now`, logging each
    // count ("... and 1,999 more in the last 10 s"). Returns when the
    // next open window ends (max: none is open).
    clock::time_point flush_log_budget(clock::time_point now) noexcept;

    std::string summary(const log_window& w) const;

    void log(const std::string& line) noexcept {
        std::lock_guard lock(m_log_mutex);
        emit(line);
    }
    // log() with m_log_mutex held.
    void emit(const std::string& line) noexcept {
        try {
            if (m_options.log) {
                m_options.log(line);
                return;
            }
        } catch (...) {
        }
        std::fprintf(stderr, "%s\n", line.c_str());
    }

    // Thread-safe: every acceptor ends (cancelled), which starts the
    // graceful shutdown.
    void request_shutdown() noexcept {
        std::vector<future<void>> accepts;
        {
            // An acceptor added later sees the flag and cancels itself.
            std::lock_guard lock(m_mutex);
            m_shutdown_requested = true;
            accepts.swap(m_accepts);
        }
        for (auto& f : accepts) {
            try {
                f.cancel();
            } catch (...) {
            }
        }
    }

    // Thread-safe: an acceptor started; cancelled at once if the shutdown
    // was asked for already.
    void add_acceptor(future<void> f) {
        bool stop_now = false;
        {
            std::lock_guard lock(m_mutex);
            m_accepts.push_back(f);
            stop_now = m_shutdown_requested;
        }
        if (stop_now) f.cancel();
    }

    // Thread-safe: an acceptor ended (or will never start); the last one
    // lets every shard drain.
    void acceptor_ended() noexcept {
        if (m_acceptors_running.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        const std::size_t n = m_shard_count.load(std::memory_order_acquire);
        for (std::size_t i = 0; i < n; ++i) m_shards[i]->m_drain.set();
    }

    // Takes a connection slot if one is free.
    bool try_take_slot() noexcept {
        std::size_t cur = m_slots.load(std::memory_order_relaxed);
        while (cur < m_options.max_connections) {
            if (m_slots.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) return true;
        }
        return false;
    }
    // Waits until a slot is free (`take`: and takes it). A cancellation
    // point.
    task<void> wait_for_slot(bool take) {
        for (;;) {
            if (take ? try_take_slot() : m_slots.load(std::memory_order_acquire) < m_options.max_connections) {
                co_return;
            }
            m_slot_free.reset();
            // A slot freed before the reset set the event too early: look again.
            if (m_slots.load(std::memory_order_acquire) < m_options.max_connections) continue;
            co_await m_slot_free.wait();
        }
    }
    // Thread-safe: gives a slot back.
    void release_slot() noexcept {
        if (m_slots.fetch_sub(1, std::memory_order_acq_rel) == m_options.max_connections) m_slot_free.set();
    }

    // The acceptor on `here` is at max_connections: asks every shard to
    // close its longest-idle connections, and keep-alive connections that
    // go idle from now on to close, until a slot is free.
    void make_room(const std::shared_ptr<server_state>& self, server_shard& here);

    // Marks serve as started. @throws std::logic_error the second time.
    void begin_serve(const char* where);
    // Sets up a shard per loop (on the thread that calls serve, before any
    // runs); `home` runs least_loaded's acceptor. @throws std::system_error
    // if a reuse_port listener cannot be bound.
    void make_shards(const std::vector<io_loop*>& loops, std::size_t home);

    static task<void> serve_one(std::shared_ptr<server_state> st);
    static task<void> serve_pool(std::shared_ptr<server_state> st, io_pool& loops);
    static task<void> pool_shard(std::shared_ptr<server_state> self, server_shard* sh);
    static task<void> run_shard(std::shared_ptr<server_state> self, server_shard* sh);
    static task<void> accept_loop(std::shared_ptr<server_state> self, server_shard* sh);
    // The acceptor's loop: sends `s` to the shard chosen for it.
    void dispatch(const std::shared_ptr<server_state>& self, server_shard& here, std::size_t& turn, tcp_stream s);
};

}  // namespace hop::http::detail
