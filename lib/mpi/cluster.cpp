// hop::mpi::run and the executor: one progress thread per process makes
// every MPI call (it also calls MPI_Init_thread and MPI_Finalize, so
// MPI_THREAD_FUNNELED is all it asks for: no other thread touches MPI, and
// MPI_THREAD_MULTIPLE would cost OpenMPI a lock on every call). Rank 0's
// progress thread sends queued jobs in batches, at most `limit` unanswered
// per rank, and completes futures from the replies; a worker's progress
// thread hands jobs to its cpu_pool and sends back what the pool finished.
// User threads, io_loops and pool workers only take a mutex to queue.
//
// Two ways for the progress thread to wait between MPI polls, the same
// steps either way (HOP_MPI_PROGRESS): "thread" (the default) sleeps on
// condition variables and nanosleep; "loop" runs the steps as a task on an
// io_loop of its own (MPI_Test/MPI_Improbe between the loop's events, its
// timers for the back-off, posts to wake it), which is what polling MPI
// from an application's loop would cost. bench/mpi_bench.sh measures both:
// "loop" took more CPU (the loop spins briefly before each of the many
// short sleeps) and fewer tiny jobs per second, so "thread" is the default
// (figures in docs/cluster.md).

#include <hop/cpu_pool.hpp>
#include <hop/io_loop.hpp>
#include <hop/mpi.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/time.hpp>

#include "lib/mpi/wire.hpp"

// The C API only: OpenMPI's and MPICH's mpi.h pull in the deprecated C++
// bindings otherwise.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <cxxabi.h>
#include <sched.h>
#include <sys/prctl.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <limits>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace hop::mpi {
namespace {

std::atomic<int> g_rank{-1};
std::atomic<bool> g_started{false};

/// Jobs a worker may hold unanswered, per pool thread: enough queued behind
/// the running one that the pool does not wait for a round trip when jobs
/// are tiny; few enough that long jobs still spread over the ranks (a rank
/// ends at most jobs_per_thread jobs per thread after the others).
constexpr std::size_t jobs_per_thread = 8;

[[noreturn]] void throw_mpi(const char* call, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = 0;
    throw std::runtime_error(std::string("hop::mpi: ") + call + " failed: " + std::string(text, static_cast<std::size_t>(len)));
}

void check(const char* call, int code) {
    if (code != MPI_SUCCESS) throw_mpi(call, code);
}

/// Polling without burning a core: spin a little, then yield, then sleep
/// longer and longer up to `cap`. next() says how long to sleep (zero:
/// yield or spin instead).
class backoff {
public:
    void reset() noexcept { m_n = 0; }
    std::chrono::microseconds next(std::chrono::microseconds cap) noexcept {
        ++m_n;
        if (m_n < 4) return std::chrono::microseconds(0);
        if (m_n < 8) {
            ::sched_yield();
            return std::chrono::microseconds(0);
        }
        return std::min(std::chrono::microseconds(std::int64_t{1} << std::min(m_n - 8, 16u)), cap);
    }
    void idle(std::chrono::microseconds cap) {
        auto d = next(cap);
        if (d.count() != 0) std::this_thread::sleep_for(d);
    }

private:
    unsigned m_n = 0;
};

/// Short sleeps of the progress thread are meant short: without this, the
/// kernel's default 50 us timer slack stretches a 1 us poll to 50 us.
void tighten_timer_slack() noexcept { ::prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL); }

struct outgoing {
    MPI_Request request = MPI_REQUEST_NULL;
    int dest = 0;
    // On the heap of its own: a send MPI failed to finish keeps its buffer
    // (MPI may still read it) after the record is dropped.
    std::unique_ptr<std::string> data;
};

// The test seam (lib/mpi/wire.hpp): a fault armed for one rank, taken by
// the next call of its kind that concerns that rank.
struct armed_fault {
    std::atomic<int> rank{-1};
    std::atomic<int> code{0};

