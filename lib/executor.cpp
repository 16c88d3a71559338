// The thread-local executor pointer, the inline-resume trampoline, the frame
// allocator, and the blocking loop behind sync_wait.

#include <hop/detail/blocking.hpp>
#include <hop/detail/executor.hpp>
#include <hop/task.hpp>

#include "spin.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

#ifndef HOP_FRAME_CACHE
#define HOP_FRAME_CACHE 1
#endif

namespace hop::detail {

thread_local constinit executor_base* tl_current_executor = nullptr;

void report_escaped_exception(const char* where) noexcept {
    try {
        throw;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hop: exception escaped %s: %s\n", where, e.what());
    } catch (...) {
        std::fprintf(stderr, "hop: unknown exception escaped %s\n", where);
    }
}


executor_base* exchange_current_executor(executor_base* ex) noexcept {
    auto* prev = tl_current_executor;
    tl_current_executor = ex;
    return prev;
}

namespace {
// Inline resumptions nest at most this deep on one thread; deeper ones are
// queued and run by the outermost resume_inline once it unwinds. The depth
// is read on every inline resume (initial-exec, no destructor); the queue is
// needed only past the limit.
constexpr int max_inline_depth = 16;
[[gnu::tls_model("initial-exec")]] constinit thread_local int tl_inline_depth = 0;
[[gnu::tls_model("initial-exec")]] constinit thread_local bool tl_has_pending = false;
// A vector used as a queue and cleared when drained: it keeps its capacity,
// so a thread that runs deep chains allocates for it once, not per chain.
thread_local std::vector<std::coroutine_handle<>> tl_pending;
}  // namespace

void reserve_inline_queue() { tl_pending.reserve(256); }

void resume_inline(std::coroutine_handle<> h) noexcept {
    if (tl_inline_depth >= max_inline_depth) {
        tl_pending.push_back(h);
        tl_has_pending = true;
        return;
    }
    ++tl_inline_depth;
    h.resume();
    if (tl_inline_depth == 1 && tl_has_pending) {
        auto& pending = tl_pending;
        // Resuming may queue more (at depth 1 + 16); they run in this loop.
        for (std::size_t i = 0; i < pending.size(); ++i) pending[i].resume();
        pending.clear();
        tl_has_pending = false;
    }
    --tl_inline_depth;
}

namespace {
constexpr std::size_t frame_granule = 64;  // cache line
constexpr std::size_t frame_classes = 32;  // frames up to 2 KiB are cached
constexpr std::size_t frames_per_class = 64;
constexpr std::size_t depot_batch = 32;      // frames moved to/from the depot at once
constexpr std::size_t depot_batches = 64;    // per class; beyond that frames go back to the heap

struct frame_node {
    frame_node* next;
};

// Where per-thread caches trade whole batches of frames. Work often frees
// on another thread than the one that allocated (a job submitted from one
// thread runs on a pool worker): without it the freeing thread's cache
// overflows into free() and the allocating one always calls malloc(), both
// on the same heap arena, and the two contend on its lock.
struct frame_depot {
    std::mutex mutex;
    std::vector<frame_node*> batches[frame_classes];  // each a list of depot_batch frames

    // Full size from the start: trading frames must not itself allocate.
    frame_depot() {
        for (auto& b : batches) b.reserve(depot_batches);
    }

