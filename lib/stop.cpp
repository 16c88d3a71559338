// lazy_stop_source: the parts that allocate or link, out of line.

#include <hop/detail/stop.hpp>

#include <hop/detail/assert.hpp>

#include <thread>

namespace hop::detail {

std::atomic<std::uint64_t> g_lazy_stop_epoch{0};

const std::stop_token& lazy_stop_source::token() {
    for (;;) {
        std::uint8_t s = m_state.load(std::memory_order_acquire);
        if (s == made) return m_token;
        if (s == lazy && m_state.compare_exchange_strong(s, making, std::memory_order_acq_rel)) break;
        std::this_thread::yield();  // another child is making it: a few instructions away
    }
    try {
        m_source = std::stop_source();
        m_token = m_source.get_token();
        const std::stop_token* parent = m_parent_origin != nullptr ? &m_parent_origin->token()
                                                                   : m_parent_token;
        // The callback runs at once if the parent was stopped already.
        if (parent != nullptr && parent->stop_possible()) m_link.emplace(*parent, stopper{&m_source});
    } catch (...) {
        m_link.reset();
        m_token = {};
        m_source = std::stop_source(std::nostopstate);
        const std::uint8_t prev = m_state.exchange(lazy, std::memory_order_acq_rel);
        HOP_ASSERT(prev == making, "only the caller that moved lazy -> making undoes it");
        throw;
    }
    // Pairs with request_stop(): one of the two sees the other's store.
    const std::uint8_t prev = m_state.exchange(made, std::memory_order_seq_cst);
    HOP_ASSERT(prev == making, "only the caller that moved lazy -> making makes the token");
    if (m_stopped.load(std::memory_order_seq_cst)) m_source.request_stop();
    return m_token;
}

void lazy_stop_source::request_stop() noexcept {
    if (m_stopped.exchange(true, std::memory_order_seq_cst)) return;
    g_lazy_stop_epoch.fetch_add(1, std::memory_order_seq_cst);  // descendants' cached "clear" is stale
    if (m_state.load(std::memory_order_seq_cst) == made) m_source.request_stop();
}

}  // namespace hop::detail