    /// The armed code if the fault is armed for `dest` (then disarmed), else 0.
    int take(int dest) noexcept {
        int r = rank.load(std::memory_order_acquire);
        if (r != dest || !rank.compare_exchange_strong(r, -1, std::memory_order_acq_rel)) return 0;
        return code.load(std::memory_order_relaxed);
    }
};
armed_fault g_isend_fault;
armed_fault g_test_fault;

/// Isends `data` to `dest` and keeps the buffer until MPI is done with it.
void send_bytes(std::deque<outgoing>& sends, std::string data, int dest, int tag) {
    if (data.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
        throw std::length_error("hop::mpi: a message of " + std::to_string(data.size()) +
                                " bytes is over MPI's limit of 2 GiB - 1 per message");
    }
    sends.emplace_back();
    auto& o = sends.back();
    o.dest = dest;
    o.data = std::make_unique<std::string>(std::move(data));
    int code = g_isend_fault.take(dest);
    if (code == 0) {
        code = MPI_Isend(o.data->data(), static_cast<int>(o.data->size()), MPI_BYTE, dest, tag, MPI_COMM_WORLD, &o.request);
    }
    if (code != MPI_SUCCESS) {
        sends.pop_back();
        throw_mpi("MPI_Isend", code);
    }
}

/// What MPI_Test says of a send (or the test seam's armed error).
int test_send(outgoing& o, int& flag) noexcept {
    if (int code = g_test_fault.take(o.dest); code != 0) return code;
    return MPI_Test(&o.request, &flag, MPI_STATUS_IGNORE);
}

/// Tests the oldest sends; returns whether any finished. An error throws.
bool reap_sends(std::deque<outgoing>& sends) {
    bool any = false;
    while (!sends.empty()) {
        int flag = 0;
        check("MPI_Test", test_send(sends.front(), flag));
        if (!flag) break;
        sends.pop_front();
        any = true;
    }
    return any;
}

/// Receives one message from `source` with `tag` if one is there.
bool try_receive(int source, int tag, std::string& out, MPI_Status& st) {
    int flag = 0;
    MPI_Message msg;
    check("MPI_Improbe", MPI_Improbe(source, tag, MPI_COMM_WORLD, &flag, &msg, &st));
    if (!flag) return false;
    int count = 0;
    check("MPI_Get_count", MPI_Get_count(&st, MPI_BYTE, &count));
    out.resize(static_cast<std::size_t>(count));
    check("MPI_Mrecv", MPI_Mrecv(out.data(), count, MPI_BYTE, &msg, &st));
    return true;
}

/// How the progress thread waits between MPI polls (HOP_MPI_PROGRESS).
enum class progress_mode {
    thread,  ///< "thread": condition variables and short sleeps of its own
    loop,    ///< "loop": an io_loop's timers and wake-ups; MPI polled from a task on it
};

progress_mode progress_from_env() {
    const char* v = std::getenv("HOP_MPI_PROGRESS");
    if (v == nullptr || *v == '\0' || std::string_view(v) == "thread") return progress_mode::thread;
    if (std::string_view(v) == "loop") return progress_mode::loop;
    throw std::invalid_argument(std::string("hop::mpi: HOP_MPI_PROGRESS='") + v + "' is neither 'thread' nor 'loop'");
}

/// `co_await yield_to{loop}`: lets the loop run what is queued on it, then
/// resumes (io_loop::schedule() does not suspend on the loop's own thread).
struct yield_to {
    io_loop& loop;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { loop.post([h] { h.resume(); }); }
    void await_resume() const noexcept {}
};

/// One step of a progress routine: what it did, and what comes next.
enum class step_result {
    moved,  ///< something moved: poll again at once
    idle,   ///< nothing moved: back off
    park,   ///< nothing in flight: wait for a wake-up
    done,   ///< finished
};

std::size_t threads_from_env() {
    const char* v = std::getenv("HOP_MPI_THREADS");
    if (v == nullptr || *v == '\0') return std::max(1u, std::thread::hardware_concurrency());
    char* end = nullptr;
    unsigned long n = std::strtoul(v, &end, 10);
    if (*end != '\0' || n == 0 || n > 4096) {
        throw std::invalid_argument(std::string("hop::mpi: HOP_MPI_THREADS='") + v + "' is not a thread count from 1 to 4096");
    }
    return n;
}

}  // namespace

