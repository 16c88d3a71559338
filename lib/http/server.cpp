// hop::http::server: one coroutine per connection on its loop, a
// task_group per loop holding them, one accept loop (or one per loop), and
// a sweeper coroutine per loop that enforces every connection's deadline
// (no timer per read).
#include <hop/http/server.hpp>

#include "codec.hpp"
#include "h1_connection.hpp"

#include <hop/io_loop.hpp>
#include <hop/sync.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>

#include <sys/socket.h>

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

namespace hop::http {

namespace detail {

using clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// Read sizes: a connection waiting for its next request holds a small
// buffer (an idle keep-alive connection should cost little memory); one
// whose read filled the buffer reads in large pieces from then on.
constexpr std::size_t small_read = 1024;
constexpr std::size_t large_read = 16 * 1024;
// Pipelined responses are gathered into one write up to this size.
constexpr std::size_t max_pending_output = 64 * 1024;
// At max_connections, each shard closes at most this many idle connections
// per request for room (nginx drains 32 at a time).
constexpr std::size_t evict_batch = 16;
constexpr auto first_backoff = std::chrono::milliseconds(4);
constexpr auto max_backoff = std::chrono::seconds(1);

// "Sun, 06 Nov 1994 08:49:37 GMT", formatted once a second per thread.
std::string_view http_date() {
    thread_local std::time_t cached = -1;
    thread_local char text[40];
    thread_local std::size_t length = 0;
    const std::time_t now = std::time(nullptr);
    if (now != cached) {
        static constexpr const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
        static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        std::tm tm{};
        ::gmtime_r(&now, &tm);
        const int n = std::snprintf(text, sizeof text, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
                                    tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                                    tm.tm_sec);
        length = n > 0 ? static_cast<std::size_t>(n) : 0;
        cached = now;
    }
    return {text, length};
}

std::string ns_text(std::chrono::nanoseconds d) { return std::to_string(d.count()) + "ns"; }

// True if the comma-separated `value` holds `token` (case-insensitive).
bool has_token(std::string_view value, std::string_view token) {
    while (!value.empty()) {
        const auto comma = value.find(',');
        std::string_view item = value.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
        if (iequals(item, token)) return true;
        if (comma == std::string_view::npos) break;
        value.remove_prefix(comma + 1);
    }
    return false;
}

// RFC 3986 3.2.2 / RFC 9110 7.2: uri-host [ ":" port ], host not empty
// (an "http" URI has a host). IP-literals are checked for their alphabet.
bool valid_host(std::string_view v) {
    auto is_unreserved_or_sub = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               std::string_view("-._~!$&'()*+,;=").find(c) != std::string_view::npos;
    };
    auto is_hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); };
    std::size_t i = 0;
    if (!v.empty() && v.front() == '[') {
        const auto close = v.find(']');
        if (close == std::string_view::npos || close == 1) return false;
        for (char c : v.substr(1, close - 1)) {
            if (!is_unreserved_or_sub(c) && c != ':') return false;
        }
        i = close + 1;
    } else {
        for (; i < v.size() && v[i] != ':'; ++i) {
            if (v[i] == '%') {
                if (i + 2 >= v.size() || !is_hex(v[i + 1]) || !is_hex(v[i + 2])) return false;
                i += 2;
            } else if (!is_unreserved_or_sub(v[i])) {
                return false;
            }
        }
        if (i == 0) return false;
    }
    if (i == v.size()) return true;
    if (v[i] != ':') return false;
    for (char c : v.substr(i + 1)) {
        if (c < '0' || c > '9') return false;
    }
    return true;
}

// The first item of the comma-separated `list` that is not `token`
// (case-insensitive), or "".
std::string_view first_coding_not(std::string_view list, std::string_view token) {
    while (!list.empty()) {
        const auto comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
        if (!item.empty() && !iequals(item, token)) return item;
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
    return {};
}

// The RFC 9112 section 3 and 6 rules llhttp leaves to the server; 0 if the
// head passes, else the status to refuse it with (`why` says what). An
// absolute-form target is turned into origin-form, its authority put in Host
// (RFC 9112 3.2.2: the target's authority wins over the Host field).
int check_request_head(message_head& h, std::string& why) {
    const auto hosts = h.headers.get_all("Host");
    if (hosts.size() > 1) {
        why = "more than one Host field";
        return 400;
    }
    if (hosts.empty() && h.version_minor >= 1) {
        why = "an HTTP/1.1 request without a Host field";
        return 400;
    }
    if (!hosts.empty() && !valid_host(hosts.front())) {
        why = "the Host field '" + std::string(hosts.front()) + "' is not a host[:port]";
        return 400;
    }
    if (const auto codings = h.headers.get_all("Transfer-Encoding"); !codings.empty()) {
        const std::string_view te = codings.back();
        // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has
        // faulty framing; 6.3: chunked must be the last coding (400), and
        // a coding this server does not implement is 501.
        if (h.version_minor == 0) {
            why = "Transfer-Encoding in an HTTP/1.0 request";
            return 400;
        }
        if (!h.chunked) {
            why = "Transfer-Encoding '" + std::string(te) + "' does not end with chunked";
            return 400;
        }
        for (std::string_view list : codings) {
            const std::string_view other = first_coding_not(list, "chunked");
            if (!other.empty()) {
                why = "the transfer coding '" + std::string(other) + "' is not implemented";
                return 501;
            }
        }
    }
    std::string& target = h.target;
    if (h.method == "CONNECT") {
        why = "CONNECT: this server is not a proxy";
        return 400;
    }
    if (target == "*") {
        if (h.method == "OPTIONS") return 0;  // asterisk-form: the server as a whole
        why = "the target * is for OPTIONS only";
        return 400;
    }
    if (!target.empty() && target.front() == '/') return 0;  // origin-form
    // absolute-form: scheme "://" authority path-abempty [ "?" query ]
    const auto sep = target.find("://");
    const auto authority_end = sep == std::string::npos ? sep : target.find_first_of("/?#", sep + 3);
    const std::string_view authority = sep == std::string::npos
                                           ? std::string_view()
                                           : std::string_view(target).substr(sep + 3, authority_end == std::string::npos
                                                                                           ? std::string::npos
                                                                                           : authority_end - sep - 3);
    if (sep == std::string::npos || sep == 0 || !valid_host(authority)) {
        why = "the request target '" + target + "' is not origin-form or absolute-form";
        return 400;
    }
    std::string host(authority);
    std::string path = authority_end == std::string::npos ? std::string("/") : target.substr(authority_end);
    if (path.front() == '?') path.insert(0, "/");
    h.headers.set("Host", host);
    target = std::move(path);
    return 0;
}

clock::time_point saturating_add(clock::time_point t, std::chrono::nanoseconds d) {
    if (t > clock::time_point::max() - d) return clock::time_point::max();
    return t + std::chrono::duration_cast<clock::duration>(d);
}

}  // namespace

