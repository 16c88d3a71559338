// hop::io_pool: N io_loops, each made, run and destroyed by its own thread.
//
// Shutdown protocol (one mutex, `m`, guards everything but the counters):
//   stop()          sets `stopping`, requests stop on every spawned task,
//                   and if no task is running brings the loops down.
//   a task ending   decrements `total`; the last one out after stop() brings
//                   the loops down.
//   bring_down()    under `m`: sets `down` and stops every loop, once.
//   a loop thread   runs its loop until `down` (restarting it, under `m`, if
//                   it was stopped for another reason), waits until every
//                   loop has left run() (so no pool task can still post to
//                   a loop about to go), destroys its loop, and counts
//                   itself out; the last thread out of a pool whose owner
//                   let go (destroyed from its own thread) frees the state.
// `stopping` and `total` are seq_cst on both sides (spawn: total++ then
// read stopping; stop: stopping = true then read total), so either the
// spawn sees the stop and undoes itself, or the stop sees the task and its
// end brings the loops down.

#include <hop/io_pool.hpp>
#include <hop/detail/blocking.hpp>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace hop {
namespace detail {

struct io_pool_state {
    explicit io_pool_state(std::size_t n) : loops(n, nullptr), loads(new std::atomic<std::size_t>[n]), size(n) {
        for (std::size_t i = 0; i < n; ++i) loads[i].store(0, std::memory_order_relaxed);
    }

    std::vector<io_loop*> loops;  // written once each, before the constructor returns
    std::unique_ptr<std::atomic<std::size_t>[]> loads;
    const std::size_t size;
    std::atomic<std::size_t> total{0};
    std::atomic<bool> stopping{false};
    std::stop_source stop;

    std::mutex m;
    std::condition_variable cv;
    std::vector<std::thread> threads;
    std::size_t ready = 0;        // loops constructed
    std::exception_ptr start_error;
    bool down = false;            // the loops are stopping for good
    std::size_t left_run = 0;     // threads past their last run()
    std::size_t ended = 0;        // threads done (their loop destroyed)
    bool orphaned = false;        // the pool object is gone: the last thread frees this

    void bring_down() noexcept {
        std::lock_guard lock(m);
        if (down) return;
        down = true;
        for (io_loop* l : loops) {
            if (l) l->stop();
        }
    }
};

namespace {
thread_local io_pool_state* tl_pool = nullptr;
thread_local std::size_t tl_index = 0;

std::vector<int> allowed_cpus() {
    std::vector<int> cpus;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (CPU_ISSET(c, &set)) cpus.push_back(c);
        }
    }
    return cpus;
}

void loop_thread(io_pool_state* s, std::size_t i, io_loop_options options, int cpu) {
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        (void)::pthread_setaffinity_np(::pthread_self(), sizeof set, &set);  // best effort
    }
    std::optional<io_loop> loop;
    {
        std::unique_lock lock(s->m);
        try {
            loop.emplace(options);
            s->loops[i] = &*loop;
            ++s->ready;
        } catch (...) {
            if (!s->start_error) s->start_error = std::current_exception();
        }
        s->cv.notify_all();
        s->cv.wait(lock, [&] { return s->ready == s->size || s->start_error; });
        if (s->start_error) {
            // Another loop could not start: the constructor throws.
            s->loops[i] = nullptr;
            lock.unlock();
            loop.reset();
            lock.lock();
            ++s->ended;
            s->cv.notify_all();
            return;
        }
    }
    tl_pool = s;
    tl_index = i;
    for (;;) {
        loop->run();
        std::lock_guard lock(s->m);
        if (s->down) break;
        loop->restart();  // stopped by someone else than the pool: go on
    }
    {
        std::unique_lock lock(s->m);
        ++s->left_run;
        s->cv.notify_all();
        s->cv.wait(lock, [&] { return s->left_run == s->size; });
    }
    loop.reset();
    tl_pool = nullptr;
    bool last_orphan = false;
    {
        std::lock_guard lock(s->m);
        ++s->ended;
        s->cv.notify_all();
        last_orphan = s->orphaned && s->ended == s->size;
    }
    if (last_orphan) delete s;  // every thread was detached
}
}  // namespace

void pool_task_started(io_pool_state& s, std::size_t i) {
    s.total.fetch_add(1, std::memory_order_seq_cst);
    s.loads[i].fetch_add(1, std::memory_order_relaxed);
    if (s.stopping.load(std::memory_order_seq_cst)) {
        pool_task_ended(s, i);
        throw executor_shutdown_error("hop::io_pool::spawn_on: the pool is stopping");
    }
}