int rank() noexcept { return g_rank.load(std::memory_order_relaxed); }

void detail::inject_fault(fault_kind kind, int rank, int code) noexcept {
    armed_fault& f = kind == fault_kind::isend ? g_isend_fault : g_test_fault;
    f.code.store(code, std::memory_order_relaxed);
    f.rank.store(rank, std::memory_order_release);
}

// ---- rank 0 ------------------------------------------------------------------

struct executor::impl {
    // Shared with submitting threads, under `mutex`.
    std::mutex mutex;
    std::condition_variable wake;     // thread mode: the progress thread sleeps on it when it has nothing in flight
    hop::event parked;                // loop mode: the same, for the task on the progress thread's loop
    std::condition_variable drained;  // shutdown(true) waits on it
    std::deque<detail::remote_job*> queue;
    std::size_t outstanding = 0;  // queued or in flight
    bool sleeping = false;
    bool closed = false;  // shutdown() was called
    bool finish = false;  // run()'s function returned: stop the workers once drained
    std::thread::id progress_id;

    // Set at start-up, then read-only.
    progress_mode mode = progress_mode::thread;
    std::size_t workers = 0;
    std::size_t threads = 0;  // of every worker's pool
    std::atomic<std::size_t> capacity{0};  // the live ranks' limits together

    // The progress thread's own.
    struct flight {
        detail::remote_job* job;
        int rank;
    };
    std::unordered_map<std::uint64_t, flight> in_flight;
    std::vector<std::size_t> limit;  // per rank (index 0 unused); 0 once the rank failed
    std::vector<std::size_t> busy;   // per rank
    std::vector<bool> failed;        // per rank: MPI reported an error for it
    std::uint64_t next_id = 1;
    std::deque<outgoing> sends;
    std::vector<std::unique_ptr<std::string>> abandoned;  // buffers of sends MPI failed: it may still read them
    unsigned next_rank = 0;

    /// Wakes the progress thread from park (thread-safe).
    void wake_progress() {
        if (mode == progress_mode::loop) {
            parked.set();
        } else {
            wake.notify_one();
        }
    }
    /// Sends, receives, completes futures once.
    step_result step();
    /// The progress thread's two ways to wait between steps.
    void run_progress_thread();
    task<void> run_progress_loop();
    /// Tells every worker to stop and waits until the messages left.
    void stop_workers();
    /// Tests the oldest sends; a send MPI fails fails its rank.
    bool reap();
    /// True if every live rank holds at least two jobs per thread.
    bool fed() const noexcept {
        for (std::size_t r = 1; r <= workers; ++r) {
            if (limit[r] != 0 && busy[r] * jobs_per_thread < limit[r] * 2) return false;
        }
        return true;
    }
    /// The longest back-off sleep: when every rank has a backlog beyond its
    /// threads the replies can wait a little longer, and the polls cost the
    /// workers CPU.
    std::chrono::microseconds idle_cap() const noexcept {
        return fed() ? std::chrono::microseconds(500) : std::chrono::microseconds(50);
    }
    std::size_t dispatch();
    std::size_t collect();
    void fail_rank(int r, const std::exception_ptr& e);
    void fail_rank(int r, const char* call, int code);
};

std::size_t executor::size() const noexcept { return m_impl->workers; }
std::size_t executor::capacity() const noexcept { return m_impl->capacity.load(std::memory_order_relaxed); }
std::size_t executor::worker_threads() const noexcept { return m_impl->threads; }

bool executor::is_shutdown() const noexcept {
    std::lock_guard lock(m_impl->mutex);
    return m_impl->closed;
}

void executor::enqueue(std::unique_ptr<detail::remote_job, job_release> j) {
    std::vector<detail::remote_job*> one{j.get()};
    j.release();
    enqueue_all(one);
}

