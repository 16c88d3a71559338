// cpu_pool: per-worker Chase-Lev deques, sharded injection queues for work
// from outside, and futex parking with one-at-a-time wakeups.
//
// Injection: work posted from outside the pool goes into one of a few
// shards, each a FIFO list under its own spin lock; a posting thread always
// uses the same shard (threads are numbered in the order they first post),
// so two threads that submit at once do not fight over one lock and one
// cache line. Workers take from the shards round robin, a fair share per
// lock. Order: FIFO per posting thread; across threads, round robin.
//
// Exit (shutdown): a worker leaves once its deque and the shards look
// empty. The last one decides with every shard locked: either the shards are
// empty and it sets `all_exited` (posters, which read it under their shard's
// lock, then run their item themselves: nothing is stranded), or it stays.
//
// Wakeup protocol (after Tokio's idle.rs): `m_searching` counts awake
// workers that are looking for work; `m_idle` holds parked ones. Whoever
// makes work visible wakes one parked worker only if nobody is searching, so
// a burst of submissions wakes workers one by one, never all at once. A
// worker about to park first leaves the searching count, then looks at every
// queue once more (all seq_cst), so a push that saw "somebody is searching"
// is always found by that somebody.

#include <hop/cpu_pool.hpp>
#include <hop/detail/fork.hpp>
#include <hop/detail/spawned.hpp>

#include "metrics_impl.hpp"
#include "spin.hpp"

#include <algorithm>
#include <cassert>
#include <hop/detail/blocking.hpp>

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <mutex>
#include <thread>
#include <vector>

namespace hop {

namespace detail {
namespace {

/// Chase-Lev work-stealing deque ("Correct and Efficient Work-Stealing for
/// Weak Memory Models", Lê et al. 2013), written with seq_cst operations in
/// place of the paper's fences so ThreadSanitizer can follow it.
class ws_deque {
public:
    ws_deque() : m_ring(new ring(256)) { m_rings.emplace_back(m_ring.load(std::memory_order_relaxed)); }

    /// Owner thread only.
    void push(work_item* w) {
        auto b = m_bottom.load(std::memory_order_relaxed);
        auto t = m_top.load(std::memory_order_acquire);
        ring* r = m_ring.load(std::memory_order_relaxed);
        if (b - t > r->capacity - 1) r = grow(r, b, t);
        r->put(b, w);
        m_bottom.store(b + 1, std::memory_order_seq_cst);
    }

    /// Owner thread only: pushes the non-null items of items[0, n), oldest
    /// first, published with one store (a fork of ten children pays for one
    /// fence, not ten). All or nothing: throws before publishing any.
    void push_many(work_item* const* items, std::size_t n) {
        auto b = m_bottom.load(std::memory_order_relaxed);
        auto t = m_top.load(std::memory_order_acquire);
        ring* r = m_ring.load(std::memory_order_relaxed);
        std::int64_t count = 0;
        for (std::size_t k = 0; k < n; ++k) count += items[k] != nullptr ? 1 : 0;
        while (b - t + count > r->capacity) r = grow(r, b, t);
        auto at = b;
        for (std::size_t k = 0; k < n; ++k) {
            if (items[k] != nullptr) r->put(at++, items[k]);
        }
        m_bottom.store(at, std::memory_order_seq_cst);
    }

    /// Owner thread only; newest first.
    work_item* pop() {
        auto b = m_bottom.load(std::memory_order_relaxed) - 1;
        ring* r = m_ring.load(std::memory_order_relaxed);
        m_bottom.store(b, std::memory_order_seq_cst);
        auto t = m_top.load(std::memory_order_seq_cst);
        if (t > b) {
            m_bottom.store(b + 1, std::memory_order_relaxed);
            return nullptr;
        }
        work_item* w = r->get(b);
        if (t == b) {  // the last item: race the thieves for it
            if (!m_top.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                w = nullptr;
            }
            m_bottom.store(b + 1, std::memory_order_relaxed);
        }
        return w;
    }

    /// Owner thread only: takes `expected` if it is the newest item (a fork
    /// that nobody stole). Leaves the deque as it was otherwise.
    bool pop_if(work_item* expected) {
        auto b = m_bottom.load(std::memory_order_relaxed) - 1;
        ring* r = m_ring.load(std::memory_order_relaxed);
        m_bottom.store(b, std::memory_order_seq_cst);
        auto t = m_top.load(std::memory_order_seq_cst);
        if (t > b || r->get(b) != expected) {
            m_bottom.store(b + 1, std::memory_order_relaxed);
            return false;
        }
        if (t == b) {  // the last item: race the thieves for it
            const bool won =
                m_top.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst, std::memory_order_relaxed);
            m_bottom.store(b + 1, std::memory_order_relaxed);
            return won;
        }
        return true;
    }