class server_connection;

// A connection's place in one of the sweeper's deadline lists.
struct deadline_node {
    deadline_node* prev = nullptr;
    deadline_node* next = nullptr;
    clock::time_point deadline{};
    server_connection* owner = nullptr;
};

// Deadlines in order, earliest first. Entries are added with "now + a fixed
// timeout", so an insert almost always goes to the tail; the scan from the
// tail keeps the order when it does not.
class deadline_list {
public:
    deadline_list() noexcept { m_head.prev = m_head.next = &m_head; }
    deadline_list(const deadline_list&) = delete;
    deadline_list& operator=(const deadline_list&) = delete;

    bool empty() const noexcept { return m_head.next == &m_head; }
    deadline_node* front() noexcept { return empty() ? nullptr : m_head.next; }
    // The entry after `n` (in this list), or null at the end.
    deadline_node* after(const deadline_node* n) noexcept { return n->next == &m_head ? nullptr : n->next; }
    void insert(deadline_node& n) noexcept {
        deadline_node* at = m_head.prev;
        while (at != &m_head && at->deadline > n.deadline) at = at->prev;
        n.prev = at;
        n.next = at->next;
        at->next->prev = &n;
        at->next = &n;
    }
    static void unlink(deadline_node& n) noexcept {
        if (n.prev == nullptr) return;
        n.prev->next = n.next;
        n.next->prev = n.prev;
        n.prev = n.next = nullptr;
    }

private:
    deadline_node m_head;
};

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
    deadline_list m_header_deadlines;  // header_timeout
    deadline_list m_idle_deadlines;    // idle_timeout: keep-alive, body progress, write progress
    deadline_list m_linger_deadlines;  // lingering_timeout: each read of a lingering close
    event m_sweeper_wake;
    event m_incoming_done;             // m_incoming reached 0 while draining
    server_connection* m_first = nullptr;  // every open connection
    bool m_draining = false;
    // When this shard's sweeper next flushes the log budget (max: never).
    clock::time_point m_log_flush_at = clock::time_point::max();

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

    // loop: puts `n` in `list` with its deadline `d` from now.
    void arm(deadline_list& list, deadline_node& n, std::chrono::nanoseconds d) {
        deadline_list::unlink(n);
        n.deadline = saturating_add(clock::now(), d);
        const bool was_empty = no_deadlines();
        list.insert(n);
        if (was_empty) m_sweeper_wake.set();
    }
    bool no_deadlines() const noexcept {
        return m_header_deadlines.empty() && m_idle_deadlines.empty() && m_linger_deadlines.empty();
    }
    void expire(deadline_list& list, clock::time_point now) noexcept;
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
    // count ("... and 1,999 more in the last 10 s").
    void flush_log_budget(clock::time_point now) noexcept;

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
    static task<void> sweep(std::shared_ptr<server_state> self, server_shard* sh);
    // The acceptor's loop: sends `s` to the shard chosen for it.
    void dispatch(const std::shared_ptr<server_state>& self, server_shard& here, std::size_t& turn, tcp_stream s);
};

// One client connection. Owned by its coroutine's frame (serve_connection);
// linked into the server's list of connections while it lives.
class server_connection {
public:
    enum class phase : std::uint8_t { handshake, idle, head, body, handler, linger };
    enum class stop_reason : std::uint8_t { none, timeout, shutdown, evicted };