void executor::enqueue_all(const std::vector<detail::remote_job*>& jobs) {
    auto& s = *m_impl;
    {
        std::unique_lock lock(s.mutex);
        const char* refused = s.closed ? "hop::mpi::executor: work submitted after shutdown()"
                              : s.workers == 0 ? "hop::mpi::executor: there are no worker ranks (start the program "
                                                 "with mpirun -n 2 or more)"
                                               : nullptr;
        if (refused == nullptr) {
            s.queue.insert(s.queue.end(), jobs.begin(), jobs.end());
            s.outstanding += jobs.size();
            const bool wake = s.sleeping;
            s.sleeping = false;
            lock.unlock();
            if (wake) s.wake_progress();
            return;
        }
        lock.unlock();
        auto e = s.closed ? std::make_exception_ptr(executor_shutdown_error(refused))
                          : std::make_exception_ptr(std::invalid_argument(refused));
        for (auto* j : jobs) {
            j->fail(e);
            j->release_job();
        }
        std::rethrow_exception(e);
    }
}

void executor::shutdown(bool wait, bool cancel_pending) {
    auto& s = *m_impl;
    std::deque<detail::remote_job*> dropped;
    std::unique_lock lock(s.mutex);
    s.closed = true;
    if (cancel_pending) {
        dropped.swap(s.queue);
        s.outstanding -= dropped.size();
    }
    if (!dropped.empty()) {
        if (s.outstanding == 0) s.drained.notify_all();
        lock.unlock();
        auto e = std::make_exception_ptr(cancelled_error("hop::mpi::executor: cancelled by shutdown()"));
        for (auto* j : dropped) {
            j->fail(e);
            j->release_job();
        }
        lock.lock();
    }
    // The progress thread completes futures: waiting there would wait for itself.
    if (wait && std::this_thread::get_id() != s.progress_id) s.drained.wait(lock, [&] { return s.outstanding == 0; });
}

std::size_t executor::impl::dispatch() {
    std::size_t room = 0, alive = 0;
    for (std::size_t r = 1; r <= workers; ++r) {
        room += limit[r] - busy[r];
        alive += limit[r] != 0 ? 1 : 0;
    }
    std::vector<detail::remote_job*> taken;
    if (alive == 0) {
        // Every rank failed: what waits here can never run.
        {
            std::lock_guard lock(mutex);
            taken.assign(queue.begin(), queue.end());
            queue.clear();
        }
        auto e = std::make_exception_ptr(rank_failed_error(-1, "hop::mpi: no worker rank is left to run the job"));
        for (auto* j : taken) {
            j->fail(e);
            j->release_job();
        }
        return taken.size();
    }
    if (room == 0) return 0;
    {
        std::lock_guard lock(mutex);
        while (!queue.empty() && taken.size() < room) {
            taken.push_back(queue.front());
            queue.pop_front();
        }
    }
    if (taken.empty()) return 0;
    std::vector<std::string> batch(workers + 1);
    std::size_t released = 0;
    for (auto* j : taken) {
        if (!j->start()) {  // cancelled while it waited here
            j->release_job();
            ++released;
            continue;
        }
        // The rank with the most free slots; ties go round the ranks.
        int best = 0;
        std::size_t best_room = 0;
        for (std::size_t k = 0; k < workers; ++k) {
            std::size_t r = 1 + (next_rank + k) % workers;
            if (limit[r] - busy[r] > best_room) {
                best_room = limit[r] - busy[r];
                best = static_cast<int>(r);
            }
        }
        next_rank = (next_rank + 1) % static_cast<unsigned>(workers);
        const std::uint64_t id = next_id++;
        writer w(batch[static_cast<std::size_t>(best)]);
        w.write(id);
        w.write(j->fn->name);
        w.write(j->fn->signature);
        w.write(static_cast<std::uint8_t>(j->each ? 1 : 0));
        w.write(j->args);
        std::string().swap(j->args);  // a 64 MiB argument is not kept twice
        in_flight.emplace(id, flight{j, best});
        ++busy[static_cast<std::size_t>(best)];
    }
    for (std::size_t r = 1; r <= workers; ++r) {
        if (batch[r].empty()) continue;
        try {
            send_bytes(sends, std::move(batch[r]), static_cast<int>(r), detail::tag_jobs);
        } catch (...) {
            fail_rank(static_cast<int>(r), std::current_exception());
        }
    }
    return released;
}