void pool_task_ended(io_pool_state& s, std::size_t i) noexcept {
    s.loads[i].fetch_sub(1, std::memory_order_relaxed);
    if (s.total.fetch_sub(1, std::memory_order_seq_cst) == 1 && s.stopping.load(std::memory_order_seq_cst)) {
        s.bring_down();
    }
}

std::stop_token pool_stop_token(io_pool_state& s) noexcept { return s.stop.get_token(); }

}  // namespace detail

namespace {
std::size_t default_loops() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : n;
}

io_pool_options with_loops(std::size_t n) {
    io_pool_options o;
    o.loops = n;
    if (n == 0) throw std::invalid_argument("hop::io_pool: 0 loops (at least 1)");
    return o;
}
}  // namespace

io_pool::io_pool() : io_pool(io_pool_options{}) {}

io_pool::io_pool(std::size_t loops) : io_pool(with_loops(loops)) {}

io_pool::io_pool(const io_pool_options& options) {
    const std::size_t n = options.loops == 0 ? default_loops() : options.loops;
    if (n > 4096) {
        throw std::invalid_argument("hop::io_pool: " + std::to_string(n) + " loops (at most 4096)");
    }
    auto state = std::make_unique<detail::io_pool_state>(n);
    auto* s = state.get();
    std::vector<int> cpus;
    if (options.pin_threads) cpus = detail::allowed_cpus();
    {
        std::unique_lock lock(s->m);
        s->threads.reserve(n);
        try {
            for (std::size_t i = 0; i < n; ++i) {
                const int cpu = cpus.empty() ? -1 : cpus[i % cpus.size()];
                s->threads.emplace_back(detail::loop_thread, s, i, options.loop, cpu);
            }
        } catch (...) {
            // No thread for loop i: the ones started must see a start error.
            if (!s->start_error) s->start_error = std::current_exception();
            s->cv.notify_all();
        }
        s->cv.wait(lock, [&] { return s->ready == n || s->start_error; });
    }
    if (s->start_error) {
        for (auto& t : s->threads) t.join();
        std::rethrow_exception(s->start_error);
    }
    m_state = state.release();
}

io_pool::~io_pool() {
    auto* s = m_state;
    stop();
    detail::before_blocking();
    if (detail::tl_pool == s) {
        // On one of our own threads: it cannot join itself. The threads
        // go on without us; the last one out frees the state.
        std::lock_guard lock(s->m);
        for (auto& t : s->threads) {
            if (t.joinable()) t.detach();
        }
        s->orphaned = true;
        return;
    }
    for (auto& t : s->threads) {
        if (t.joinable()) t.join();
    }
    delete s;
}

std::size_t io_pool::size() const noexcept { return m_state->size; }

void io_pool::check_index(std::size_t i, const char* where) const {
    if (i >= m_state->size) {
        throw std::out_of_range(std::string(where) + ": loop " + std::to_string(i) + " of a pool of " +
                                std::to_string(m_state->size));
    }
}

io_loop& io_pool::operator[](std::size_t i) const {
    check_index(i, "hop::io_pool::operator[]");
    return *m_state->loops[i];
}

io_loop* io_pool::this_loop() const noexcept {
    return detail::tl_pool == m_state ? m_state->loops[detail::tl_index] : nullptr;
}

std::size_t io_pool::this_index() const {
    if (detail::tl_pool != m_state) {
        throw std::logic_error("hop::io_pool::this_index: the calling thread runs none of this pool's loops");
    }
    return detail::tl_index;
}

std::size_t io_pool::load(std::size_t i) const {
    check_index(i, "hop::io_pool::load");
    return m_state->loads[i].load(std::memory_order_relaxed);
}

std::size_t io_pool::least_loaded() const noexcept {
    std::size_t best = 0;
    std::size_t best_load = m_state->loads[0].load(std::memory_order_relaxed);
    for (std::size_t i = 1; i < m_state->size && best_load != 0; ++i) {
        const std::size_t l = m_state->loads[i].load(std::memory_order_relaxed);
        if (l < best_load) {
            best = i;
            best_load = l;
        }
    }
    return best;
}

void io_pool::stop() noexcept {
    auto* s = m_state;
    if (s->stopping.exchange(true, std::memory_order_seq_cst)) return;
    s->stop.request_stop();
    if (s->total.load(std::memory_order_seq_cst) == 0) s->bring_down();
}

bool io_pool::stopping() const noexcept { return m_state->stopping.load(std::memory_order_acquire); }

void io_pool::run() {
    auto* s = m_state;
    if (detail::tl_pool == s) {
        throw std::logic_error("hop::io_pool::run: called on one of the pool's own threads (loop " +
                               std::to_string(detail::tl_index) + "), which would wait for itself");
    }
    detail::before_blocking();
    for (auto& t : s->threads) {
        if (t.joinable()) t.join();
    }
}

}  // namespace hop
