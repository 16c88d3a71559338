#pragma once
// Where a hop coroutine's stop token comes from, and the lazy stop source
// that lets a fork-join combinator give its children a token of their own
// without allocating one unless somebody asks for it.

#include <hop/detail/executor.hpp>

#include <atomic>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <type_traits>

namespace hop::detail {

struct promise_base;

/// A stop source made on first use. when_all and when_any need one per call
/// (the first failure, or the winner, stops the siblings; the parent's stop
/// reaches the children), but std::stop_source allocates its state, and in
/// fork-join code most children never look at their token: fib(n) with every
/// call a task would pay a malloc per fork for nothing.
///
/// So the children point at this object instead of holding a token. Asking
/// whether a stop was requested (what cancellation points do) never
/// allocates: it reads this object's flag, then its parent's. Asking for a
/// token (what an IO operation, a timer or a primitive does, to register a
/// stop callback) makes the std::stop_source once, linked to the parent's
/// token, and stopped already if a stop was requested before.
///
/// A check must see a stop requested on any lazy ancestor, which would mean
/// walking up the chain on every check (fib's leaves are 40 levels deep).
/// Instead, every request_stop() bumps a process-wide epoch after setting its
/// flag, and each source remembers the epoch at which its whole chain was
/// last seen clear (inherited from the parent when it is made): while the
/// epoch has not moved, a check is two loads and a compare. The nearest
/// plain token up the chain (a future's, a group's) is checked directly: it
/// is stopped from outside, not through this class.
///
/// Thread-safe: children on several threads may ask at once. The parent
/// scope (a hop promise, itself lazy or not) outlives this object, and its
/// stop fields do not change while this object lives: the parent is
/// suspended in the combinator until every child has ended.
class lazy_stop_source {
public:
    lazy_stop_source() = default;
    lazy_stop_source(const lazy_stop_source&) = delete;
    lazy_stop_source& operator=(const lazy_stop_source&) = delete;

    /// The scope whose stop also stops this one (null: none). Before any
    /// child runs.
    void set_parent(const promise_base* parent) noexcept;
    /// The lazy source whose stop also stops this one (a task_group's, for
    /// its children); it outlives this one. Before any child runs.
    void set_parent_source(lazy_stop_source* parent) noexcept;

    /// True once request_stop() was called here or upstream. Never allocates.
    bool stop_requested() const noexcept;

    /// The token, made on first call (thread-safe).
    /// @throws std::bad_alloc if the stop state cannot be allocated.
    const std::stop_token& token();

    /// Stops this scope (and its children's tokens, if any were made).
    void request_stop() noexcept;

private:
    // m_state: lazy -> making (token(): the one caller whose compare-exchange
    // wins; others yield until it is done) -> made (that caller, once the
    // source and its link to the parent exist), or making -> lazy again if
    // making them threw. Never leaves made. request_stop() and token() each
    // store one flag and then read the other's (seq_cst), so a stop that
    // lands while the source is being made reaches it.
    enum : std::uint8_t { lazy, making, made };
    struct stopper {
        std::stop_source* s;
        void operator()() const noexcept { s->request_stop(); }
    };

    bool chain_stopped() const noexcept;

    std::atomic<std::uint8_t> m_state{lazy};
    std::atomic<bool> m_stopped{false};
    // The epoch at which this source and its lazy ancestors were last seen
    // unstopped (none_seen: never).
    static constexpr std::uint64_t none_seen = ~std::uint64_t{0};
    mutable std::atomic<std::uint64_t> m_clear_epoch{none_seen};
    const std::stop_token* m_root_token = nullptr;  // the nearest plain token up the chain
    lazy_stop_source* m_parent_origin = nullptr;        // the parent's stop is lazy too
    const std::stop_token* m_parent_token = nullptr;    // or it is a plain token
    std::stop_source m_source{std::nostopstate};
    std::stop_token m_token;
    std::optional<std::stop_callback<stopper>> m_link;  // last: unlinked first
};

/// Fields every hop coroutine promise carries: where its stop token comes
/// from. Either a token (given by a future or group, or inherited from the
/// awaiting parent), or a lazy origin that makes one on first ask.
///
/// Only the coroutine itself (through its awaiters) calls stop_token(), so
/// the one-time switch from origin to token needs no lock.
struct promise_base : frame_allocated {
    std::stop_token m_stop_token;
    lazy_stop_source* m_stop_origin = nullptr;

