// hop::http::client's pool, its per-loop agents and its name cache (see
// client_pool.hpp for the shape and the lock order).

#include "client_pool.hpp"

#include "../metrics_impl.hpp"

#include <hop/time.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace hop::http::detail {

namespace {
constexpr auto name_ttl = std::chrono::seconds(30);
constexpr std::size_t max_names = 256;
}  // namespace

// ---- request_timers ---------------------------------------------------------------

request_timers::~request_timers() {
    deadline_queue::disarm(phase);
    deadline_queue::disarm(total);
}

void request_timers::arm_phase(timeout_kind k, std::chrono::milliseconds d) {
    if (!agent || d.count() <= 0) {
        deadline_queue::disarm(phase);
        return;
    }
    if (k == timeout_kind::read) progress();
    phase.kind = k;
    agent->queue(k).arm(phase);
}

void request_timers::disarm_phase() noexcept { deadline_queue::disarm(phase); }

void request_timers::arm_total(clock::time_point deadline) {
    if (!agent) return;
    total.kind = timeout_kind::total;
    agent->queue(timeout_kind::total).arm_at(total, deadline);
}

void request_timers::disarm_total() noexcept { deadline_queue::disarm(total); }

void request_timers::entry::expired(bool loop_closing) noexcept {
    if (loop_closing) return;  // the loop cancels the request itself
    if (kind == timeout_kind::read) {
        // A read timeout counts from the last progress, which the request
        // records without arming anything.
        deadline_queue& q = owner->agent->queue(timeout_kind::read);
        const clock::time_point last{clock::duration{owner->last_progress.load(std::memory_order_relaxed)}};
        const auto again = saturating_add(last, q.duration());
        if (again > clock::now()) {
            try {
                q.arm_at(*this, again);
                return;
            } catch (...) {
                // Cannot happen (arming allocates nothing); fire instead.
            }
        }
    }
    auto none = timeout_kind::none;
    owner->fired.compare_exchange_strong(none, kind, std::memory_order_acq_rel);
    // May end the request (and free this entry): the last use of `this`.
    std::stop_source stop = owner->stop;
    stop.request_stop();
}

// ---- loop_agent ----------------------------------------------------------------------

loop_agent::loop_agent(std::shared_ptr<deadline_service> service, const client_options& o,
                       std::weak_ptr<client_state> st)
    : m_state(std::move(st)),
      m_pool(service, o.pool_timeout),
      m_connect(service, o.connect_timeout),
      m_read(service, o.read_timeout),
      m_total(service, o.total_timeout),
      m_idle(service, o.idle_timeout) {
    m_sweep.agent = this;
    m_idle.arm_at(m_sweep, clock::time_point::max());
}

loop_agent::~loop_agent() { deadline_queue::disarm(m_sweep); }

deadline_queue& loop_agent::queue(timeout_kind k) noexcept {
    switch (k) {
        case timeout_kind::pool:
            return m_pool;
        case timeout_kind::connect:
            return m_connect;
        case timeout_kind::read:
            return m_read;
        case timeout_kind::total:
        case timeout_kind::none:
            break;
    }
    return m_total;
}

void loop_agent::note_idle_deadline(clock::time_point t) { m_idle.arm_earlier(m_sweep, t); }

void loop_agent::stop() noexcept { deadline_queue::disarm(m_sweep); }

void loop_agent::idle_sweep::expired(bool loop_closing) noexcept {
    auto st = agent->m_state.lock();
    if (!st) return;
    if (loop_closing) {
        st->drop_loop(agent->loop(), agent);
        return;
    }
    const clock::time_point next = st->sweep_idle(agent->loop());
    try {
        agent->m_idle.arm_earlier(*this, next);
    } catch (...) {
    }
}

// ---- connection ------------------------------------------------------------------------

connection::connection(transport t, const pool_key& k, std::size_t max_header_bytes)
    : h1_connection(std::move(t), parser::kind::response,
                    parser::limits{max_header_bytes, std::numeric_limits<std::uint64_t>::max()}),
      key(k) {}

bool still_open(int fd) noexcept {
    char b;
    const ssize_t r = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    return false;  // 0: the server closed it; > 0: bytes nobody asked for
}

// ---- pool_wait ----------------------------------------------------------------------------

pool_wait::~pool_wait() {
    if (conn) m_state->discard(std::move(conn));
    if (slot) m_state->release_slot(m_key->origin);
}

void pool_wait::await_resume() {
    finish_wait();
    if (closed) {
        throw std::logic_error("hop::http::client: the client was destroyed while a request waited for a connection");
    }
}