    /// Owner thread only: takes the newest item if it is a spawned child
    /// (its run is run_spawned); null otherwise, the deque left as it was.
    work_item* pop_spawned() {
        auto b = m_bottom.load(std::memory_order_relaxed) - 1;
        ring* r = m_ring.load(std::memory_order_relaxed);
        m_bottom.store(b, std::memory_order_seq_cst);
        auto t = m_top.load(std::memory_order_seq_cst);
        work_item* w = t > b ? nullptr : r->get(b);
        if (w == nullptr || w->run != &run_spawned) {
            m_bottom.store(b + 1, std::memory_order_relaxed);
            return nullptr;
        }
        if (t == b) {  // the last item: race the thieves for it
            if (!m_top.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
                w = nullptr;
            }
            m_bottom.store(b + 1, std::memory_order_relaxed);
        }
        return w;
    }

    /// Owner thread only: whether `w` looks queued here (a hint: a thief may
    /// take it meanwhile).
    bool holds(const work_item* w) const {
        const auto b = m_bottom.load(std::memory_order_relaxed);
        const ring* r = m_ring.load(std::memory_order_relaxed);
        for (auto i = b - 1, t = m_top.load(std::memory_order_acquire); i >= t; --i) {
            if (r->get(i) == w) return true;
        }
        return false;
    }

    /// Any thread; oldest first. Null if empty or the race was lost.
    work_item* steal() {
        auto t = m_top.load(std::memory_order_seq_cst);
        auto b = m_bottom.load(std::memory_order_seq_cst);
        if (t >= b) return nullptr;
        ring* r = m_ring.load(std::memory_order_acquire);
        work_item* w = r->get(t);
        if (!m_top.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) {
            return nullptr;
        }
        return w;
    }

    bool looks_empty() const {
        return m_top.load(std::memory_order_seq_cst) >= m_bottom.load(std::memory_order_seq_cst);
    }

    /// Any thread: how many items it holds, as of a moment (for metrics).
    std::uint64_t size_hint() const {
        const auto t = m_top.load(std::memory_order_relaxed);
        const auto b = m_bottom.load(std::memory_order_relaxed);
        return b > t ? static_cast<std::uint64_t>(b - t) : 0;
    }

private:
    struct ring {
        explicit ring(std::int64_t cap) : capacity(cap), slots(new std::atomic<work_item*>[static_cast<std::size_t>(cap)]) {}
        work_item* get(std::int64_t i) const { return slots[i & (capacity - 1)].load(std::memory_order_relaxed); }
        void put(std::int64_t i, work_item* w) { slots[i & (capacity - 1)].store(w, std::memory_order_relaxed); }
        std::int64_t capacity;
        std::unique_ptr<std::atomic<work_item*>[]> slots;
    };

    ring* grow(ring* old, std::int64_t b, std::int64_t t) {
        auto* r = new ring(old->capacity * 2);
        for (auto i = t; i < b; ++i) r->put(i, old->get(i));
        m_rings.emplace_back(r);  // old rings stay alive: a thief may still read them
        m_ring.store(r, std::memory_order_release);
        return r;
    }

    alignas(64) std::atomic<std::int64_t> m_top{0};
    alignas(64) std::atomic<std::int64_t> m_bottom{0};
    std::atomic<ring*> m_ring;
    std::vector<std::unique_ptr<ring>> m_rings;
};

}  // namespace
}  // namespace detail

namespace {
constexpr std::size_t max_threads = 4096;
// Every this many items a worker looks at the injection queue before its own
// deque, so work from outside is not starved by a busy local queue.
constexpr std::uint32_t global_queue_interval = 61;
// At most this many injected items move to a worker's deque in one go.
constexpr std::size_t max_inject_batch = 32;
// Injection shards per pool: as many as workers, at least 2 (two posting
// threads never share one), at most this many.
constexpr std::size_t max_inject_shards = 8;

/// One injection queue: a FIFO list of items posted from outside the pool.
/// The lock is held for a few instructions (and a wakeup, see
/// post_continuation).
struct alignas(64) inject_shard {
    detail::spin_mutex mutex;
    detail::work_item* head = nullptr;  // guarded by mutex
    detail::work_item* tail = nullptr;  // guarded by mutex
    // Items in the list: written under mutex (seq_cst: a parking worker
    // reads it without the lock, see the wakeup protocol), read anywhere.
    std::atomic<std::size_t> len{0};