void executor::impl::fail_rank(int r, const char* call, int code) {
    try {
        throw_mpi(call, code);
    } catch (...) {
        fail_rank(r, std::current_exception());
    }
}

void executor::impl::fail_rank(int r, const std::exception_ptr& e) {
    std::exception_ptr err = e;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        err = std::make_exception_ptr(
            rank_failed_error(r, "hop::mpi: rank " + std::to_string(r) + " cannot be reached: " + x.what()));
    } catch (...) {
    }
    // First, so that whoever sees a future fail sees the rank gone.
    const auto ri = static_cast<std::size_t>(r);
    busy[ri] = 0;
    capacity.fetch_sub(limit[ri], std::memory_order_relaxed);
    limit[ri] = 0;      // sends nothing more there
    failed[ri] = true;  // and ignores what still comes from there
    std::size_t released = 0;
    for (auto it = in_flight.begin(); it != in_flight.end();) {
        if (it->second.rank != r) {
            ++it;
            continue;
        }
        it->second.job->fail(err);
        it->second.job->release_job();
        ++released;
        it = in_flight.erase(it);
    }
    std::lock_guard lock(mutex);
    outstanding -= released;
    if (outstanding == 0) drained.notify_all();
}

std::size_t executor::impl::collect() {
    std::size_t released = 0;
    std::string msg;
    MPI_Status st;
    while (try_receive(MPI_ANY_SOURCE, detail::tag_results, msg, st)) {
        // Answers from a rank that failed: its jobs have failed already.
        if (st.MPI_SOURCE > 0 && static_cast<std::size_t>(st.MPI_SOURCE) <= workers && failed[static_cast<std::size_t>(st.MPI_SOURCE)]) continue;
        reader in(msg.data(), msg.size());
        while (in.remaining() != 0) {
            auto id = in.read<std::uint64_t>();
            auto failed = in.read<std::uint8_t>();
            auto len = in.read<std::uint64_t>();
            auto it = in_flight.find(id);
            if (it == in_flight.end()) throw std::logic_error("hop::mpi: a reply for job " + std::to_string(id) + " that is not in flight");
            auto* j = it->second.job;
            const int r = it->second.rank;
            const char* p = in.position();
            in.skip(static_cast<std::size_t>(len));
            if (failed) {
                j->fail(std::make_exception_ptr(remote_error(r, j->fn->name, std::string(p, static_cast<std::size_t>(len)))));
            } else {
                reader payload(p, static_cast<std::size_t>(len));
                j->deliver(payload);
            }
            j->release_job();
            ++released;
            --busy[static_cast<std::size_t>(r)];
            in_flight.erase(it);
        }
    }
    return released;
}

bool executor::impl::reap() {
    bool any = false;
    while (!sends.empty()) {
        auto& o = sends.front();
        int flag = 0;
        const int code = test_send(o, flag);
        if (code != MPI_SUCCESS) {
            // The send's fate is unknown: the request is let go (an error
            // freeing it changes nothing) and the buffer kept till the end.
            MPI_Request_free(&o.request);
            const int dest = o.dest;
            abandoned.push_back(std::move(o.data));
            sends.pop_front();
            fail_rank(dest, "MPI_Test", code);
            any = true;
            continue;
        }
        if (!flag) break;
        sends.pop_front();
        any = true;
    }
    return any;
}

step_result executor::impl::step() {
    std::size_t released = dispatch();
    bool moved = reap();
    released += collect();
    moved |= released != 0;
    std::lock_guard lock(mutex);
    outstanding -= released;
    if (outstanding == 0) drained.notify_all();
    if (finish && outstanding == 0 && queue.empty()) return step_result::done;
    if (in_flight.empty() && sends.empty() && queue.empty() && !finish) {
        sleeping = true;
        return step_result::park;
    }
    return moved ? step_result::moved : step_result::idle;
}