    // On `sh`'s loop. The connection was counted (its slot and the
    // shard's load) when it was accepted; it gives both back when it ends.
    server_connection(std::shared_ptr<server_state> st, server_shard& sh, tcp_stream s) noexcept
        : m_st(std::move(st)),
          m_sh(&sh),
          m_h1(transport(std::move(s)), parser::kind::request,
               parser::limits{.max_header_bytes = m_st->m_options.max_header_bytes,
                              .max_body_bytes = m_st->m_options.max_body_bytes}) {
        m_deadline.owner = this;
        m_next = m_sh->m_first;
        if (m_next) m_next->m_prev = this;
        m_sh->m_first = this;
        try {
            m_h1.io.set_nodelay(true);
        } catch (const std::exception&) {
            // Reset before we got here: the first read says so.
        }
    }
    ~server_connection() {
        deadline_list::unlink(m_deadline);
        if (m_prev) m_prev->m_next = m_next;
        if (m_next) m_next->m_prev = m_prev;
        if (m_sh->m_first == this) m_sh->m_first = m_next;
        m_sh->m_load.fetch_sub(1, std::memory_order_relaxed);
        m_st->release_slot();
    }
    server_connection(const server_connection&) = delete;
    server_connection& operator=(const server_connection&) = delete;

    static task<void> serve_connection(std::unique_ptr<server_connection> self);

    // Ends the connection's coroutine at its next await (loop thread).
    void stop(stop_reason why) noexcept {
        if (m_stop_reason == stop_reason::none) m_stop_reason = why;
        try {
            if (m_future.valid()) m_future.cancel();
        } catch (...) {
        }
    }
    // No request begun: closed at once when the server drains.
    bool idle() const noexcept { return m_phase == phase::idle || m_phase == phase::handshake; }
    // Waiting for a request (not in a TLS handshake): may be evicted.
    bool waiting() const noexcept { return m_phase == phase::idle; }
    server_connection* next() const noexcept { return m_next; }

    task<void> writer_start(response_writer& w, int status, headers fields);
    task<void> writer_write(response_writer& w, std::string_view data);
    task<void> writer_flush(response_writer& w);
    task<void> writer_finish(response_writer& w);
    void writer_send_head(response_writer& w, bool empty);

    future<void> m_future;

private:
    task<int> request_loop();
    task<bool> await_request();
    bool enter_idle();
    task<bool> fill(parser& p);
    task<void> flush();
    task<bool> respond(request& req);
    void append_response(response& r);
    // The handler failed before its response started: log it, answer 500.
    void answer_500(const request& req, const std::string& failure);
    void append_error(int status, std::string_view text);
    task<void> answer_error(int status);
    void arm_idle() { m_sh->arm(m_sh->m_idle_deadlines, m_deadline, m_st->m_options.idle_timeout); }
    void disarm() noexcept { deadline_list::unlink(m_deadline); }
    void finish_head(headers& h, int status);

    task<bool> handshake();

    std::shared_ptr<server_state> m_st;
    server_shard* m_sh;                 // owned by *m_st
    h1_connection m_h1;
    server_connection* m_prev = nullptr;
    server_connection* m_next = nullptr;
    deadline_node m_deadline;
    std::string m_out;
    std::string m_error_text;
    std::size_t m_next_read = small_read;
    phase m_phase = phase::idle;
    stop_reason m_stop_reason = stop_reason::none;
    // The request being answered.
    int m_minor = 1;
    bool m_head_request = false;
    bool m_keep_alive = true;
    bool m_continue_pending = false;
    bool m_upgrade = false;
    bool m_header_armed = false;
    // No request head has arrived yet: header_timeout runs from the
    // accept (or the TLS handshake's start), first byte or not.
    bool m_fresh = true;
    // A write to the client failed (it reset or went away): a handler
    // failing because of it is not worth a log line.
    bool m_client_gone = false;
};

// ---------------------------------------------------------------------------
// connection

task<void> server_connection::serve_connection(std::unique_ptr<server_connection> self) {
    server_connection& c = *self;
    int error_status = 0;
    bool cancelled = false;
    try {
        if (!c.m_st->m_options.tls || co_await c.handshake()) error_status = co_await c.request_loop();
    } catch (const cancelled_error&) {
        cancelled = true;
    } catch (const std::exception&) {
        // The client reset or went away mid-write: nobody to answer.
    }
    if (cancelled && c.m_stop_reason == stop_reason::timeout &&
        (c.m_phase == phase::head || c.m_phase == phase::body)) {
        // Our token is stopped: no awaits are possible any more. The answer
        // is small and the send buffer empty (the client sends, it does not
        // read), so one non-blocking send delivers it.
        c.m_out.clear();
        c.append_error(408, "the request did not arrive in time");
        c.m_h1.io.try_write(c.m_out);
        c.m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    }
    if (error_status != 0) {
        try {
            co_await c.answer_error(error_status);
        } catch (const std::exception&) {
        }
    }
    if (cancelled) {
        c.m_h1.io.close();
    } else {
        // Over TLS close_notify, so the client can tell our close from a cut.
        co_await c.m_h1.io.close_gracefully();
    }
}

// https: the TLS handshake, under header_timeout. False: it failed (logged).
task<bool> server_connection::handshake() {
    m_phase = phase::handshake;
    m_sh->arm(m_sh->m_header_deadlines, m_deadline, m_st->m_options.header_timeout);
    std::string failure;
    try {
        co_await m_h1.io.start_tls_server(*m_st->m_options.tls);
    } catch (const tls::error& e) {
        failure = e.what();
    }
    m_phase = phase::idle;
    if (!failure.empty()) {
        disarm();
        m_st->log_limited(*m_sh, server_state::log_kind::tls_handshake,
                          "hop::http::server: TLS handshake failed: " + failure + " (connection closed)",
                          "TLS handshakes failed");
        co_return false;
    }
    // header_timeout goes on: the first request's head is due within it.
    m_header_armed = true;
    co_return true;
}