std::mutex& pool_wait::mutex() noexcept { return m_state->m_mutex; }
hop::detail::waiter_list& pool_wait::list() noexcept { return m_state->m_waiters; }
bool pool_wait::try_complete(hop::detail::list_waiter*&) { return m_state->try_acquire_locked(*this); }

// ---- client_state -----------------------------------------------------------------------

client_state::client_state(client_options o)
    : opts(std::move(o)), proxies(proxy_table::make(opts.proxy, opts.no_proxy, opts.trust_env)) {}

tls::context client_state::tls_context() {
    if (opts.tls) return *opts.tls;
    std::call_once(m_tls_once, [this] {
        auto c = tls::context::client();
        c.set_alpn({"http/1.1"});
        m_default_tls.emplace(std::move(c));
    });
    return *m_default_tls;
}

std::shared_ptr<loop_agent> client_state::agent_for(io_loop& loop) {
    std::lock_guard lock(m_mutex);
    auto it = m_agents.find(&loop);
    if (it != m_agents.end()) return it->second;
    if (m_closed || hop::detail::loop_closing(loop)) return nullptr;
    auto service = deadline_service::of(loop);
    if (!service) return nullptr;  // the loop is being destroyed
    auto agent = std::make_shared<loop_agent>(std::move(service), opts, weak_from_this());
    m_agents.emplace(&loop, agent);
    return agent;
}

bool client_state::try_acquire(pool_wait& w) {
    std::lock_guard lock(m_mutex);
    return try_acquire_locked(w);
}

bool client_state::try_acquire_locked(pool_wait& w) {
    if (m_closed) {
        w.closed = true;
        return true;
    }
    if (!w.force_new()) {
        auto it = m_idle.find(w.key());
        if (it != m_idle.end() && !it->second.empty()) {
            // The most recently used: the least likely to have been closed.
            w.conn = std::move(it->second.back());
            it->second.pop_back();
            --m_idle_count;
            w.from_idle = true;
            return true;
        }
    }
    if (take_slot_locked(w.key().origin)) {
        w.slot = true;
        return true;
    }
    return false;
}

std::size_t client_state::host_open_locked(const std::string& origin) const noexcept {
    auto it = m_host_open.find(origin);
    return it == m_host_open.end() ? 0 : it->second;
}

bool client_state::take_slot_locked(const std::string& origin) {
    const std::size_t per_host = opts.max_connections_per_host;
    auto host_ok = [&] { return per_host == 0 || host_open_locked(origin) < per_host; };
    if (!(host_ok() && m_open < opts.max_connections)) {
        // Make room: close the oldest idle connection that frees what is
        // missing (one to this host if its cap is the limit, else any).
        const bool need_same_host = !host_ok();
        idle_list* oldest = nullptr;
        for (auto& [k, list] : m_idle) {
            if (list.empty() || (need_same_host && k.origin != origin)) continue;
            if (!oldest || list.front()->idle_since < oldest->front()->idle_since) oldest = &list;
        }
        if (!oldest) return false;
        std::unique_ptr<connection> victim = std::move(oldest->front());
        oldest->erase(oldest->begin());
        --m_idle_count;
        close_locked(std::move(victim));
        if (!(host_ok() && m_open < opts.max_connections)) return false;
    }
    ++m_open;
    ++m_host_open[origin];
    return true;
}

// Closing under the pool's lock is what keeps a connection of another loop
// safe to close: that loop's agent drops the loop's idle connections under
// this lock before the loop goes, so a loop whose connection is in the pool
// is alive while the lock is held. An idle connection has no operation in
// flight, so closing it resumes nobody.
void client_state::close_locked(std::unique_ptr<connection> c) noexcept {
    --m_open;
    auto it = m_host_open.find(c->key.origin);
    if (it != m_host_open.end() && --it->second == 0) m_host_open.erase(it);
    c->close();
    c.reset();
}

void client_state::grant_locked(hop::detail::wake_list& wakes) {
    for (hop::detail::list_waiter* w = m_waiters.front(); w != nullptr;) {
        hop::detail::list_waiter* next = w->next_waiter;
        pool_wait* pw = pool_wait::from(w);
        bool granted = false;
        if (!pw->force_new()) {
            auto it = m_idle.find(pw->key());
            if (it != m_idle.end() && !it->second.empty()) {
                pw->conn = std::move(it->second.back());
                it->second.pop_back();
                --m_idle_count;
                pw->from_idle = true;
                granted = true;
            }
        }
        if (!granted && take_slot_locked(pw->key().origin)) {
            pw->slot = true;
            granted = true;
        }
        if (granted) {
            m_waiters.erase(w);
            wakes.push_back(w);
        } else if (m_open >= opts.max_connections && m_idle_count == 0) {
            break;  // nobody after this one can be served either
        }
        w = next;
    }
}

