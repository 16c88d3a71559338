// hop::http::server's shards: the acceptors (one, or one per loop), the
// hand-off of connections between loops, each shard's sweeper of
// deadlines and log budget, the drain on shutdown
// (lib/http/server_state.hpp).

#include "server_connection.hpp"
#include "server_state.hpp"

#include <hop/io_loop.hpp>
#include <hop/io_pool.hpp>
#include <hop/time.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace hop::http::detail {

using namespace std::chrono_literals;

namespace {

// At max_connections, each shard closes at most this many idle connections
// per request for room (nginx drains 32 at a time).
constexpr std::size_t evict_batch = 16;
constexpr auto first_backoff = std::chrono::milliseconds(4);
constexpr auto max_backoff = std::chrono::seconds(1);

}  // namespace


namespace {

struct shutdown_requester {
    server_state* st;
    void operator()() const noexcept { st->request_shutdown(); }
};

// A connection on its way from the acceptor's loop to its shard's loop,
// posted there. Counted in the shard's m_load and m_incoming and holding a
// slot; if the loop drops it unrun (it is being destroyed), it gives all
// of that back.
class hand_off {
public:
    hand_off(std::shared_ptr<server_state> st, server_shard* sh, tcp_stream s) noexcept
        : m_st(std::move(st)), m_sh(sh), m_stream(std::move(s)) {}
    hand_off(hand_off&& o) noexcept
        : m_st(std::move(o.m_st)), m_sh(o.m_sh), m_stream(std::move(o.m_stream)), m_done(std::exchange(o.m_done, true)) {}
    hand_off(const hand_off&) = delete;
    hand_off& operator=(const hand_off&) = delete;
    hand_off& operator=(hand_off&&) = delete;
    ~hand_off() {
        if (m_done) return;
        m_stream.close();
        m_sh->m_load.fetch_sub(1, std::memory_order_relaxed);
        m_st->release_slot();
        m_sh->m_incoming.fetch_sub(1, std::memory_order_relaxed);
    }

    // On the shard's loop.
    void operator()() noexcept {
        m_done = true;
        server_shard& sh = *m_sh;
        if (sh.m_draining) {
            // Accepted just before the listener closed: closed like an idle one.
            m_stream.close();
            sh.m_load.fetch_sub(1, std::memory_order_relaxed);
            m_st->release_slot();
        } else {
            try {
                sh.start_connection(m_st, std::move(m_stream));
            } catch (const std::exception& e) {
                m_st->log(std::string("hop::http::server: a connection could not start: ") + e.what());
            }
        }
        if (sh.m_incoming.fetch_sub(1, std::memory_order_relaxed) == 1 && sh.m_draining) sh.m_incoming_done.set();
    }

private:
    std::shared_ptr<server_state> m_st;
    server_shard* m_sh;
    tcp_stream m_stream;
    bool m_done = false;
};

}  // namespace

void server_shard::start_connection(const std::shared_ptr<server_state>& st, tcp_stream s) {
    std::unique_ptr<server_connection> c;
    try {
        c = std::make_unique<server_connection>(st, *this, std::move(s));
    } catch (...) {
        m_load.fetch_sub(1, std::memory_order_relaxed);
        st->release_slot();
        throw;
    }
    server_connection* raw = c.get();
    // Queued, not started: m_future is set before the connection runs.
    raw->m_future = m_connections.spawn(server_connection::serve_connection(std::move(c)));
}