task<int> server_connection::request_loop() {
    parser& p = m_h1.parse;
    request req;
    for (;;) {
        parser::event ev = parser::event::need_more;
        int bad = 0;
        try {
            ev = m_h1.next_event();
        } catch (const parse_error& e) {
            bad = e.status();
            m_error_text = e.what();
        }
        if (bad != 0) co_return bad;
        switch (ev) {
            case parser::event::need_more: {
                if (!p.started() && m_h1.in.empty() && m_h1.io.cheap_readiness_wait()) {
                    // Between requests, nothing buffered: wait in a small
                    // frame, holding neither an input buffer nor fill's
                    // frame.
                    const bool open = co_await await_request();
                    if (!open) co_return 0;
                }
                const bool more = co_await fill(p);
                if (!more) co_return 0;
                break;
            }
            case parser::event::head: {
                disarm();
                m_header_armed = false;
                m_fresh = false;
                m_phase = phase::body;
                message_head& h = p.head();
                if (const int refused = check_request_head(h, m_error_text)) co_return refused;
                req.method = std::move(h.method);
                req.url = std::move(h.target);
                req.headers = std::move(h.headers);
                req.body.clear();
                m_minor = h.version_minor;
                m_upgrade = h.upgrade;
                if (h.content_length && *h.content_length > m_st->m_options.max_body_bytes) {
                    m_error_text = "Content-Length " + std::to_string(*h.content_length) + " is over max_body_bytes";
                    co_return 413;
                }
                m_continue_pending = h.expect_continue && (h.chunked || h.content_length.value_or(0) > 0);
                if (h.content_length && *h.content_length > 0) {
                    req.body.reserve(static_cast<std::size_t>(*h.content_length));
                }
                break;
            }
            case parser::event::body:
                req.body.append(p.body());
                break;
            case parser::event::message_end: {
                m_continue_pending = false;
                m_keep_alive = p.keep_alive() && !m_upgrade && !m_sh->m_draining;
                const bool keep = co_await respond(req);
                if (!keep) {
                    co_await flush();
                    co_return 0;
                }
                if (m_out.size() >= max_pending_output) co_await flush();
                req = request{};
                break;
            }
        }
    }
}

// A keep-alive connection waiting for its next request (plain http on
// epoll, no input left over): flushes what is pending, frees the input
// buffer and waits until the client sends, so an idle connection holds no
// read buffer (nginx frees its header buffer the same way). fill() then
// reads at once.
// False: the server drains and the connection ends here.
task<bool> server_connection::await_request() {
    if (!m_out.empty()) co_await flush();
    if (!enter_idle()) co_return false;
    m_h1.in.release();
    (void)co_await m_h1.io.wait_readable();
    co_return true;
}

// Between requests: hold as little as possible, and time the wait with
// idle_timeout. False: the server drains, so the connection ends here.
bool server_connection::enter_idle() {
    if (m_sh->m_draining) return false;
    // An acceptor waits at max_connections: a keep-alive connection makes
    // room rather than wait (a new one has its first request to come).
    if (!m_fresh && m_st->m_room_wanted.load(std::memory_order_relaxed)) return false;
    m_phase = phase::idle;
    m_h1.in.shrink(small_read);
    if (m_out.capacity() > small_read) std::string().swap(m_out);
    if (!m_fresh) {
        arm_idle();
    } else if (!m_header_armed) {
        // A new connection: its first head is due header_timeout after
        // the accept, whether or not a byte came.
        m_sh->arm(m_sh->m_header_deadlines, m_deadline, m_st->m_options.header_timeout);
        m_header_armed = true;
    }
    return true;
}

// Flushes what is pending, then reads more input. False: the connection
// ends here (end of stream, or the server drains and it is between
// requests).
task<bool> server_connection::fill(parser& p) {
    if (!m_out.empty()) co_await flush();
    std::size_t want = m_next_read;
    if (!p.started()) {
        if (!enter_idle()) co_return false;
        want = small_read;
        m_next_read = small_read;
    } else if (!p.in_message()) {
        m_phase = phase::head;
        if (!m_header_armed) {
            m_sh->arm(m_sh->m_header_deadlines, m_deadline, m_st->m_options.header_timeout);
            m_header_armed = true;
        }
    } else {
        m_phase = phase::body;
        if (m_continue_pending) {
            // The body is wanted and has not come: ask for it.
            m_continue_pending = false;
            m_out.append("HTTP/1.1 100 Continue\r\n\r\n");
            co_await flush();
        }
        arm_idle();
    }
    auto space = m_h1.in.space(want);
    const std::size_t n = co_await m_h1.io.read_some(space);
    const bool header_runs = m_phase == phase::head || (m_phase == phase::idle && m_fresh);
    if (!header_runs) disarm();
    if (n == 0) co_return false;
    m_h1.in.commit(n);
    if (n == space.size()) m_next_read = large_read;
    if (m_phase == phase::idle) {
        m_phase = phase::head;
        m_header_armed = m_fresh;
    }
    co_return true;
}