void executor::impl::run_progress_thread() {
    backoff idle;
    for (;;) {
        const step_result r = step();
        if (r == step_result::done) return;
        if (r == step_result::park) {
            std::unique_lock lock(mutex);
            wake.wait(lock, [&] { return !queue.empty() || finish; });
            sleeping = false;
            idle.reset();
        } else if (r == step_result::moved) {
            idle.reset();
        } else {
            idle.idle(idle_cap());
        }
    }
}

// The same steps from a task on an io_loop: MPI_Test/MPI_Improbe polled
// between the loop's events, the loop's timers for the back-off, a
// hop::event (set by the submitting thread) to wake from park.
task<void> executor::impl::run_progress_loop() {
    io_loop& loop = *current_loop();
    backoff idle;
    for (;;) {
        const step_result r = step();
        if (r == step_result::done) co_return;
        if (r == step_result::park) {
            co_await parked.wait();
            parked.reset();
            std::lock_guard lock(mutex);
            sleeping = false;
            idle.reset();
            continue;
        }
        if (r == step_result::moved) {
            idle.reset();
            continue;
        }
        auto d = idle.next(idle_cap());
        if (d.count() != 0) {
            co_await hop::sleep_for(d);
        } else {
            co_await yield_to{loop};
        }
    }
}

void executor::impl::stop_workers() {
    for (std::size_t r = 1; r <= workers; ++r) {
        try {
            send_bytes(sends, std::string(), static_cast<int>(r), detail::tag_stop);
        } catch (...) {
            if (!failed[r]) throw;  // a rank that failed already may not be reachable
        }
    }
    backoff idle;
    while (!sends.empty()) {
        if (!reap()) idle.idle(std::chrono::microseconds(200));
    }
}

// ---- worker ranks -------------------------------------------------------------

namespace {

/// A worker rank: receives batches from rank 0, runs each job on its pool,
/// sends the answers back as the pool finishes them.
class worker {
public:
    worker(std::size_t threads, progress_mode mode) : m_pool(threads), m_mode(mode) {}

    void serve() {
        if (m_mode == progress_mode::loop) {
            hop::run(serve_loop());
        } else {
            serve_thread();
        }
        m_pool.shutdown(true);
    }

private:
    /// Receives batches, sends the pool's answers, reaps sends: once.
    step_result step() {
        bool moved = reap_sends(m_sends);
        std::string msg;
        MPI_Status st;
        while (!m_stop && try_receive(0, MPI_ANY_TAG, msg, st)) {
            moved = true;
            if (st.MPI_TAG == detail::tag_stop) {
                m_stop = true;
            } else {
                start_batch(std::make_shared<std::string>(std::move(msg)));
            }
        }
        moved |= flush();
        if (m_stop && m_running == 0 && m_sends.empty()) return step_result::done;
        return moved ? step_result::moved : step_result::idle;
    }

    /// Sends what the pool has answered since the last call, in one message.
    bool flush() {
        std::string answers;
        std::size_t answered = 0;
        {
            std::lock_guard lock(m_mutex);
            answers.swap(m_answers);
            answered = std::exchange(m_answered, 0);
            m_flush_posted = false;
        }
        if (answered == 0) return false;
        m_running -= answered;
        send_bytes(m_sends, std::move(answers), 0, detail::tag_results);
        return true;
    }

    // An idle rank and one whose pool has a backlog poll MPI slowly
    // (answers wake the progress thread at once); a rank with idle threads
    // and jobs in flight polls fast for the next batch.
    std::chrono::microseconds idle_cap() const noexcept {
        const bool hungry = m_running != 0 && m_running < 2 * m_pool.size();
        return hungry ? std::chrono::microseconds(50) : std::chrono::microseconds(1000);
    }

    void serve_thread() {
        backoff idle;
        for (;;) {
            const step_result r = step();
            if (r == step_result::done) return;
            if (r == step_result::moved) {
                idle.reset();
                continue;
            }
            auto d = idle.next(idle_cap());
            if (d.count() != 0) {
                // An answer from the pool wakes this thread at once; MPI is polled when the wait ends.
                std::unique_lock lock(m_mutex);
                m_sleeping = true;
                m_woken.wait_for(lock, d, [&] { return m_answered != 0; });
                m_sleeping = false;
            }
        }
    }