void server_state::dispatch(const std::shared_ptr<server_state>& self, server_shard& here, std::size_t& turn,
                            tcp_stream s) {
    here.m_accepted.fetch_add(1, std::memory_order_relaxed);
    server_shard* to = &here;
    if (m_hand_off) {
        // The shard with the fewest connections; among equals, the first
        // from `turn`, which moves on at each connection (so connections
        // that come and go one at a time still visit every loop).
        const std::size_t n = m_shards.size();
        std::size_t best = turn;
        std::size_t best_load = m_shards[best]->m_load.load(std::memory_order_relaxed);
        for (std::size_t k = 1; k < n && best_load != 0; ++k) {
            const std::size_t i = (turn + k) % n;
            const std::size_t load = m_shards[i]->m_load.load(std::memory_order_relaxed);
            if (load < best_load) {
                best = i;
                best_load = load;
            }
        }
        turn = (turn + 1) % n;
        to = m_shards[best].get();
    }
    to->m_load.fetch_add(1, std::memory_order_relaxed);
    if (to == &here) {
        here.start_connection(self, std::move(s));
        return;
    }
    to->m_incoming.fetch_add(1, std::memory_order_relaxed);
    try {
        to->m_loop->post(hand_off(self, to, std::move(s)));
    } catch (const std::exception& e) {
        // Out of memory: the hand-off, destroyed unrun, gave its counts
        // back and closed the stream. The server goes on.
        log("hop::http::server: a connection could not be handed to loop " + std::to_string(to->m_index) + ": " +
            e.what());
    }
}

task<void> server_state::accept_loop(std::shared_ptr<server_state> self, server_shard* sh) {
    server_state& st = *self;
    server_shard& here = *sh;
    const std::string who = st.m_shards.size() > 1 ? "hop::http::server: loop " + std::to_string(here.m_index) + ": "
                                                    : std::string("hop::http::server: ");
    auto backoff = std::chrono::duration_cast<std::chrono::nanoseconds>(first_backoff);
    std::uint64_t burst = 0;
    std::size_t turn = 0;
    for (;;) {
        // The cap: a slot is taken once a connection is accepted. At the
        // cap, the connection just accepted is the one idle connections
        // make room for (nginx's "reusing connections"); it waits,
        // unserved, only if none is idle (and others wait in the backlog).
        tcp_stream s;
        std::string failure;
        try {
            if (st.m_hand_off) {
                s = co_await here.m_listener.accept_detached();
            } else {
                s = co_await here.m_listener.accept();
            }
        } catch (const std::system_error& e) {
            if (!is_transient_accept_error(e)) throw;
            failure = e.what();
        }
        if (!failure.empty()) {
            here.m_accept_failures.fetch_add(1, std::memory_order_relaxed);
            if (++burst == 1) {
                st.log(who + "accept failed: " + failure +
                       "; retrying with backoff (logged once until an accept succeeds)");
            }
            co_await sleep_for(backoff);
            backoff = std::min<std::chrono::nanoseconds>(backoff * 2, max_backoff);
            continue;
        }
        if (burst != 0) {
            st.log(who + "accepting again after " + std::to_string(burst) + " failed accepts");
            burst = 0;
            backoff = first_backoff;
        }
        if (!st.try_take_slot()) {
            st.make_room(self, here);
            co_await st.wait_for_slot(true);
            st.m_room_wanted.store(false, std::memory_order_relaxed);
        }
        st.dispatch(self, here, turn, std::move(s));
    }
}

server_shard::deadlines::deadlines(const std::shared_ptr<deadline_service>& service, const server_options& o)
    : header(service, o.header_timeout),
      idle(service, o.idle_timeout),
      linger(service, o.lingering_timeout),
      log(service, o.log_interval) {}

void server_shard::start_deadlines(server_state& st) {
    auto service = deadline_service::of(*m_loop);
    if (!service) throw std::runtime_error("hop::http::server: the loop is being destroyed");
    m_deadlines.emplace(service, st.m_options);
    m_log_flush.state = &st;
    m_log_flush.shard = this;
}

void server_shard::stop_deadlines() noexcept {
    deadline_queue::disarm(m_log_flush);
    m_deadlines.reset();
}

void server_shard::log_flush::expired(bool loop_closing) noexcept {
    if (loop_closing) return;
    // The windows of other kinds may end later: flushed at their end.
    const clock::time_point next = state->flush_log_budget(clock::now());
    if (next == clock::time_point::max() || !shard->m_deadlines) return;
    try {
        shard->m_deadlines->log.arm_at(*this, next);
    } catch (...) {
    }
}