task<void> server_connection::flush() {
    std::size_t done = 0;
    const phase was = m_phase;
    while (done < m_out.size()) {
        // A client that does not read its response is timed by idle_timeout.
        arm_idle();
        std::size_t n = 0;
        try {
            n = co_await m_h1.io.write_some(std::string_view(m_out).substr(done));
        } catch (const cancelled_error&) {
            throw;
        } catch (const std::exception&) {
            m_client_gone = true;
            throw;
        }
        disarm();
        done += n;
    }
    m_phase = was;
    m_out.clear();
    if (m_header_armed && m_phase == phase::head) {
        m_sh->arm(m_sh->m_header_deadlines, m_deadline, m_st->m_options.header_timeout);
    }
}

// The fields every response carries; `h` is the handler's, changed in place.
void server_connection::finish_head(headers& h, int status) {
    // A shutdown that began while the handler ran: this is the last response.
    if (m_sh->m_draining) m_keep_alive = false;
    if (auto c = h.get("Connection"); c && has_token(*c, "close")) m_keep_alive = false;
    h.erase("Connection");
    if (!m_keep_alive) {
        h.add_unchecked("Connection", "close");
    } else if (m_minor == 0) {
        h.add_unchecked("Connection", "keep-alive");
    }
    if (!h.contains("Date")) h.add_unchecked("Date", std::string(http_date()));
    if (!m_st->m_options.server_header.empty() && !h.contains("Server")) {
        h.add_unchecked("Server", m_st->m_options.server_header);
    }
    write_response_head(m_out, status, h, 1);
}

void server_connection::append_response(response& r) {
    headers& h = r.headers;
    h.erase("Transfer-Encoding");
    const bool no_body = r.status == 204 || r.status == 304;
    if (r.status == 304) {
        // Content-Length, if the handler gave one, is what a GET would get.
    } else {
        h.erase("Content-Length");
        if (!no_body) h.add_unchecked("Content-Length", std::to_string(r.body.size()));
    }
    finish_head(h, r.status);
    if (!m_head_request && !no_body) m_out.append(r.body);
}

void server_connection::append_error(int status, std::string_view text) {
    m_keep_alive = false;
    std::string body(reason_phrase(status));
    body += ": ";
    body += text;
    body += '\n';
    headers h;
    h.add_unchecked("Content-Type", "text/plain; charset=utf-8");
    h.add_unchecked("Content-Length", std::to_string(body.size()));
    finish_head(h, status);
    if (!m_head_request) m_out += body;
}

// Answers a request the server refuses, then reads and drops what the
// client still sends (lingering_time, lingering_timeout) before the close,
// so the answer is not destroyed by a reset.
task<void> server_connection::answer_error(int status) {
    // Responses to requests pipelined before this one go out first.
    m_head_request = false;
    append_error(status, status == 413   ? "the body is over the server's limit"
                         : status == 414 ? "the request target is over the server's limit"
                         : status == 431 ? "the header fields are over the server's limit"
                         : status == 501 ? "the request uses a transfer coding this server does not implement"
                         : status == 505 ? "this server speaks HTTP/1.0 and HTTP/1.1"
                                         : "the request is malformed");
    m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    m_phase = phase::linger;
    co_await flush();
    // Lingering close, as nginx's: our end of output goes out after the
    // answer; the client may still be sending a body it did not wait to
    // send. Reading it until the client closes (bounded) keeps our close
    // from being a reset that would make the client's kernel drop the
    // answer unread. (Over TLS the transport does this itself while it
    // waits for the client's close_notify.)
    const server_options& o = m_st->m_options;
    if (!co_await m_h1.io.end_output(std::chrono::duration_cast<std::chrono::milliseconds>(o.lingering_time))) co_return;
    const auto until = saturating_add(clock::now(), o.lingering_time);
    m_h1.in.consume(m_h1.in.view().size());
    for (;;) {
        const auto now = clock::now();
        if (now >= until) break;
        // Each read waits at most lingering_timeout, and not past the total.
        m_sh->arm(m_sh->m_linger_deadlines, m_deadline,
                  std::min<std::chrono::nanoseconds>(o.lingering_timeout, until - now));
        const std::size_t n = co_await m_h1.io.read_some(m_h1.in.space(large_read));
        if (n == 0) break;
    }
    disarm();
}

namespace {

// What a handler's exception says in the log. A cancellation that the
// server's own stop caused is not a failure: it is rethrown.
std::string handler_failure(std::exception_ptr e, const std::stop_token& token) {
    try {
        std::rethrow_exception(e);
    } catch (const cancelled_error& c) {
        if (token.stop_requested()) throw;
        return std::string("threw hop::cancelled_error: ") + c.what();
    } catch (const std::exception& x) {
        return std::string("threw: ") + x.what();
    } catch (...) {
        return "threw an exception that is not a std::exception";
    }
}

}  // namespace

void server_connection::answer_500(const request& req, const std::string& failure) {
    m_st->log("hop::http::server: the handler for " + req.method + " " + req.url + " " + failure + ": answered 500");
    response r{.status = 500, .headers = {}, .body = "Internal Server Error\n"};
    r.headers.add_unchecked("Content-Type", "text/plain; charset=utf-8");
    append_response(r);
}