    // The same steps from a task on an io_loop: the pool's answers are
    // posted to the loop, which sends them at once (flush); MPI is polled
    // between the loop's events with the loop's timers for the back-off.
    task<void> serve_loop() {
        m_loop = current_loop();
        backoff idle;
        for (;;) {
            if (m_loop_error) std::rethrow_exception(m_loop_error);
            const step_result r = step();
            if (r == step_result::done) break;
            if (r == step_result::moved) {
                idle.reset();
                co_await yield_to{*m_loop};
                continue;
            }
            auto d = idle.next(idle_cap());
            if (d.count() != 0) {
                co_await hop::sleep_for(d);
            } else {
                co_await yield_to{*m_loop};
            }
        }
        // Pool threads may still be posting a flush (of nothing): no post after this.
        std::lock_guard lock(m_mutex);
        m_loop = nullptr;
    }

private:
    void start_batch(std::shared_ptr<std::string> batch) {
        reader in(batch->data(), batch->size());
        while (in.remaining() != 0) {
            auto id = in.read<std::uint64_t>();
            auto name = in.read<std::string>();
            auto signature = in.read<std::string>();
            bool each = in.read<std::uint8_t>() != 0;
            auto len = in.read<std::uint64_t>();
            const char* args = in.position();
            in.skip(static_cast<std::size_t>(len));
            ++m_running;
            const auto* fn = detail::find_function(name);
            if (fn == nullptr) {
                answer(id, true, "no function is registered under the name '" + name +
                                     "' on this rank (every rank must run the same binary and construct the same "
                                     "hop::mpi::function objects)");
                continue;
            }
            if (fn->signature != signature) {
                answer(id, true, "'" + name + "' is registered with signature " + fn->signature +
                                     " on this rank but " + signature + " on rank 0");
                continue;
            }
            m_pool.post([this, batch, id, fn, each, args, len] {
                std::string out;
                try {
                    reader r(args, static_cast<std::size_t>(len));
                    (each ? fn->call_each : fn->call)(*fn, r, out);
                } catch (const std::exception& e) {
                    answer(id, true, describe(e));
                    return;
                } catch (...) {
                    answer(id, true, "an exception that is not a std::exception");
                    return;
                }
                answer(id, false, out);
            });
        }
    }

    /// "what() (std::range_error)": the message and the exception's type.
    static std::string describe(const std::exception& e) {
        int status = 0;
        std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status),
                                                    &std::free);
        return std::string(e.what()) + " (" + (status == 0 && name ? name.get() : typeid(e).name()) + ")";
    }

    void answer(std::uint64_t id, bool failed, const std::string& payload) {
        std::string rec;
        writer w(rec);
        w.write(id);
        w.write(static_cast<std::uint8_t>(failed ? 1 : 0));
        w.write(payload);
        std::unique_lock lock(m_mutex);
        m_answers += rec;
        ++m_answered;
        if (m_mode == progress_mode::loop) {
            // One flush posted at a time: answers that come meanwhile join its message.
            if (m_flush_posted || m_loop == nullptr) return;
            m_flush_posted = true;
            m_loop->post([this] {
                try {
                    flush();
                } catch (...) {  // serve_loop() rethrows it
                    m_loop_error = std::current_exception();
                }
            });
            return;
        }
        const bool wake = m_sleeping;
        m_sleeping = false;
        lock.unlock();
        if (wake) m_woken.notify_one();
    }

    cpu_pool m_pool;
    const progress_mode m_mode;
    // The progress thread's own.
    std::size_t m_running = 0;  // received, not yet answered
    std::deque<outgoing> m_sends;
    bool m_stop = false;
    // Under m_mutex.
    std::mutex m_mutex;
    std::string m_answers;
    std::size_t m_answered = 0;
    bool m_sleeping = false;        // thread mode: the progress thread waits on m_woken
    bool m_flush_posted = false;    // loop mode: a flush is queued on m_loop
    io_loop* m_loop = nullptr;      // loop mode: the progress thread's loop while it serves
    std::exception_ptr m_loop_error;  // loop mode: a posted flush failed (the loop's thread only)
    std::condition_variable m_woken;
};

}  // namespace