std::size_t server_shard::evict_idle(std::size_t n, std::chrono::nanoseconds idle_timeout,
                                     std::chrono::nanoseconds header_timeout) noexcept {
    // The longest-waiting first: the front of each queue waited longest of
    // those in it (each queue's entries are "since + a fixed timeout").
    // Entries of connections that do not wait for a request (a body, a
    // response being written) are passed over. Chosen under the deadline
    // service's lock, stopped after it.
    if (!m_deadlines) return 0;
    std::vector<server_connection*> victims;
    {
        auto lock = m_deadlines->idle.service().lock();
        auto owner = [](deadline* d) { return &server_connection::owner_of(*d); };
        auto next_waiting = [&](deadline* at) -> deadline* {
            while (at != nullptr && !owner(at)->waiting()) at = deadline_queue::after_locked(*at);
            return at;
        };
        deadline* idle = next_waiting(m_deadlines->idle.front_locked());
        deadline* fresh = next_waiting(m_deadlines->header.front_locked());
        try {
            while (victims.size() < n && (idle != nullptr || fresh != nullptr)) {
                bool take_idle = fresh == nullptr;
                if (idle != nullptr && fresh != nullptr) {
                    take_idle = idle->when() - idle_timeout <= fresh->when() - header_timeout;
                }
                deadline*& pick = take_idle ? idle : fresh;
                victims.push_back(owner(pick));
                pick = next_waiting(deadline_queue::after_locked(*pick));
            }
        } catch (const std::bad_alloc&) {
            // Fewer this time.
        }
    }
    for (server_connection* c : victims) {
        c->disarm();
        c->stop(server_connection::stop_reason::evicted);
    }
    return victims.size();
}

void server_state::make_room(const std::shared_ptr<server_state>& self, server_shard& here) {
    m_room_wanted.store(true, std::memory_order_relaxed);
    const std::size_t n = m_shard_count.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
        server_shard* sh = m_shards[i].get();
        auto evict = [self, sh]() noexcept {
            if (sh->m_draining) return;
            const std::size_t closed =
                sh->evict_idle(evict_batch, self->m_options.idle_timeout, self->m_options.header_timeout);
            for (std::size_t k = 0; k < closed; ++k) {
                self->log_limited(*sh, log_kind::eviction,
                                  "hop::http::server: max_connections (" +
                                      std::to_string(self->m_options.max_connections) +
                                      ") reached: closing the longest-idle connections to admit new ones",
                                  "idle connections closed at max_connections");
            }
        };
        if (sh == &here) {
            evict();
            continue;
        }
        try {
            sh->m_loop->post(std::move(evict));
        } catch (...) {
            // That loop is stopping: its connections end anyway.
        }
    }
}

namespace {

// "1,999"
std::string with_commas(std::uint64_t v) {
    std::string digits = std::to_string(v);
    std::string out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i != 0 && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return out;
}

std::string interval_text(std::chrono::nanoseconds d) {
    using namespace std::chrono;
    if (d % seconds(1) == nanoseconds::zero()) return std::to_string(duration_cast<seconds>(d).count()) + " s";
    return std::to_string(duration_cast<milliseconds>(d).count()) + " ms";
}

}  // namespace

void server_state::log_limited(server_shard& sh, log_kind kind, const std::string& line,
                               std::string_view what) noexcept {
    const auto now = clock::now();
    bool first = false;
    {
        std::lock_guard lock(m_log_mutex);
        log_window& w = m_windows[static_cast<std::size_t>(kind)];
        if (w.open && now < w.end) {
            ++w.more;
            return;
        }
        if (w.open && w.more != 0) emit(summary(w));  // ended, not flushed yet
        w.open = true;
        w.end = saturating_add(now, m_options.log_interval);
        w.more = 0;
        try {
            w.what = what;
        } catch (...) {
        }
        first = true;
        emit(line + " (counted from now on: at most one line per " + interval_text(m_options.log_interval) + ")");
    }
    if (first && sh.m_deadlines && !sh.m_log_flush.armed()) {
        // This shard writes the count when the window ends.
        try {
            sh.m_deadlines->log.arm(sh.m_log_flush);
        } catch (...) {
        }
    }
}