task<bool> server_connection::respond(request& req) {
    m_phase = phase::handler;
    m_head_request = req.method == "HEAD";
    const std::stop_token token = co_await get_stop_token();
    m_sh->m_requests.fetch_add(1, std::memory_order_relaxed);
    std::string failure;
    if (m_st->m_plain) {
        response r;
        try {
            task<response> t = m_st->m_plain(req);
            r = co_await std::move(t);
            if (r.status < 200 || r.status > 999) {
                failure = "returned status " + std::to_string(r.status) + " (a final status is 200-999)";
            }
        } catch (...) {
            failure = handler_failure(std::current_exception(), token);
        }
        if (failure.empty()) {
            append_response(r);
        } else {
            answer_500(req, failure);
        }
        co_return m_keep_alive;
    }

    response_writer w(*this);
    try {
        task<void> t = m_st->m_streaming(req, w);
        co_await std::move(t);
    } catch (...) {
        failure = handler_failure(std::current_exception(), token);
    }
    if (failure.empty() && !w.finished()) {
        try {
            co_await writer_finish(w);
        } catch (const cancelled_error&) {
            if (token.stop_requested()) throw;
            failure = "was cancelled";
        } catch (const std::system_error&) {
            throw;  // the client is gone
        } catch (const std::exception& e) {
            failure = std::string("left its response unfinished: ") + e.what();
        }
    }
    if (failure.empty()) co_return m_keep_alive;
    if (!w.started() || w.m_head_pending) {
        answer_500(req, failure);
        co_return m_keep_alive;
    }
    if (m_client_gone) {
        // The client went away mid-response: an everyday event, not logged.
        m_out.clear();
        m_keep_alive = false;
        co_return false;
    }
    m_st->log("hop::http::server: the handler for " + req.method + " " + req.url + " " + failure +
              " after its response started: connection closed");
    m_out.clear();
    m_keep_alive = false;
    co_return false;
}

// ---- response_writer's side ------------------------------------------------

task<void> server_connection::writer_start(response_writer& w, int status, headers fields) {
    using framing = response_writer::framing;
    // The handler may call from the CPU pool: the connection's state is the
    // loop's. The handler resumes on its own executor afterwards.
    co_await m_sh->m_loop->schedule();
    if (w.m_started) throw std::logic_error("hop::http::response_writer::start: the head was sent already");
    if (status < 200 || status > 999) {
        throw std::invalid_argument("hop::http::response_writer::start: status " + std::to_string(status) +
                                    " is not a final status (200-999)");
    }
    const auto lengths = fields.get_all("Content-Length");
    std::optional<std::uint64_t> length;
    for (std::string_view v : lengths) {
        std::uint64_t n = 0;
        const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (v.empty() || ec != std::errc() || end != v.data() + v.size() || (length && *length != n)) {
            throw std::invalid_argument("hop::http::response_writer::start: Content-Length '" + std::string(v) +
                                        "' is not one decimal number");
        }
        length = n;
    }
    fields.erase("Transfer-Encoding");
    fields.erase("Content-Length");
    const bool no_body_status = status == 204 || status == 304;
    framing f;
    if (length) {
        if (status != 204) fields.add_unchecked("Content-Length", std::to_string(*length));
        f = framing::length;
        w.m_remaining = *length;
    } else if (no_body_status) {
        f = framing::none;
    } else {
        f = m_minor >= 1 ? framing::chunked : framing::until_close;
        // HEAD: the head a GET that writes a body would get.
        if (m_head_request && f == framing::chunked) fields.add_unchecked("Transfer-Encoding", "chunked");
    }
    if (m_head_request || no_body_status) f = framing::none;
    w.m_framing = f;
    w.m_started = true;
    if (f == framing::chunked || f == framing::until_close) {
        // The length is not known yet: if the response ends before its
        // first byte, it is 0 and needs no chunking (nor a close for 1.0).
        w.m_head_pending = true;
        w.m_pending_status = status;
        w.m_pending_fields = std::move(fields);
        co_return;
    }
    finish_head(fields, status);
    co_await flush();
}

// The head start() held back, framed now that the first byte comes
// (`empty`: the response ended without one).
void server_connection::writer_send_head(response_writer& w, bool empty) {
    using framing = response_writer::framing;
    w.m_head_pending = false;
    headers fields = std::move(w.m_pending_fields);
    if (empty) {
        fields.add_unchecked("Content-Length", "0");
        w.m_framing = framing::length;
        w.m_remaining = 0;
    } else if (w.m_framing == framing::chunked) {
        fields.add_unchecked("Transfer-Encoding", "chunked");
    } else {
        m_keep_alive = false;  // HTTP/1.0: the body ends with the connection
    }
    finish_head(fields, w.m_pending_status);
}

task<void> server_connection::writer_write(response_writer& w, std::string_view data) {
    using framing = response_writer::framing;
    co_await m_sh->m_loop->schedule();
    if (w.m_finished) throw std::logic_error("hop::http::response_writer::write: called after finish()");
    if (!w.m_started) co_await writer_start(w, 200, headers{});
    if (data.empty()) co_return;
    if (w.m_head_pending) writer_send_head(w, false);  // goes out with this first piece
    switch (w.m_framing) {
        case framing::none:
            co_return;
        case framing::length:
            if (data.size() > w.m_remaining) {
                throw std::logic_error("hop::http::response_writer::write: " + std::to_string(data.size()) +
                                       " bytes, but only " + std::to_string(w.m_remaining) +
                                       " are left of the Content-Length");
            }
            w.m_remaining -= data.size();
            m_out.append(data);
            break;
        case framing::chunked:
            write_chunk_header(m_out, data.size());
            m_out.append(data);
            m_out.append("\r\n");
            break;
        case framing::until_close:
            m_out.append(data);
            break;
    }
    co_await flush();
}