    /// Under mutex: appends the chain first..last of n items.
    void push(detail::work_item* first, detail::work_item* last, std::size_t n) noexcept {
        assert(n != 0 && first != nullptr && last != nullptr);
        last->next = nullptr;
        if (tail) {
            tail->next = first;
        } else {
            assert(head == nullptr);
            head = first;
        }
        tail = last;
        len.fetch_add(n, std::memory_order_seq_cst);
    }

    /// Under mutex: detaches and returns the whole list (null-terminated).
    detail::work_item* take_all() noexcept {
        auto* all = head;
        head = tail = nullptr;
        len.store(0, std::memory_order_seq_cst);
        return all;
    }
};

// Numbers the threads that post to pools from outside, in the order of
// their first post; thread k uses shard k % shard_count of every pool.
std::atomic<std::uint32_t> g_next_poster{0};
constexpr std::uint32_t no_poster_index = ~std::uint32_t{0};
[[gnu::tls_model("initial-exec")]] thread_local std::uint32_t tl_poster_index = no_poster_index;
}  // namespace

struct cpu_pool::impl {
    struct worker {
        detail::ws_deque deque;
        alignas(64) std::atomic<std::uint32_t> wake{0};  // futex word: 1 = woken
        bool parked = false;                            // guarded by idle_mutex
        bool searching = false;                         // owner thread only
        std::uint32_t tick = 0;
        std::uint64_t rng = 0;
        std::size_t next_shard = 0;  // where pop_injected looks first
        std::thread thread;
        // hop::metrics: written by this worker only, summed when read.
        detail::relaxed_counter jobs, steals, parks;
    };

    cpu_pool* owner = nullptr;
    std::vector<std::unique_ptr<worker>> workers;

    std::size_t shard_count = 0;
    std::unique_ptr<inject_shard[]> shards;
    // Set once the last worker has left, with every shard locked; read with
    // any one shard locked.
    bool all_exited = false;

    // Lock order: exit_mutex, then shards (in index order), then idle_mutex.
    std::mutex exit_mutex;
    std::size_t live_workers = 0;  // guarded by exit_mutex
    // Pool threads blocked in shutdown(true), and their wakeup when a worker
    // exits (guarded by exit_mutex).
    std::size_t shutdown_waiters = 0;
    std::condition_variable exit_cv;
    // Set by ~cpu_pool run on one of the workers (guarded by exit_mutex):
    // the handle is gone and the last worker to exit frees this state.
    bool orphaned = false;

    std::mutex idle_mutex;
    std::vector<worker*> idle;  // parked workers, LIFO

    alignas(64) std::atomic<std::uint32_t> searching{0};
    std::atomic<std::uint32_t> idle_count{0};
    std::atomic<bool> shutdown_flag{false};
    std::mutex join_mutex;

    // Initial-exec: read on every fork and post; the default model for a
    // shared library goes through __tls_get_addr.
    [[gnu::tls_model("initial-exec")]] static thread_local worker* tl_worker;
    [[gnu::tls_model("initial-exec")]] static thread_local impl* tl_pool;

    // ---- queues ----------------------------------------------------------

    /// The shard the calling (outside) thread posts to.
    inject_shard& shard_for_caller() noexcept {
        if (tl_poster_index == no_poster_index) {
            tl_poster_index = g_next_poster.fetch_add(1, std::memory_order_relaxed);
        }
        return shards[tl_poster_index % shard_count];
    }

    void lock_all_shards() noexcept {
        for (std::size_t k = 0; k < shard_count; ++k) shards[k].mutex.lock();
    }
    void unlock_all_shards() noexcept {
        for (std::size_t k = shard_count; k-- > 0;) shards[k].mutex.unlock();
    }

    bool injected_visible() const noexcept {
        for (std::size_t k = 0; k < shard_count; ++k) {
            if (shards[k].len.load(std::memory_order_seq_cst) != 0) return true;
        }
        return false;
    }