std::string server_state::summary(const log_window& w) const {
    return "hop::http::server: " + w.what + ": ... and " + with_commas(w.more) + " more in the last " +
           interval_text(m_options.log_interval);
}

clock::time_point server_state::flush_log_budget(clock::time_point now) noexcept {
    std::lock_guard lock(m_log_mutex);
    clock::time_point next = clock::time_point::max();
    for (auto& w : m_windows) {
        if (!w.open) continue;
        if (now < w.end) {
            next = std::min(next, w.end);
            continue;
        }
        if (w.more != 0) emit(summary(w));
        w.open = false;
        w.more = 0;
    }
    return next;
}

// One shard's whole life, on its loop, under a stop token nobody requests
// (the shutdown comes through m_drain).
task<void> server_state::run_shard(std::shared_ptr<server_state> self, server_shard* sh) {
    server_state& st = *self;
    server_shard& here = *sh;
    std::exception_ptr fatal;
    try {
        here.start_deadlines(st);
    } catch (...) {
        fatal = std::current_exception();
        st.request_shutdown();
    }
    if (here.m_accepts && fatal) {
        here.m_listener.close();
        st.acceptor_ended();
    } else if (here.m_accepts) {
        future<void> accept;
        try {
            accept = here.m_loop->spawn(accept_loop(self, sh));
            st.add_acceptor(accept);
        } catch (...) {
            fatal = std::current_exception();
            if (accept.valid()) accept.cancel();
            st.request_shutdown();
        }
        if (accept.valid()) {
            try {
                co_await accept;
            } catch (const cancelled_error&) {
            } catch (...) {
                // Not transient: the whole server shuts down, then serve throws it.
                if (!fatal) fatal = std::current_exception();
                st.request_shutdown();
            }
        }
        here.m_listener.close();
        st.acceptor_ended();
    }

    // Graceful shutdown, once every listener is closed: idle connections
    // closed now, the others close after their current response or when
    // the grace ends.
    co_await here.m_drain.wait();
    here.m_draining = true;
    for (server_connection* c = here.m_first; c != nullptr; c = c->next()) {
        if (c->idle()) c->stop(server_connection::stop_reason::shutdown);
    }
    // Connections handed to this loop and not yet taken: they close on arrival.
    if (here.m_incoming.load(std::memory_order_relaxed) != 0) {
        here.m_incoming_done.reset();
        co_await here.m_incoming_done.wait();
    }
    try {
        co_await with_timeout(st.m_options.shutdown_grace, here.m_connections.wait());
    } catch (const timeout_error&) {
        // Past the grace: the wait cancelled the rest and waited for them.
    } catch (const cancelled_error&) {
    }
    here.stop_deadlines();
    // The counts still in the log budget's windows.
    st.flush_log_budget(clock::time_point::max());
    if (fatal) std::rethrow_exception(fatal);
}

// serve(io_pool&)'s task on one pool loop: the pool's stop (or this
// future's cancel) asks for the graceful shutdown, which it waits out.
task<void> server_state::pool_shard(std::shared_ptr<server_state> self, server_shard* sh) {
    const std::stop_token token = co_await get_stop_token();
    future<void> running;
    try {
        running = sh->m_loop->spawn(run_shard(self, sh));
    } catch (...) {
        self->request_shutdown();
        if (sh->m_accepts) self->acceptor_ended();  // its acceptor never runs
        throw;
    }
    std::stop_callback<shutdown_requester> link(token, shutdown_requester{self.get()});
    co_await std::move(running).await_with(hop::detail::stop_policy::ignore);
}

void server_state::begin_serve(const char* where) {
    std::lock_guard lock(m_mutex);
    if (m_serve_started) throw std::logic_error(std::string(where) + ": this server has served already");
    m_serve_started = true;
}