    /// The token, made from the origin on first call.
    const std::stop_token& stop_token() {
        if (m_stop_origin != nullptr) {
            m_stop_token = m_stop_origin->token();
            m_stop_origin = nullptr;
        }
        return m_stop_token;
    }
    /// Whether a stop was requested, without making a token.
    bool stop_requested() const noexcept {
        return m_stop_origin != nullptr ? m_stop_origin->stop_requested() : m_stop_token.stop_requested();
    }
    /// A child awaited directly shares its parent's stop (lazily, if the
    /// parent's is lazy).
    void inherit_stop(const promise_base& parent) noexcept {
        m_stop_origin = parent.m_stop_origin;
        if (m_stop_origin == nullptr) m_stop_token = parent.m_stop_token;
    }
};

/// Bumped by every lazy_stop_source::request_stop(), after its flag is set.
extern std::atomic<std::uint64_t> g_lazy_stop_epoch;

inline void lazy_stop_source::set_parent(const promise_base* parent) noexcept {
    const std::uint64_t now = g_lazy_stop_epoch.load(std::memory_order_seq_cst);
    if (parent == nullptr) {
        m_clear_epoch.store(now, std::memory_order_relaxed);
        return;
    }
    m_parent_origin = parent->m_stop_origin;
    if (m_parent_origin == nullptr) {
        m_parent_token = &parent->m_stop_token;
        m_root_token = m_parent_token;
        m_clear_epoch.store(now, std::memory_order_relaxed);  // no lazy ancestor
    } else {
        m_root_token = m_parent_origin->m_root_token;
        // Whatever the parent last saw clear holds for this (fresh) source too.
        m_clear_epoch.store(m_parent_origin->m_clear_epoch.load(std::memory_order_relaxed),
                            std::memory_order_relaxed);
    }
}

inline void lazy_stop_source::set_parent_source(lazy_stop_source* parent) noexcept {
    m_parent_origin = parent;
    m_root_token = parent->m_root_token;
    m_clear_epoch.store(parent->m_clear_epoch.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

inline bool lazy_stop_source::stop_requested() const noexcept {
    if (m_stopped.load(std::memory_order_acquire)) return true;
    if (m_state.load(std::memory_order_acquire) == made) return m_token.stop_requested();
    if (m_root_token != nullptr && m_root_token->stop_requested()) return true;
    const std::uint64_t now = g_lazy_stop_epoch.load(std::memory_order_seq_cst);
    if (m_clear_epoch.load(std::memory_order_relaxed) == now) return false;
    if (chain_stopped()) return true;
    m_clear_epoch.store(now, std::memory_order_relaxed);
    return false;
}

inline bool lazy_stop_source::chain_stopped() const noexcept {
    for (auto* s = this;;) {
        if (s->m_stopped.load(std::memory_order_acquire)) return true;
        if (s->m_state.load(std::memory_order_acquire) == made) return s->m_token.stop_requested();
        if (s->m_parent_origin == nullptr) return s->m_parent_token != nullptr && s->m_parent_token->stop_requested();
        s = s->m_parent_origin;
    }
}

/// The stop token of the coroutine whose promise is `p` (empty for a
/// coroutine that is not a hop one); made on first ask if it is lazy.
template <class P>
const std::stop_token& token_of(P& p) {
    if constexpr (std::is_base_of_v<promise_base, P>) {
        return static_cast<promise_base&>(p).stop_token();
    } else {
        static const std::stop_token none;
        return none;
    }
}

/// Whether stop was requested for the coroutine whose promise is `p`,
/// without making its token.
template <class P>
bool stop_requested_of(const P& p) noexcept {
    if constexpr (std::is_base_of_v<promise_base, P>) {
        return static_cast<const promise_base&>(p).stop_requested();
    } else {
        return false;
    }
}

/// The hop promise behind `p`, or null for a foreign coroutine.
template <class P>
const promise_base* hop_promise_of(const P& p) noexcept {
    if constexpr (std::is_base_of_v<promise_base, P>) {
        return &static_cast<const promise_base&>(p);
    } else {
        return nullptr;
    }
}

}  // namespace hop::detail