    /// Takes the oldest item of the next non-empty shard (round robin from
    /// where `self` last took) for `self` to run, and a fair share of the
    /// ones behind it onto self's deque (where idle workers can steal them):
    /// one lock per batch instead of one per item.
    detail::work_item* pop_injected(worker& self) {
        for (std::size_t k = 0; k < shard_count; ++k) {
            const std::size_t at = (self.next_shard + k) % shard_count;
            auto& sh = shards[at];
            if (sh.len.load(std::memory_order_seq_cst) == 0) continue;
            if (auto* w = pop_shard(self, sh)) {
                self.next_shard = (at + 1) % shard_count;
                return w;
            }
        }
        return nullptr;
    }

    detail::work_item* pop_shard(worker& self, inject_shard& sh) {
        detail::work_item* first;
        detail::work_item* rest;
        std::size_t taken = 0;
        {
            std::lock_guard lock(sh.mutex);
            first = sh.head;
            if (!first) return nullptr;
            const std::size_t len = sh.len.load(std::memory_order_relaxed);
            assert(len != 0);
            const std::size_t want = std::min<std::size_t>(max_inject_batch, len / workers.size());
            rest = first->next;
            auto* last = first;
            while (taken < want && last->next) {
                last = last->next;
                ++taken;
            }
            sh.head = last->next;
            if (!sh.head) sh.tail = nullptr;
            last->next = nullptr;
            if (taken == 0) rest = nullptr;
            assert(len >= taken + 1 && (sh.head == nullptr) == (len == taken + 1));
            sh.len.fetch_sub(taken + 1, std::memory_order_relaxed);
        }
        // Newest first, so the owner pops them back in submission order.
        detail::work_item* batch[max_inject_batch];
        for (std::size_t k = 0; k < taken; ++k) {
            batch[k] = rest;
            rest = rest->next;
        }
        for (std::size_t k = taken; k-- > 0;) self.deque.push(batch[k]);
        if (taken != 0) notify_one();
        return first;
    }

    bool any_work_visible() const {
        if (injected_visible()) return true;
        for (auto& w : workers) {
            if (!w->deque.looks_empty()) return true;
        }
        return false;
    }

    detail::work_item* steal(worker& self) {
        const auto n = workers.size();
        if (n <= 1) return nullptr;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        const auto start = static_cast<std::size_t>(self.rng % n);
        for (int round = 0; round < 2; ++round) {
            for (std::size_t k = 0; k < n; ++k) {
                auto& victim = *workers[(start + k) % n];
                if (&victim == &self) continue;
                if (auto* w = victim.deque.steal()) {
                    self.steals.add();
                    return w;
                }
            }
        }
        return nullptr;
    }

    // ---- waking ----------------------------------------------------------

    /// Wakes one parked worker if nobody is already looking for work.
    void notify_one() {
        if (searching.load(std::memory_order_seq_cst) != 0 || idle_count.load(std::memory_order_seq_cst) == 0) return;
        worker* w = nullptr;
        {
            std::lock_guard lock(idle_mutex);
            if (idle.empty()) return;
            w = idle.back();
            idle.pop_back();
            w->parked = false;
            idle_count.fetch_sub(1, std::memory_order_seq_cst);
            searching.fetch_add(1, std::memory_order_seq_cst);  // on its behalf: it wakes up searching
        }
        w->wake.store(1, std::memory_order_release);
        detail::futex_wake(w->wake);
    }

    void wake_all() {
        std::vector<worker*> woken;
        {
            std::lock_guard lock(idle_mutex);
            woken.swap(idle);
            idle.reserve(workers.size());  // it went with the swap
            for (auto* w : woken) {
                w->parked = false;
                idle_count.fetch_sub(1, std::memory_order_seq_cst);
                searching.fetch_add(1, std::memory_order_seq_cst);
            }
        }
        for (auto* w : woken) {
            w->wake.store(1, std::memory_order_release);
            detail::futex_wake(w->wake);
        }
    }

    // ---- the worker ------------------------------------------------------

    detail::work_item* find_local(worker& self) {
        if (++self.tick % global_queue_interval == 0) {
            if (auto* w = pop_injected(self)) return w;
        }
        if (auto* w = self.deque.pop()) return w;
        return nullptr;
    }

    void start_searching(worker& self) {
        if (!self.searching) {
            self.searching = true;
            searching.fetch_add(1, std::memory_order_seq_cst);
        }
    }

    void stop_searching(worker& self) {
        if (self.searching) {
            self.searching = false;
            // The last searcher found work: there may be more, so hand the
            // search on to one parked worker.
            if (searching.fetch_sub(1, std::memory_order_seq_cst) == 1) notify_one();
        }
    }