void server_state::make_shards(const std::vector<io_loop*>& loops, std::size_t home) {
    const std::size_t n = loops.size();
    const bool per_loop = m_options.accept == accept_mode::reuse_port && n > 1;
    std::vector<std::unique_ptr<server_shard>> shards;
    shards.reserve(n);
    for (std::size_t i = 0; i < n; ++i) shards.push_back(std::make_unique<server_shard>(i, loops[i]));
    if (per_loop) {
        // One more SO_REUSEPORT listener on the same address per further loop.
        const listen_options lo{.backlog = m_options.backlog, .reuse_port = true, .reuse_address = true};
        std::vector<tcp_listener> more;
        more.reserve(n - 1);
        for (std::size_t i = 1; i < n; ++i) more.push_back(tcp_listener::bind(m_local, lo));
        shards[0]->m_listener = std::move(m_listener);
        for (std::size_t i = 1; i < n; ++i) shards[i]->m_listener = std::move(more[i - 1]);
        for (auto& sh : shards) sh->m_accepts = true;
    } else {
        shards[home]->m_listener = std::move(m_listener);
        shards[home]->m_accepts = true;
        m_hand_off = n > 1;
    }
    m_acceptors_running.store(per_loop ? n : 1, std::memory_order_relaxed);
    m_shards = std::move(shards);
    m_shard_count.store(n, std::memory_order_release);
}

task<void> server_state::serve_one(std::shared_ptr<server_state> st) {
    if (!st) throw std::logic_error("hop::http::server::serve: the server is empty");
    st->begin_serve("hop::http::server::serve");
    // The server runs on the caller's loop (the default loop for a caller
    // on none); its listener and connections belong to that loop.
    io_loop& loop = this_thread_loop();
    st->make_shards({&loop}, 0);
    const std::stop_token token = co_await get_stop_token();
    future<void> running = loop.spawn(run_shard(st, st->m_shards[0].get()));
    std::stop_callback<shutdown_requester> link(token, shutdown_requester{st.get()});
    // Not a cancellation point: a stop asks for the graceful shutdown above,
    // and serve() returns once it is over.
    co_await std::move(running).await_with(hop::detail::stop_policy::ignore);
}

task<void> server_state::serve_pool(std::shared_ptr<server_state> st, io_pool& loops) {
    if (!st) throw std::logic_error("hop::http::server::serve: the server is empty");
    if (loops.stopping()) throw executor_shutdown_error("hop::http::server::serve: the io_pool is stopping");
    st->begin_serve("hop::http::server::serve");
    const std::size_t n = loops.size();
    std::vector<io_loop*> each(n);
    for (std::size_t i = 0; i < n; ++i) each[i] = &loops[i];
    // least_loaded's acceptor: on the caller's loop if it is one of the pool's.
    const std::size_t home = loops.this_loop() != nullptr ? loops.this_index() : 0;
    st->make_shards(each, home);
    const std::stop_token token = co_await get_stop_token();
    std::vector<future<void>> shards;
    std::exception_ptr failure;
    try {
        shards.reserve(n);
        for (std::size_t i = 0; i < n; ++i) shards.push_back(loops.spawn_on(i, pool_shard(st, st->m_shards[i].get())));
    } catch (...) {
        // The pool began to stop: the shards started shut down again.
        failure = std::current_exception();
        st->request_shutdown();
        for (std::size_t i = shards.size(); i < n; ++i) {
            if (st->m_shards[i]->m_accepts) st->acceptor_ended();
        }
    }
    std::stop_callback<shutdown_requester> link(token, shutdown_requester{st.get()});
    for (auto& f : shards) {
        try {
            co_await std::move(f).await_with(hop::detail::stop_policy::ignore);
        } catch (...) {
            if (!failure) failure = std::current_exception();
        }
    }
    if (failure) std::rethrow_exception(failure);
}

}  // namespace hop::http::detail