task<void> server_connection::writer_flush(response_writer& w) {
    co_await m_sh->m_loop->schedule();
    if (w.m_finished) co_return;
    if (!w.m_started) co_await writer_start(w, 200, headers{});
    if (!w.m_head_pending) co_return;
    writer_send_head(w, false);
    co_await flush();
}

task<void> server_connection::writer_finish(response_writer& w) {
    using framing = response_writer::framing;
    co_await m_sh->m_loop->schedule();
    if (w.m_finished) co_return;
    if (!w.m_started) {
        headers h;
        h.add_unchecked("Content-Length", "0");
        co_await writer_start(w, 200, std::move(h));
    }
    w.m_finished = true;
    if (w.m_head_pending) {
        writer_send_head(w, true);
        co_await flush();
        co_return;
    }
    if (w.m_framing == framing::chunked) {
        m_out.append(last_chunk);
        co_await flush();
    } else if (w.m_framing == framing::length && w.m_remaining != 0) {
        m_keep_alive = false;
        throw std::logic_error("hop::http::response_writer::finish: " + std::to_string(w.m_remaining) +
                               " bytes of the Content-Length were never written");
    }
}

// ---------------------------------------------------------------------------
// server

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

void server_shard::expire(deadline_list& list, clock::time_point now) noexcept {
    while (deadline_node* n = list.front()) {
        if (n->deadline > now) break;
        deadline_list::unlink(*n);
        n->owner->stop(server_connection::stop_reason::timeout);
    }
}

std::size_t server_shard::evict_idle(std::size_t n, std::chrono::nanoseconds idle_timeout,
                                     std::chrono::nanoseconds header_timeout) noexcept {
    // The longest-waiting first: the front of each list waited longest of
    // those in it (each list's entries are "since + a fixed timeout").
    // Entries of connections that do not wait for a request (a body, a
    // response being written) are passed over.
    std::size_t closed = 0;
    deadline_node* idle = m_idle_deadlines.front();
    deadline_node* fresh = m_header_deadlines.front();
    auto next_waiting = [](deadline_node* at, deadline_list& list) -> deadline_node* {
        while (at != nullptr && !at->owner->waiting()) at = list.after(at);
        return at;
    };
    idle = next_waiting(idle, m_idle_deadlines);
    fresh = next_waiting(fresh, m_header_deadlines);
    while (closed < n && (idle != nullptr || fresh != nullptr)) {
        bool take_idle = fresh == nullptr;
        if (idle != nullptr && fresh != nullptr) {
            take_idle = idle->deadline - idle_timeout <= fresh->deadline - header_timeout;
        }
        deadline_node*& pick = take_idle ? idle : fresh;
        deadline_list& list = take_idle ? m_idle_deadlines : m_header_deadlines;
        deadline_node* victim = pick;
        pick = next_waiting(list.after(victim), list);
        deadline_list::unlink(*victim);
        victim->owner->stop(server_connection::stop_reason::evicted);
        ++closed;
    }
    return closed;
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
    if (first) {
        // This shard's sweeper writes the count when the window ends.
        sh.m_log_flush_at = std::min(sh.m_log_flush_at, saturating_add(now, m_options.log_interval));
        sh.m_sweeper_wake.set();
    }
}

std::string server_state::summary(const log_window& w) const {
    return "hop::http::server: " + w.what + ": ... and " + with_commas(w.more) + " more in the last " +
           interval_text(m_options.log_interval);
}

void server_state::flush_log_budget(clock::time_point now) noexcept {
    std::lock_guard lock(m_log_mutex);
    for (auto& w : m_windows) {
        if (!w.open || now < w.end) continue;
        if (w.more != 0) emit(summary(w));
        w.open = false;
        w.more = 0;
    }
}

task<void> server_state::sweep(std::shared_ptr<server_state> self, server_shard* sh) {
    server_shard& here = *sh;
    // Nothing is added with a deadline sooner than now + the shorter
    // timeout, so a sleep never longer than that misses none.
    // (A lingering read's deadline may be sooner, at the end of
    // lingering_time: it then ends up to that much late.)
    const auto longest_sleep = std::min({self->m_options.header_timeout, self->m_options.idle_timeout,
                                         self->m_options.lingering_timeout});
    for (;;) {
        const auto now = clock::now();
        here.expire(here.m_header_deadlines, now);
        here.expire(here.m_idle_deadlines, now);
        here.expire(here.m_linger_deadlines, now);
        if (here.m_log_flush_at <= now) {
            here.m_log_flush_at = clock::time_point::max();
            self->flush_log_budget(now);
        }
        if (here.no_deadlines() && here.m_log_flush_at == clock::time_point::max()) {
            here.m_sweeper_wake.reset();
            co_await here.m_sweeper_wake.wait();
            continue;
        }
        auto until = std::min(saturating_add(now, longest_sleep), here.m_log_flush_at);
        if (auto* n = here.m_header_deadlines.front()) until = std::min(until, n->deadline);
        if (auto* n = here.m_idle_deadlines.front()) until = std::min(until, n->deadline);
        if (auto* n = here.m_linger_deadlines.front()) until = std::min(until, n->deadline);
        co_await sleep_until(until);
    }
}