    /// Parks until woken. Returns having been counted as searching again.
    void park(worker& self) {
        {
            std::lock_guard lock(idle_mutex);
            self.parked = true;
            idle.push_back(&self);
            idle_count.fetch_add(1, std::memory_order_seq_cst);
        }
        self.searching = false;
        searching.fetch_sub(1, std::memory_order_seq_cst);
        if (any_work_visible() || shutdown_flag.load(std::memory_order_seq_cst)) {
            std::lock_guard lock(idle_mutex);
            if (self.parked) {  // nobody woke us yet: take ourselves off the list
                self.parked = false;
                std::erase(idle, &self);
                idle_count.fetch_sub(1, std::memory_order_seq_cst);
                searching.fetch_add(1, std::memory_order_seq_cst);
                self.searching = true;
                return;
            }
        }
        self.parks.add();
        while (self.wake.load(std::memory_order_acquire) == 0) detail::futex_wait(self.wake, 0);
        self.wake.store(0, std::memory_order_relaxed);
        self.searching = true;  // the waker counted us
    }

    enum class exit_kind { stay, exit, exit_and_free };

    /// During shutdown: exits if nothing is left to run. The last worker of
    /// an orphaned pool (see ~cpu_pool) is told to free it.
    exit_kind try_exit(worker& self) {
        // Only this thread pushes onto its deque, and it is here.
        if (!self.deque.looks_empty() || injected_visible()) return exit_kind::stay;
        std::lock_guard lock(exit_mutex);
        assert(live_workers != 0);
        if (live_workers == 1) {
            // The last one decides with every shard locked: a poster either
            // got its item in before (seen here: stay and run it) or sees
            // all_exited after (and runs the item itself).
            lock_all_shards();
            bool empty = true;
            for (std::size_t k = 0; k < shard_count; ++k) empty = empty && shards[k].head == nullptr;
            if (empty) all_exited = true;
            unlock_all_shards();
            if (!empty) return exit_kind::stay;
        }
        --live_workers;
        exit_cv.notify_all();
        return live_workers == 0 && orphaned ? exit_kind::exit_and_free : exit_kind::exit;
    }

    /// Waits out posters from outside that may still be inside
    /// post_continuation (they wake the pool under their shard's lock).
    void wait_out_posters() noexcept {
        lock_all_shards();
        unlock_all_shards();
    }

    /// The last worker of an orphaned pool: waits for the other workers'
    /// threads to end, lets its own go, and frees the pool's state. Touches
    /// nothing of `this` afterwards (nor does its caller).
    void reap(worker& self) noexcept {
        for (auto& w : workers) {
            if (w.get() != &self && w->thread.joinable()) w->thread.join();
        }
        if (self.thread.joinable()) self.thread.detach();
        wait_out_posters();
        delete this;
    }

    void run_worker(worker& self, std::size_t index) {
        tl_worker = &self;
        tl_pool = this;
        detail::current_executor_scope scope(owner);
        try {
            detail::reserve_inline_queue();
        } catch (...) {
            // Without it the queue grows when first needed.
        }
        self.rng = 0x9E3779B97F4A7C15ull * (index + 1);
        bool free_on_exit = false;
        for (;;) {
            detail::work_item* w = find_local(self);
            if (!w) {
                start_searching(self);
                w = pop_injected(self);
                if (!w) w = steal(self);
            }
            if (w) {
                stop_searching(self);
                self.jobs.add();
                w->run(w);
                continue;
            }
            if (shutdown_flag.load(std::memory_order_seq_cst)) {
                // Not searching any more: an exiting worker hands no search on.
                if (self.searching) {
                    self.searching = false;
                    searching.fetch_sub(1, std::memory_order_seq_cst);
                }
                const exit_kind how = try_exit(self);
                if (how == exit_kind::stay) {
                    start_searching(self);
                    continue;
                }
                free_on_exit = how == exit_kind::exit_and_free;
                break;
            }
            // Still counted as searching, so pushers leave the parked workers
            // be: more work within the spin budget comes to this one.
            if (detail::spin_until([&] {
                    return any_work_visible() || shutdown_flag.load(std::memory_order_relaxed);
                })) {
                continue;
            }
            park(self);
        }
        tl_worker = nullptr;
        tl_pool = nullptr;
        if (free_on_exit) reap(self);  // `this` is gone after it
    }
};