bool client_state::waiter_could_use_locked(const std::string& freed_origin) const {
    const std::size_t per_host = opts.max_connections_per_host;
    for (const hop::detail::list_waiter* w = m_waiters.front(); w != nullptr; w = w->next_waiter) {
        const pool_wait* pw = pool_wait::from(const_cast<hop::detail::list_waiter*>(w));
        if (per_host == 0) return true;
        std::size_t n = host_open_locked(pw->key().origin);
        if (pw->key().origin == freed_origin) --n;
        if (n < per_host) return true;
    }
    return false;
}

void client_state::release(std::unique_ptr<connection> c) {
    hop::detail::wake_list wakes;  // woken after the lock is released
    std::shared_ptr<loop_agent> agent;
    clock::time_point expires{};
    {
        std::lock_guard lock(m_mutex);
        if (m_closed || hop::detail::loop_closing(*c->key.loop)) {
            close_locked(std::move(c));
            grant_locked(wakes);
            return;
        }
        for (hop::detail::list_waiter* w = m_waiters.front(); w != nullptr; w = w->next_waiter) {
            pool_wait* pw = pool_wait::from(w);
            if (!pw->force_new() && pw->key() == c->key) {
                m_waiters.erase(w);
                pw->conn = std::move(c);
                pw->from_idle = false;
                wakes.push_back(w);
                return;
            }
        }
        auto it = m_agents.find(c->key.loop);
        if (it == m_agents.end() || (!m_waiters.empty() && waiter_could_use_locked(c->key.origin))) {
            // Nobody watches idle connections on that loop, or a request
            // for another host waits for this slot.
            close_locked(std::move(c));
            grant_locked(wakes);
            return;
        }
        agent = it->second;
        c->in.release();  // an idle connection holds no input buffer
        c->idle_since = clock::now();
        expires = c->idle_since + opts.idle_timeout;
        m_idle[c->key].push_back(std::move(c));
        ++m_idle_count;
    }
    if (opts.idle_timeout.count() > 0) agent->note_idle_deadline(expires);
}

void client_state::discard(std::unique_ptr<connection> c) noexcept {
    if (!c) return;
    hop::detail::wake_list wakes;
    std::lock_guard lock(m_mutex);
    close_locked(std::move(c));
    grant_locked(wakes);
}

void client_state::release_slot(const std::string& origin) noexcept {
    hop::detail::wake_list wakes;
    std::lock_guard lock(m_mutex);
    --m_open;
    auto it = m_host_open.find(origin);
    if (it != m_host_open.end() && --it->second == 0) m_host_open.erase(it);
    grant_locked(wakes);
}

void client_state::shut_down() noexcept {
    std::vector<std::shared_ptr<loop_agent>> agents;
    {
        hop::detail::wake_list wakes;
        std::lock_guard lock(m_mutex);
        m_closed = true;
        for (auto& [k, list] : m_idle) {
            for (auto& c : list) close_locked(std::move(c));
        }
        m_idle.clear();
        m_idle_count = 0;
        while (hop::detail::list_waiter* w = m_waiters.pop_front()) {
            pool_wait::from(w)->closed = true;
            wakes.push_back(w);
        }
        for (auto& [loop, agent] : m_agents) agents.push_back(agent);
    }
    for (auto& a : agents) a->stop();
}

client_stats client_state::stats() const {
    client_stats s;
    std::lock_guard lock(m_mutex);
    s.open = m_open;
    s.idle = m_idle_count;
    for (const hop::detail::list_waiter* w = m_waiters.front(); w != nullptr; w = w->next_waiter) ++s.waiting;
    s.connects = connects.load(std::memory_order_relaxed);
    s.reuses = reuses.load(std::memory_order_relaxed);
    s.retries = retries.load(std::memory_order_relaxed);
    s.tls_resumed = tls_resumed.load(std::memory_order_relaxed);
    return s;
}

clock::time_point client_state::sweep_idle(io_loop& loop) {
    hop::detail::wake_list wakes;
    clock::time_point next = clock::time_point::max();
    std::lock_guard lock(m_mutex);
    const auto now = clock::now();
    const auto timeout = opts.idle_timeout;
    bool closed_any = false;
    for (auto it = m_idle.begin(); it != m_idle.end();) {
        if (it->first.loop != &loop) {
            ++it;
            continue;
        }
        idle_list& list = it->second;
        for (std::size_t i = 0; i < list.size();) {
            connection& c = *list[i];
            const bool expired = timeout.count() > 0 && c.idle_since + timeout <= now;
            if (expired || !still_open(c.fd())) {
                close_locked(std::move(list[i]));
                list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
                --m_idle_count;
                closed_any = true;
                continue;
            }
            if (timeout.count() > 0) next = std::min(next, c.idle_since + timeout);
            ++i;
        }
        // Keys of hosts no longer used go (a crawler meets many hosts); a
        // busy key stays, so its list is not made again for every request.
        if (list.empty()) {
            it = m_idle.erase(it);
        } else {
            ++it;
        }
    }
    if (closed_any) grant_locked(wakes);
    return next;
}