    bool put(std::size_t c, frame_node* batch) {
        std::lock_guard lock(mutex);
        if (batches[c].size() >= depot_batches) return false;
        batches[c].push_back(batch);
        return true;
    }
    frame_node* take(std::size_t c) {
        std::lock_guard lock(mutex);
        if (batches[c].empty()) return nullptr;
        auto* b = batches[c].back();
        batches[c].pop_back();
        return b;
    }
    /// Frees every batch (the vectors keep their capacity); returns how
    /// many frames.
    std::size_t trim() noexcept;
    std::size_t size() {
        std::lock_guard lock(mutex);
        std::size_t n = 0;
        for (const auto& b : batches) n += b.size() * depot_batch;
        return n;
    }
};

frame_depot& depot() {
    static frame_depot* d = new frame_depot;  // never destroyed: threads may free during exit
    return *d;
}

void free_list(frame_node* n) noexcept {
    while (n) {
        auto* next = n->next;
        ::operator delete(n);
        n = next;
    }
}

// Read on every frame allocation, so trivially destructible and
// initial-exec: a thread_local with a destructor is reached through a guard
// and __tls_get_addr. The reaper below frees what is cached at thread exit;
// it is armed the first time frames enter the cache.
struct frame_cache {
    frame_node* heads[frame_classes];
    std::uint32_t counts[frame_classes];
    bool armed;
    bool dead;  // the thread is exiting: the reaper ran, frames go to the heap
};
[[gnu::tls_model("initial-exec")]] constinit thread_local frame_cache tl_frames{};

frame_node* cut_batch(frame_cache& cache, std::size_t c) noexcept;

struct frame_cache_reaper {
    bool armed = false;
    // Whole batches go to the depot, for the threads that live on (the next
    // pool's workers start warm); the rest goes back to the heap.
    ~frame_cache_reaper() {
        auto& cache = tl_frames;
        cache.dead = true;
        for (std::size_t c = 0; c < frame_classes; ++c) {
            while (cache.counts[c] >= depot_batch) {
                frame_node* batch = cut_batch(cache, c);
                bool kept = false;
                try {
                    kept = depot().put(c, batch);
                } catch (...) {
                }
                if (!kept) free_list(batch);
            }
            free_list(cache.heads[c]);
            cache.heads[c] = nullptr;
            cache.counts[c] = 0;
        }
    }
};
thread_local frame_cache_reaper tl_reaper;

// Takes the first depot_batch frames of class c off the cache (it holds
// at least that many).
frame_node* cut_batch(frame_cache& cache, std::size_t c) noexcept {
    frame_node* batch = cache.heads[c];
    frame_node* last = batch;
    for (std::size_t k = 1; k < depot_batch; ++k) last = last->next;
    cache.heads[c] = last->next;
    last->next = nullptr;
    cache.counts[c] -= depot_batch;
    return batch;
}

void arm(frame_cache& cache) noexcept {
    cache.armed = true;
    tl_reaper.armed = true;  // constructs it, so its destructor runs at thread exit
}

constexpr std::size_t class_of(std::size_t size) noexcept { return (size + frame_granule - 1) / frame_granule - 1; }
}  // namespace

namespace {
std::atomic<std::uint64_t> g_frame_cache_misses{0};
}  // namespace

std::uint64_t frame_cache_misses() noexcept { return g_frame_cache_misses.load(std::memory_order_relaxed); }

std::size_t frame_depot::trim() noexcept {
    std::lock_guard lock(mutex);
    std::size_t n = 0;
    for (auto& list : batches) {
        for (frame_node* b : list) free_list(b);
        n += list.size() * depot_batch;
        list.clear();
    }
    return n;
}

std::size_t trim_frame_cache() noexcept {
    if constexpr (!HOP_FRAME_CACHE) return 0;
    auto& cache = tl_frames;
    std::size_t n = 0;
    for (std::size_t c = 0; c < frame_classes; ++c) {
        free_list(cache.heads[c]);
        n += cache.counts[c];
        cache.heads[c] = nullptr;
        cache.counts[c] = 0;
    }
    return n + depot().trim();
}

bool frame_cache_enabled() noexcept { return HOP_FRAME_CACHE != 0; }

std::size_t cached_frames() noexcept {
    if constexpr (!HOP_FRAME_CACHE) return 0;
    std::size_t n = 0;
    for (std::size_t c = 0; c < frame_classes; ++c) n += tl_frames.counts[c];
    try {
        return n + depot().size();
    } catch (...) {
        return n;  // (a mutex that cannot lock)
    }
}

void* frame_allocate(std::size_t size) {
    if constexpr (HOP_FRAME_CACHE) {
        auto c = class_of(size);
        if (c < frame_classes) {
            auto& cache = tl_frames;
            if (cache.heads[c] == nullptr && !cache.dead) {
                if (!cache.armed) arm(cache);
                if (auto* batch = depot().take(c)) {
                    cache.heads[c] = batch;
                    cache.counts[c] = depot_batch;
                }
            }
            if (auto* n = cache.heads[c]) {
                cache.heads[c] = n->next;
                --cache.counts[c];
                return n;
            }
            g_frame_cache_misses.fetch_add(1, std::memory_order_relaxed);
            return ::operator new((c + 1) * frame_granule);
        }
    }
    return ::operator new(size);
}

void frame_deallocate(void* p, std::size_t size) noexcept {
    if constexpr (HOP_FRAME_CACHE) {
        auto c = class_of(size);
        if (c < frame_classes) {
            auto& cache = tl_frames;
            auto* n = static_cast<frame_node*>(p);
            if (cache.dead) {
                ::operator delete(p);
                return;
            }
            if (!cache.armed) arm(cache);
            if (cache.counts[c] >= frames_per_class) {
                // Hand a batch to the depot for threads that allocate more
                // than they free.
                frame_node* batch = cut_batch(cache, c);
                try {
                    if (!depot().put(c, batch)) free_list(batch);
                } catch (...) {
                    free_list(batch);
                }
            }
            n->next = cache.heads[c];
            cache.heads[c] = n;
            ++cache.counts[c];
            return;
        }
    }
    ::operator delete(p);
}

// The loop behind sync_wait. Posters notify only a loop that really sleeps,
// and do it after unlocking, holding the impl alive through a shared_ptr:
// notifying under the lock made the woken thread block again on the mutex.
struct blocking_loop::impl {
    std::mutex mutex;
    std::condition_variable cv;
    work_item* head = nullptr;
    work_item* tail = nullptr;
    bool finished = false;
    bool sleeping = false;            // guarded by mutex: the loop waits on cv
    std::atomic<bool> ready{false};   // a hint for the spin before sleeping
};

blocking_loop::blocking_loop() : m_impl(std::make_shared<impl>()) {}
blocking_loop::~blocking_loop() = default;

void blocking_loop::post_item(work_item* w) { post_continuation(w); }

void blocking_loop::post_continuation(work_item* w) noexcept {
    std::shared_ptr<impl> keep = m_impl;
    w->next = nullptr;
    bool wake;
    {
        std::lock_guard lock(keep->mutex);
        if (keep->tail) {
            keep->tail->next = w;
        } else {
            keep->head = w;
        }
        keep->tail = w;
        keep->ready.store(true, std::memory_order_release);
        wake = std::exchange(keep->sleeping, false);
    }
    if (wake) keep->cv.notify_one();
}

void blocking_loop::finish() noexcept {
    std::shared_ptr<impl> keep = m_impl;
    bool wake;
    {
        std::lock_guard lock(keep->mutex);
        keep->finished = true;
        keep->ready.store(true, std::memory_order_release);
        wake = std::exchange(keep->sleeping, false);
    }
    if (wake) keep->cv.notify_one();
}

void blocking_loop::run_until_finished() noexcept {
    auto& i = *m_impl;
    for (;;) {
        // What just ran may have posted to a loop whose wake is still owed
        // (sync_wait inside a loop's handler): this thread may wait for it.
        before_blocking();
        // No spin before sleeping: with the pool's workers spinning too
        // (sched_yield), a spinning sync_wait thread on a machine with fewer
        // cores than spinners held the core the worker needed to finish the
        // trip. cpu_pool_bench's round trip (sync_wait -> pool -> sync_wait,
        // 2 workers, 2 cores): ~100 us per trip with the spin, ~7 us without.
        work_item* batch = nullptr;
        {
            std::unique_lock lock(i.mutex);
            while (i.head == nullptr && !i.finished) {
                i.sleeping = true;
                i.cv.wait(lock);
            }
            i.sleeping = false;
            if (i.head == nullptr) return;  // finished and drained
            batch = std::exchange(i.head, nullptr);
            i.tail = nullptr;
            i.ready.store(false, std::memory_order_relaxed);
        }
        while (batch) {
            auto* next = batch->next;
            batch->run(batch);
            batch = next;
        }
    }
}

}  // namespace hop::detail