[[gnu::tls_model("initial-exec")]] thread_local cpu_pool::impl::worker* cpu_pool::impl::tl_worker = nullptr;
[[gnu::tls_model("initial-exec")]] thread_local cpu_pool::impl* cpu_pool::impl::tl_pool = nullptr;

namespace {
// hop::metrics: the live pools (detail::read_cpu_pools), each with the
// function that sums its workers' figures.
struct pool_entry {
    const void* pool;
    std::uint64_t id;
    detail::cpu_pool_counts (*read)(const void*);
};
struct pool_list {
    std::mutex mutex;
    std::vector<pool_entry> live;
    std::uint64_t next_id = 0;
};
pool_list& live_pools() {
    static auto* l = new pool_list;  // never destroyed: pools may outlive static destruction (cpu())
    return *l;
}
}  // namespace

std::vector<detail::cpu_pool_counts> detail::read_cpu_pools() {
    std::vector<cpu_pool_counts> out;
    auto& l = live_pools();
    std::lock_guard lock(l.mutex);
    for (const pool_entry& e : l.live) {
        out.push_back(e.read(e.pool));
        out.back().id = e.id;
    }
    return out;
}

cpu_pool::cpu_pool() : cpu_pool(std::max(1u, std::thread::hardware_concurrency())) {}

cpu_pool::cpu_pool(std::size_t threads) : m_impl(std::make_unique<impl>()) {
    if (threads == 0) throw std::invalid_argument("hop::cpu_pool: thread count 0 is not allowed (need at least 1)");
    if (threads > max_threads) {
        throw std::invalid_argument("hop::cpu_pool: thread count " + std::to_string(threads) + " exceeds the limit of " +
                                    std::to_string(max_threads));
    }
    auto& i = *m_impl;
    i.owner = this;
    i.workers.reserve(threads);
    for (std::size_t k = 0; k < threads; ++k) i.workers.push_back(std::make_unique<impl::worker>());
    i.idle.reserve(threads);  // parking never allocates (park() pushes here)
    i.shard_count = std::clamp<std::size_t>(threads, 2, max_inject_shards);
    i.shards.reset(new inject_shard[i.shard_count]);
    // Workers start looking at different shards.
    for (std::size_t k = 0; k < threads; ++k) i.workers[k]->next_shard = k % i.shard_count;
    i.live_workers = threads;
    // Workers start out searching; with nothing to find they park at once.
    i.searching.store(static_cast<std::uint32_t>(threads), std::memory_order_relaxed);
    for (auto& w : i.workers) w->searching = true;
    for (std::size_t k = 0; k < threads; ++k) {
        try {
            i.workers[k]->thread = std::thread([&i, k] { i.run_worker(*i.workers[k], k); });
        } catch (...) {
            // Threads that never started will not search or run anything.
            {
                std::lock_guard lock(i.exit_mutex);
                i.live_workers -= threads - k;
            }
            i.searching.fetch_sub(static_cast<std::uint32_t>(threads - k), std::memory_order_seq_cst);
            // The unstarted workers stay in `workers` (empty deques, never
            // parked): resizing it here would race with the running workers,
            // which read it while they steal.
            shutdown(true);
            throw;
        }
    }
    auto& l = live_pools();
    std::lock_guard lock(l.mutex);
    l.live.push_back({&i, ++l.next_id, [](const void* p) {
                          const auto& pool = *static_cast<const impl*>(p);
                          detail::cpu_pool_counts c;
                          c.threads = pool.workers.size();
                          for (const auto& w : pool.workers) {
                              c.jobs += w->jobs.get();
                              c.steals += w->steals.get();
                              c.parks += w->parks.get();
                              c.queued += w->deque.size_hint();
                          }
                          for (std::size_t k = 0; k < pool.shard_count; ++k) {
                              c.queued += pool.shards[k].len.load(std::memory_order_relaxed);
                          }
                          return c;
                      }});
}

cpu_pool::~cpu_pool() {
    {
        auto& l = live_pools();
        std::lock_guard lock(l.mutex);
        std::erase_if(l.live, [this](const pool_entry& e) { return e.pool == m_impl.get(); });
    }
    shutdown(true);
    auto& i = *m_impl;
    if (impl::tl_pool == &i) {
        // On one of our own workers, whose thread cannot be joined from
        // here: the shared state outlives the handle, and the last worker to
        // leave its loop (this one, once the job that is destroying the pool
        // returns, or another still finishing) joins the rest and frees it.
        std::lock_guard lock(i.exit_mutex);
        assert(i.live_workers != 0);  // this one has not left
        i.orphaned = true;
        (void)m_impl.release();
        return;
    }
    i.wait_out_posters();
}

