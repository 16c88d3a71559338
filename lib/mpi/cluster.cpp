// hop::mpi::run and the executor: one progress thread per process makes
// every MPI call (it also calls MPI_Init_thread and MPI_Finalize, so
// MPI_THREAD_FUNNELED is all it asks for: no other thread touches MPI, and
// MPI_THREAD_MULTIPLE would cost OpenMPI a lock on every call). Rank 0's
// progress thread sends queued jobs in batches, at most `limit` unanswered
// per rank, and completes futures from the replies; a worker's progress
// thread hands jobs to its cpu_pool and sends back what the pool finished.
// User threads, io_loops and pool workers only take a mutex to queue.

#include <hop/cpu_pool.hpp>
#include <hop/mpi.hpp>

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
    std::string data;
};

/// Isends `data` to `dest` and keeps the buffer until MPI is done with it.
void send_bytes(std::deque<outgoing>& sends, std::string data, int dest, int tag) {
    if (data.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
        throw std::length_error("hop::mpi: a message of " + std::to_string(data.size()) +
                                " bytes is over MPI's limit of 2 GiB - 1 per message");
    }
    sends.emplace_back();
    auto& o = sends.back();
    o.data = std::move(data);
    int code = MPI_Isend(o.data.data(), static_cast<int>(o.data.size()), MPI_BYTE, dest, tag, MPI_COMM_WORLD, &o.request);
    if (code != MPI_SUCCESS) {
        sends.pop_back();
        throw_mpi("MPI_Isend", code);
    }
}