// One shard's whole life, on its loop, under a stop token nobody requests
// (the shutdown comes through m_drain).
task<void> server_state::run_shard(std::shared_ptr<server_state> self, server_shard* sh) {
    server_state& st = *self;
    server_shard& here = *sh;
    future<void> sweeper = here.m_loop->spawn(sweep(self, sh));
    std::exception_ptr fatal;
    if (here.m_accepts) {
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
    sweeper.cancel();
    try {
        co_await sweeper;
    } catch (const cancelled_error&) {
    }
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

namespace {

void validate(const server_options& o) {
    const char* where = "hop::http::server::bind: ";
    if (o.max_connections == 0) {
        throw std::invalid_argument(std::string(where) + "max_connections is 0: at least 1 connection is needed");
    }
    if (o.max_header_bytes == 0) {
        throw std::invalid_argument(std::string(where) + "max_header_bytes is 0: no request head fits");
    }
    auto require_positive = [&](const char* name, std::chrono::nanoseconds d) {
        if (d <= std::chrono::nanoseconds::zero()) {
            throw std::invalid_argument(std::string(where) + name + " is " + ns_text(d) + ": it must be positive");
        }
    };
    require_positive("header_timeout", o.header_timeout);
    require_positive("idle_timeout", o.idle_timeout);
    require_positive("lingering_time", o.lingering_time);
    require_positive("lingering_timeout", o.lingering_timeout);
    require_positive("log_interval", o.log_interval);
    if (o.shutdown_grace < std::chrono::nanoseconds::zero()) {
        throw std::invalid_argument(std::string(where) + "shutdown_grace is " + ns_text(o.shutdown_grace) +
                                    ": it must not be negative");
    }
    if (o.backlog < 1) {
        throw std::invalid_argument(std::string(where) + "backlog is " + std::to_string(o.backlog) +
                                    ": it must be at least 1");
    }
    if (o.accept != accept_mode::least_loaded && o.accept != accept_mode::reuse_port) {
        throw std::invalid_argument(std::string(where) + "accept is " + std::to_string(static_cast<int>(o.accept)) +
                                    ": it must be hop::accept_mode::least_loaded or reuse_port");
    }
    if (o.tls && !o.tls->is_server()) {
        throw std::invalid_argument(std::string(where) +
                                    "tls is a client context: use hop::tls::context::server(cert, key)");
    }
}

std::shared_ptr<server_state> make_state(const endpoint& local, server_options options) {
    validate(options);
    // This server speaks HTTP/1.1 only: that is what it agrees to in ALPN.
    if (options.tls) options.tls->set_alpn({"http/1.1"});
    // reuse_port: serve(io_pool&) binds more listeners to the same port.
    const listen_options lo{.backlog = options.backlog,
                            .reuse_port = options.reuse_port || options.accept == accept_mode::reuse_port,
                            .reuse_address = true};
    auto st = std::make_shared<server_state>(std::move(options));
    st->m_listener = tcp_listener::bind(local, lo);
    st->m_local = st->m_listener.local_endpoint();
    return st;
}

}  // namespace

}  // namespace detail

// ---- response_writer --------------------------------------------------------

task<void> response_writer::start(int status, headers fields) {
    return m_conn->writer_start(*this, status, std::move(fields));
}
task<void> response_writer::write(std::string_view data) { return m_conn->writer_write(*this, data); }
task<void> response_writer::flush() { return m_conn->writer_flush(*this); }
task<void> response_writer::finish() { return m_conn->writer_finish(*this); }

// ---- server -------------------------------------------------------------------

server server::bind_plain(const endpoint& local, handler h, server_options options) {
    if (!h) throw std::invalid_argument("hop::http::server::bind: the handler is empty");
    auto st = detail::make_state(local, std::move(options));
    st->m_plain = std::move(h);
    return server(std::move(st));
}

server server::bind_streaming(const endpoint& local, stream_handler h, server_options options) {
    if (!h) throw std::invalid_argument("hop::http::server::bind: the handler is empty");
    auto st = detail::make_state(local, std::move(options));
    st->m_streaming = std::move(h);
    return server(std::move(st));
}

server& server::operator=(server&& other) noexcept {
    if (this != &other) {
        if (m_state) m_state->request_shutdown();
        m_state = std::move(other.m_state);
    }
    return *this;
}

server::~server() {
    if (m_state) m_state->request_shutdown();
}

endpoint server::local_endpoint() const {
    if (!m_state) throw std::logic_error("hop::http::server::local_endpoint: the server is empty");
    return m_state->m_local;
}

task<void> server::serve() { return detail::server_state::serve_one(m_state); }

task<void> server::serve(io_pool& loops) { return detail::server_state::serve_pool(m_state, loops); }

void server::shutdown() noexcept {
    if (m_state) m_state->request_shutdown();
}

server_stats server::stats() const noexcept {
    server_stats s;
    if (!m_state) return s;
    const std::size_t n = m_state->m_shard_count.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
        const detail::server_shard& sh = *m_state->m_shards[i];
        s.connections += sh.m_load.load(std::memory_order_relaxed);
        s.accepted += sh.m_accepted.load(std::memory_order_relaxed);
        s.requests += sh.m_requests.load(std::memory_order_relaxed);
        s.accept_failures += sh.m_accept_failures.load(std::memory_order_relaxed);
    }
    return s;
}

}  // namespace hop::http