std::size_t cpu_pool::size() const noexcept { return m_impl->workers.size(); }

bool cpu_pool::is_shutdown() const noexcept { return m_impl->shutdown_flag.load(std::memory_order_acquire); }

bool cpu_pool::running_in_this_thread() const noexcept { return impl::tl_pool == m_impl.get(); }

void cpu_pool::post_item(detail::work_item* w) {
    if (m_impl->shutdown_flag.load(std::memory_order_acquire)) {
        throw executor_shutdown_error("hop::cpu_pool: work submitted after shutdown()");
    }
    post_continuation(w);
}

// From outside the pool the wakeup happens under the shard's lock: once the
// item is visible, the pool may run it, finish, and be destroyed, and the
// destructor takes every shard's lock before it frees anything, so no poster
// is still touching the pool then. A worker posting to its own pool needs no
// such care: the pool cannot be destroyed under its own running worker.
void cpu_pool::post_continuation(detail::work_item* w) noexcept {
    auto& i = *m_impl;
    if (impl::tl_pool == &i) {
        impl::tl_worker->deque.push(w);
        i.notify_one();
        return;
    }
    auto& sh = i.shard_for_caller();
    std::unique_lock lock(sh.mutex);
    if (i.all_exited) {
        // Nobody is left to run it; running it here beats leaking a frame.
        lock.unlock();
        w->run(w);
        return;
    }
    sh.push(w, w, 1);
    i.notify_one();
}

void cpu_pool::post_batch(void* first, std::size_t count, std::size_t stride) {
    auto& i = *m_impl;
    if (i.shutdown_flag.load(std::memory_order_acquire)) {
        throw executor_shutdown_error("hop::cpu_pool: work submitted after shutdown()");
    }
    auto* base = static_cast<unsigned char*>(first);
    auto at = [&](std::size_t k) { return reinterpret_cast<detail::work_item*>(base + k * stride); };
    if (impl::tl_pool == &i) {
        for (std::size_t k = 0; k < count; ++k) impl::tl_worker->deque.push(at(k));
        i.notify_one();
        return;
    }
    for (std::size_t k = 0; k + 1 < count; ++k) at(k)->next = at(k + 1);
    auto& sh = i.shard_for_caller();
    std::unique_lock lock(sh.mutex);
    if (i.all_exited) {
        // A shutdown() between the check above and here, and every worker
        // gone already: as in post_continuation, run the chunks here.
        lock.unlock();
        for (std::size_t k = 0; k < count; ++k) at(k)->run(at(k));
        return;
    }
    sh.push(at(0), at(count - 1), count);
    // One wakeup; a woken worker that finds work hands the search on to the
    // next (stop_searching), so several chunks bring in helpers one by one.
    i.notify_one();
}

void cpu_pool::shutdown(bool wait, bool cancel_pending) {
    auto& i = *m_impl;
    i.shutdown_flag.store(true, std::memory_order_seq_cst);
    if (cancel_pending) {
        // Take everything queued; drop what may be dropped, put back the rest
        // (coroutine continuations must run or their frames leak).
        std::vector<detail::work_item*> keep, drop;
        for (std::size_t k = 0; k < i.shard_count; ++k) {
            auto& sh = i.shards[k];
            detail::work_item* all;
            {
                std::lock_guard lock(sh.mutex);
                all = sh.take_all();
            }
            for (auto* w = all; w;) {
                auto* next = w->next;
                (w->discard ? drop : keep).push_back(w);
                w = next;
            }
        }
        for (auto& wk : i.workers) {
            while (auto* w = wk->deque.steal()) (w->discard ? drop : keep).push_back(w);
        }
        if (!keep.empty()) {
            auto& sh = i.shards[0];
            std::unique_lock lock(sh.mutex);
            if (i.all_exited) {
                lock.unlock();
                for (auto* w : keep) w->run(w);
            } else {
                for (std::size_t k = 0; k + 1 < keep.size(); ++k) keep[k]->next = keep[k + 1];
                sh.push(keep.front(), keep.back(), keep.size());
            }
        }
        for (auto* w : drop) w->discard(w);
    }
    i.wake_all();
    if (!wait) return;
    detail::before_blocking();
    if (impl::tl_pool == &i) {
        // On one of our own workers: it cannot join itself, and joining the
        // others would deadlock against a thread that is joining this one
        // (the destructor) or against another worker doing the same. Wait
        // instead until every other worker has exited or waits here too.
        std::unique_lock lock(i.exit_mutex);
        ++i.shutdown_waiters;
        i.exit_cv.notify_all();
        i.exit_cv.wait(lock, [&i] { return i.live_workers <= i.shutdown_waiters; });
        --i.shutdown_waiters;
        return;
    }
    std::lock_guard lock(i.join_mutex);
    for (auto& w : i.workers) {
        if (w->thread.joinable() && w->thread.get_id() != std::this_thread::get_id()) w->thread.join();
    }
}