// ---- run ----------------------------------------------------------------------

int run(int& argc, char**& argv, std::function<int(executor&)> fn) {
    if (g_started.exchange(true)) throw std::logic_error("hop::mpi::run: called twice in one process (MPI starts once)");
    const std::size_t threads = threads_from_env();
    const progress_mode mode = progress_from_env();

    executor::impl state;
    std::promise<void> ready;
    auto ready_f = ready.get_future();
    std::exception_ptr failure;
    int world = 0;
    std::thread progress([&] {
        tighten_timer_slack();
        try {
            int provided = 0;
            check("MPI_Init_thread", MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided));
            if (provided < MPI_THREAD_FUNNELED) {
                throw std::runtime_error("hop::mpi: the MPI library offers only MPI_THREAD_SINGLE; hop needs "
                                         "MPI_THREAD_FUNNELED (all MPI calls from one thread of many)");
            }
            check("MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
            int me = 0;
            check("MPI_Comm_rank", MPI_Comm_rank(MPI_COMM_WORLD, &me));
            check("MPI_Comm_size", MPI_Comm_size(MPI_COMM_WORLD, &world));
            g_rank.store(me);
            int mine = static_cast<int>(threads);
            std::vector<int> all(me == 0 ? static_cast<std::size_t>(world) : 1);
            check("MPI_Gather", MPI_Gather(&mine, 1, MPI_INT, all.data(), 1, MPI_INT, 0, MPI_COMM_WORLD));
            if (me == 0) {
                state.workers = static_cast<std::size_t>(world - 1);
                state.mode = mode;
                state.limit.assign(static_cast<std::size_t>(world), 0);
                state.busy.assign(static_cast<std::size_t>(world), 0);
                state.failed.assign(static_cast<std::size_t>(world), false);
                for (int r = 1; r < world; ++r) {
                    state.limit[static_cast<std::size_t>(r)] = static_cast<std::size_t>(all[static_cast<std::size_t>(r)]) * jobs_per_thread;
                    state.capacity += state.limit[static_cast<std::size_t>(r)];
                    state.threads += static_cast<std::size_t>(all[static_cast<std::size_t>(r)]);
                }
                {
                    std::lock_guard lock(state.mutex);
                    state.progress_id = std::this_thread::get_id();
                }
                ready.set_value();
                if (mode == progress_mode::loop) {
                    hop::run(state.run_progress_loop());
                } else {
                    state.run_progress_thread();
                }
                state.stop_workers();
            } else {
                ready.set_value();
                worker w(threads, mode);
                w.serve();
            }
        } catch (...) {
            failure = std::current_exception();
            try {
                ready.set_exception(failure);
            } catch (const std::future_error&) {  // already set: the failure came later
            }
            // A rank that cannot go on takes the job down rather than leaving the others waiting for it.
            int up = 0;
            if (MPI_Initialized(&up) == MPI_SUCCESS && up) MPI_Abort(MPI_COMM_WORLD, 1);
            return;
        }
        MPI_Finalize();
    });

    try {
        ready_f.get();
    } catch (...) {
        progress.join();
        throw;
    }
    int result = 0;
    std::exception_ptr user_error;
    if (g_rank.load() == 0) {
        executor ex(&state);
        try {
            result = fn(ex);
            ex.shutdown(true);
        } catch (...) {
            user_error = std::current_exception();
            ex.shutdown(true, true);
        }
        {
            std::lock_guard lock(state.mutex);
            state.finish = true;
            state.sleeping = false;
        }
        state.wake_progress();
    }
    progress.join();
    if (user_error) std::rethrow_exception(user_error);
    if (failure) std::rethrow_exception(failure);
    return result;
}

}  // namespace hop::mpi