/// Tests the oldest sends; returns whether any finished.
bool reap_sends(std::deque<outgoing>& sends) {
    bool any = false;
    while (!sends.empty()) {
        int flag = 0;
        check("MPI_Test", MPI_Test(&sends.front().request, &flag, MPI_STATUS_IGNORE));
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

// ---- rank 0 ------------------------------------------------------------------

struct executor::impl {
    // Shared with submitting threads, under `mutex`.
    std::mutex mutex;
    std::condition_variable wake;     // the progress thread sleeps on it when it has nothing in flight
    std::condition_variable drained;  // shutdown(true) waits on it
    std::deque<detail::remote_job*> queue;
    std::size_t outstanding = 0;  // queued or in flight
    bool sleeping = false;
    bool closed = false;  // shutdown() was called
    bool finish = false;  // run()'s function returned: stop the workers once drained
    std::thread::id progress_id;

    // Set at start-up, then read-only.
    std::size_t workers = 0;
    std::vector<std::size_t> limit;  // per rank (index 0 unused)
    std::size_t capacity = 0;
    std::size_t threads = 0;  // of every worker's pool

    // The progress thread's own.
    struct flight {
        detail::remote_job* job;
        int rank;
    };
    std::unordered_map<std::uint64_t, flight> in_flight;
    std::vector<std::size_t> busy;  // per rank
    std::uint64_t next_id = 1;
    std::deque<outgoing> sends;
    unsigned next_rank = 0;

    void run_progress();
    /// True if every live rank holds at least two jobs per thread.
    bool fed() const noexcept {
        for (std::size_t r = 1; r <= workers; ++r) {
            if (limit[r] != 0 && busy[r] * jobs_per_thread < limit[r] * 2) return false;
        }
        return true;
    }
    std::size_t dispatch();
    std::size_t collect();
    void fail_rank(int r, const std::exception_ptr& e);
};

std::size_t executor::size() const noexcept { return m_impl->workers; }
std::size_t executor::capacity() const noexcept { return m_impl->capacity; }
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
            if (wake) s.wake.notify_one();
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

void executor::impl::fail_rank(int r, const std::exception_ptr& e) {
    std::exception_ptr err = e;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        err = std::make_exception_ptr(
            rank_failed_error(r, "hop::mpi: rank " + std::to_string(r) + " cannot be reached: " + x.what()));
    } catch (...) {
    }
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
    busy[static_cast<std::size_t>(r)] = 0;
    limit[static_cast<std::size_t>(r)] = 0;  // sends nothing more there
    std::lock_guard lock(mutex);
    outstanding -= released;
    if (outstanding == 0) drained.notify_all();
}

std::size_t executor::impl::collect() {
    std::size_t released = 0;
    std::string msg;
    MPI_Status st;
    while (try_receive(MPI_ANY_SOURCE, detail::tag_results, msg, st)) {
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

void executor::impl::run_progress() {
    backoff idle;
    for (;;) {
        std::size_t released = 0;
        bool moved = false;
        released += dispatch();
        moved |= reap_sends(sends);
        std::size_t got = collect();
        released += got;
        moved |= got != 0 || released != 0;
        {
            std::unique_lock lock(mutex);
            outstanding -= released;
            if (outstanding == 0) drained.notify_all();
            if (finish && outstanding == 0 && queue.empty()) break;
            if (in_flight.empty() && sends.empty() && queue.empty()) {
                sleeping = true;
                wake.wait(lock, [&] { return !queue.empty() || finish; });
                sleeping = false;
                idle.reset();
                continue;
            }
        }
        if (moved) {
            idle.reset();
        } else {
            // Every rank has a backlog beyond its threads: the replies can
            // wait a little longer, and the polls cost the workers CPU.
            idle.idle(fed() ? std::chrono::microseconds(500) : std::chrono::microseconds(50));
        }
    }
    for (std::size_t r = 1; r <= workers; ++r) send_bytes(sends, std::string(), static_cast<int>(r), detail::tag_stop);
    while (!sends.empty()) {
        if (!reap_sends(sends)) idle.idle(std::chrono::microseconds(200));
    }
}

// ---- worker ranks -------------------------------------------------------------

namespace {

/// A worker rank: receives batches from rank 0, runs each job on its pool,
/// sends the answers back as the pool finishes them.
class worker {
public:
    explicit worker(std::size_t threads) : m_pool(threads) {}

    void serve() {
        backoff idle;
        std::deque<outgoing> sends;
        std::string msg;
        bool stop = false;
        for (;;) {
            bool moved = reap_sends(sends);
            MPI_Status st;
            while (!stop && try_receive(0, MPI_ANY_TAG, msg, st)) {
                moved = true;
                if (st.MPI_TAG == detail::tag_stop) {
                    stop = true;
                } else {
                    start_batch(std::make_shared<std::string>(std::move(msg)));
                }
            }
            std::string answers;
            std::size_t answered = 0;
            {
                std::lock_guard lock(m_mutex);
                answers.swap(m_answers);
                answered = std::exchange(m_answered, 0);
            }
            if (answered != 0) {
                m_running -= answered;
                send_bytes(sends, std::move(answers), 0, detail::tag_results);
                moved = true;
            }
            if (stop && m_running == 0 && sends.empty()) break;
            if (moved) {
                idle.reset();
                continue;
            }
            // An idle rank and one whose pool has a backlog poll MPI slowly
            // (answers wake this thread at once); a rank with idle threads
            // and jobs in flight polls fast for the next batch.
            const bool hungry = m_running != 0 && m_running < 2 * m_pool.size();
            auto d = idle.next(hungry ? std::chrono::microseconds(50) : std::chrono::microseconds(1000));
            if (d.count() != 0) {
                // An answer from the pool wakes this thread at once; MPI is polled when the wait ends.
                std::unique_lock lock(m_mutex);
                m_sleeping = true;
                m_woken.wait_for(lock, d, [&] { return m_answered != 0; });
                m_sleeping = false;
            }
        }
        m_pool.shutdown(true);
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
        const bool wake = m_sleeping;
        m_sleeping = false;
        lock.unlock();
        if (wake) m_woken.notify_one();
    }

    cpu_pool m_pool;
    std::size_t m_running = 0;  // the progress thread's: received, not yet answered
    std::mutex m_mutex;
    std::string m_answers;  // under m_mutex
    std::size_t m_answered = 0;
    bool m_sleeping = false;  // the progress thread waits on m_woken
    std::condition_variable m_woken;
};

}  // namespace

// ---- run ----------------------------------------------------------------------

int run(int& argc, char**& argv, std::function<int(executor&)> fn) {
    if (g_started.exchange(true)) throw std::logic_error("hop::mpi::run: called twice in one process (MPI starts once)");
    const std::size_t threads = threads_from_env();

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
                state.limit.assign(static_cast<std::size_t>(world), 0);
                state.busy.assign(static_cast<std::size_t>(world), 0);
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
                state.run_progress();
            } else {
                ready.set_value();
                worker w(threads);
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
        state.wake.notify_one();
    }
    progress.join();
    if (user_error) std::rethrow_exception(user_error);
    if (failure) std::rethrow_exception(failure);
    return result;
}

}  // namespace hop::mpi