namespace detail {

fork_point* current_fork_point() noexcept {
    auto* pool = cpu_pool::impl::tl_pool;
    if (pool == nullptr || current_executor() != pool->owner) return nullptr;
    return reinterpret_cast<fork_point*>(cpu_pool::impl::tl_worker);
}

void fork_push(fork_point& at, work_item* const* items, std::size_t n) {
    reinterpret_cast<cpu_pool::impl::worker&>(at).deque.push_many(items, n);
    cpu_pool::impl::tl_pool->notify_one();
}

bool fork_take_back(fork_point& at, work_item* w) noexcept {
    return reinterpret_cast<cpu_pool::impl::worker&>(at).deque.pop_if(w);
}

void run_spawned(work_item* w) noexcept {
    auto* it = static_cast<spawn_item*>(w);
    it->start(it);
}

bool fork_push_if_worker_of(executor_base& ex, work_item* w) {
    auto* pool = cpu_pool::impl::tl_pool;
    if (pool == nullptr || current_executor() != &ex || pool->owner != &ex) return false;
    if (pool->shutdown_flag.load(std::memory_order_relaxed)) return false;  // post_item throws
    cpu_pool::impl::tl_worker->deque.push(w);
    pool->notify_one();
    return true;
}

namespace {
// Nested inline runs of spawned children (a join helping with the children
// queued above its own) stop growing the stack past this depth.
constexpr int max_help_depth = 512;
[[gnu::tls_model("initial-exec")]] constinit thread_local int tl_help_depth = 0;

/// Runs the spawned children on top of the calling worker's deque, newest
/// first, until `done()` or the top is not a spawned child; with `target`,
/// takes that one back as soon as it is on top.
/// Returns whether it ran `target`.
template <class Done>
bool help(ws_deque& deque, work_item* target, const future_state_base* target_state, const promise_base* link,
          Done done) noexcept {
    bool ran = false;
    ++tl_help_depth;
    for (;;) {
        if (target != nullptr && deque.pop_if(target)) {
            if (link != nullptr) target_state->lazy_stop()->set_parent(link);
            target->run(target);
            target = nullptr;
            ran = true;
        } else {
            if (tl_help_depth > max_help_depth) break;
            work_item* w = deque.pop_spawned();
            if (w == nullptr) break;
            w->run(w);
        }
        if (done()) break;
    }
    --tl_help_depth;
    return ran;
}
}  // namespace

join_result join_forked(work_item* item, const future_state_base& s, const promise_base* link) noexcept {
    auto* pool = cpu_pool::impl::tl_pool;
    if (pool == nullptr || current_executor() != pool->owner) return join_result::not_here;
    auto& self = *cpu_pool::impl::tl_worker;
    auto outcome = [&s] { return s.done() ? join_result::done : join_result::started; };
    if (self.deque.pop_if(item)) {  // the common case: nobody stole it, nothing above it
        if (link != nullptr) s.lazy_stop()->set_parent(link);
        item->run(item);
        return outcome();
    }
    if (!self.deque.holds(item)) return join_result::not_here;  // stolen, or queued elsewhere
    const bool ran = help(self.deque, item, &s, link, [&s] { return s.done(); });
    if (s.done()) return join_result::done;
    return ran ? join_result::started : join_result::not_here;
}

bool help_while(bool (*pending)(const void*), const void* arg) noexcept {
    auto* pool = cpu_pool::impl::tl_pool;
    if (pool == nullptr || current_executor() != pool->owner) return !pending(arg);
    (void)help(cpu_pool::impl::tl_worker->deque, nullptr, nullptr, nullptr, [&] { return !pending(arg); });
    return !pending(arg);
}

}  // namespace detail

cpu_pool& cpu() {
    static cpu_pool pool;
    return pool;
}

}  // namespace hop