void client_state::drop_loop(io_loop& loop, const loop_agent* agent) noexcept {
    hop::detail::wake_list wakes;
    std::lock_guard lock(m_mutex);
    auto a = m_agents.find(&loop);
    if (a != m_agents.end() && a->second.get() == agent) m_agents.erase(a);
    for (auto it = m_idle.begin(); it != m_idle.end();) {
        if (it->first.loop != &loop) {
            ++it;
            continue;
        }
        for (auto& c : it->second) {
            close_locked(std::move(c));
            --m_idle_count;
        }
        it = m_idle.erase(it);
    }
    grant_locked(wakes);
}

future<std::vector<endpoint>> client_state::lookup(const std::string& host, std::uint16_t port) {
    std::string key = host;
    key += ':';
    key += std::to_string(port);
    const auto now = clock::now();
    std::lock_guard lock(m_names_mutex);
    auto it = m_names.find(key);
    if (it != m_names.end()) {
        const auto& e = it->second;
        const bool failed = e.lookup.done() && e.lookup.native_state()->error() != nullptr;
        if (!failed && now - e.made < name_ttl) return e.lookup;
        m_names.erase(it);
    }
    if (m_names.size() >= max_names) {
        std::erase_if(m_names, [&](const auto& kv) { return now - kv.second.made >= name_ttl; });
        if (m_names.size() >= max_names) m_names.clear();
    }
    auto f = hop::detail::resolve_blocking(host, port);
    m_names.emplace(std::move(key), name_entry{f, now});
    return f;
}

void client_state::forget_lookup(const std::string& host, std::uint16_t port, const future<std::vector<endpoint>>& f) {
    std::string key = host;
    key += ':';
    key += std::to_string(port);
    std::lock_guard lock(m_names_mutex);
    auto it = m_names.find(key);
    if (it != m_names.end() && it->second.lookup.native_state() == f.native_state()) m_names.erase(it);
}

// ---- hop::metrics ---------------------------------------------------------------------------

namespace {
struct client_list {
    std::mutex mutex;
    std::vector<const client_state*> live;
    hop::detail::http_client_counts gone;  // the counters of clients destroyed
};
client_list& clients() {
    static auto* l = new client_list;  // never destroyed: clients may outlive static destruction
    return *l;
}
}  // namespace

metrics_listing::metrics_listing(const client_state* s) : m_state(s) {
    auto& l = clients();
    std::lock_guard lock(l.mutex);
    l.live.push_back(s);
}

metrics_listing::~metrics_listing() {
    auto& l = clients();
    std::lock_guard lock(l.mutex);
    l.gone.connects += m_state->connects.load(std::memory_order_relaxed);
    l.gone.reuses += m_state->reuses.load(std::memory_order_relaxed);
    l.gone.retries += m_state->retries.load(std::memory_order_relaxed);
    std::erase(l.live, m_state);
}

void count_client_failure(std::exception_ptr e) noexcept {
    std::size_t kind = 9;  // other (the order of hop::detail::client_error_kinds)
    try {
        std::rethrow_exception(std::move(e));
    } catch (const pool_timeout&) {
        kind = 0;
    } catch (const connect_timeout&) {
        kind = 1;
    } catch (const read_timeout&) {
        kind = 2;
    } catch (const timeout_error&) {
        kind = 3;
    } catch (const cancelled_error&) {
        kind = 4;
    } catch (const tls::error&) {
        kind = 5;
    } catch (const protocol_error&) {
        kind = 6;
    } catch (const redirect_error&) {
        kind = 7;
    } catch (const std::system_error&) {
        kind = 8;
    } catch (...) {
    }
    hop::detail::count_client_error(kind);
}

}  // namespace hop::http::detail

// Lock order: the list's mutex, then each client's (stats()).
hop::detail::http_client_counts hop::detail::read_http_clients() {
    auto& l = http::detail::clients();
    std::lock_guard lock(l.mutex);
    http_client_counts c = l.gone;
    for (const http::detail::client_state* st : l.live) {
        const http::client_stats s = st->stats();
        c.open += s.open;
        c.idle += s.idle;
        c.waiting += s.waiting;
        c.connects += s.connects;
        c.reuses += s.reuses;
        c.retries += s.retries;
    }
    return c;
}
