#pragma once
/// @file
/// hop::mpi — the executor API over MPI ranks (mpi4py.futures'
/// MPIPoolExecutor, natively). Rank 0 runs the program; every other rank
/// serves jobs on its own hop::cpu_pool until rank 0 is done. Futures are
/// ordinary hop::future<R>: as_completed, wait, with_timeout and co_await
/// work on them. Link with pkg-config `hop-mpi`; start with mpirun.
///
/// @code
/// static std::uint64_t count_impl(std::uint64_t n) { ... }
/// static hop::mpi::function<std::uint64_t(std::uint64_t)> count{"count", &count_impl};
/// int main(int argc, char** argv) {
///     return hop::mpi::run(argc, argv, [](hop::mpi::executor& cluster) {
///         std::vector<std::uint64_t> v = cluster.map(count, limits).get();  // input order
///         return 0;
///     });
/// }
/// // mpirun -n 4 ./app
/// @endcode

#include <hop/future.hpp>

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <ranges>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace hop::mpi {

/// A job that threw on a worker rank, rethrown on rank 0: what() reads
/// "hop::mpi: 'NAME' failed on rank R: MESSAGE".
class remote_error : public std::runtime_error {
public:
    /// Made on rank 0 from a worker's answer.
    remote_error(int rank, std::string function, std::string message);
    /// The rank the job ran on.
    int rank() const noexcept { return m_rank; }
    /// The registered name of the function.
    const std::string& function() const noexcept { return m_function; }
    /// The remote exception's own what() (prefixed with its type when known).
    const std::string& message() const noexcept { return m_message; }

private:
    int m_rank;
    std::string m_function;
    std::string m_message;
};

/// A rank (or the MPI library) failed: every job in flight on that rank
/// ends with this error. rank() is -1 when MPI could not say which.
class rank_failed_error : public std::runtime_error {
public:
    /// `rank`: the failed rank, or -1.
    rank_failed_error(int rank, const std::string& what) : std::runtime_error(what), m_rank(rank) {}
    /// The failed rank, or -1 when MPI could not say which.
    int rank() const noexcept { return m_rank; }

private:
    int m_rank;
};

/// Appends values to a byte buffer (see hop::mpi::serializable).
class writer {
public:
    /// Appends to `out`.
    explicit writer(std::string& out) noexcept : m_out(&out) {}
    /// Appends `n` raw bytes.
    void write_bytes(const void* p, std::size_t n) { m_out->append(static_cast<const char*>(p), n); }
    /// Appends a serializable value (what reader::read<T>() reads back).
    template <class T>
    void write(const T& v);

private:
    std::string* m_out;
};

/// Reads values back in the order they were written.
/// @throws std::length_error (naming the sizes) when the data runs out.
class reader {
public:
    /// Reads the `n` bytes at `p`.
    reader(const char* p, std::size_t n) noexcept : m_p(p), m_end(p + n) {}
    /// Copies the next `n` bytes to `out`.
    void read_bytes(void* out, std::size_t n) {
        need(n);
        if (n != 0) std::memcpy(out, m_p, n);
        m_p += n;
    }
    /// The next value, of a serializable type.
    template <class T>
    T read();
    /// Steps over `n` bytes.
    void skip(std::size_t n) {
        need(n);
        m_p += n;
    }
    /// The next unread byte.
    const char* position() const noexcept { return m_p; }
    /// How many bytes are left.
    std::size_t remaining() const noexcept { return static_cast<std::size_t>(m_end - m_p); }
    /// @throws std::length_error unless `n` more bytes are left.
    void need(std::size_t n) const;

private:
    const char* m_p;
    const char* m_end;
};

namespace detail {
template <class T>
struct is_vector : std::false_type {};
template <class T, class A>
struct is_vector<std::vector<T, A>> : std::true_type {};
}  // namespace detail

/// A user type that carries its own wire form: a const member
/// `void serialize(hop::mpi::writer&) const` and a static
/// `T deserialize(hop::mpi::reader&)` that reads the same fields in the
/// same order:
/// @code
/// struct sample {
///     std::string name; std::vector<double> xs;
///     void serialize(hop::mpi::writer& w) const { w.write(name); w.write(xs); }
///     static sample deserialize(hop::mpi::reader& r) {
///         sample s; s.name = r.read<std::string>(); s.xs = r.read<std::vector<double>>(); return s;
///     }
/// };
/// @endcode
template <class T>
concept user_serializable = requires(const T& v, writer& w, reader& r) {
    v.serialize(w);
    { T::deserialize(r) } -> std::same_as<T>;
};

/// What can be an argument or a result: a user_serializable type, a
/// std::string, a std::vector of serializable values, or a trivially
/// copyable type that is not a pointer (copied byte for byte: every rank
/// must run the same binary on the same architecture, as under mpirun).
template <class T>
concept serializable =
    user_serializable<T> || std::is_same_v<T, std::string> ||
    (detail::is_vector<T>::value && requires { typename T::value_type; }) ||
    (std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> && !std::is_member_pointer_v<T>);

template <class T>
void writer::write(const T& v) {
    static_assert(serializable<T>, "hop::mpi: this type cannot be sent; see hop::mpi::serializable");
    if constexpr (user_serializable<T>) {
        v.serialize(*this);
    } else if constexpr (std::is_same_v<T, std::string>) {
        write(static_cast<std::uint64_t>(v.size()));
        write_bytes(v.data(), v.size());
    } else if constexpr (detail::is_vector<T>::value) {
        using E = typename T::value_type;
        write(static_cast<std::uint64_t>(v.size()));
        if constexpr (std::is_trivially_copyable_v<E> && !user_serializable<E>) {
            write_bytes(v.data(), v.size() * sizeof(E));
        } else {
            for (const E& e : v) write(e);
        }
    } else {
        write_bytes(std::addressof(v), sizeof(T));
    }
}

template <class T>
T reader::read() {
    static_assert(serializable<T>, "hop::mpi: this type cannot be received; see hop::mpi::serializable");
    if constexpr (user_serializable<T>) {
        return T::deserialize(*this);
    } else if constexpr (std::is_same_v<T, std::string>) {
        auto n = read<std::uint64_t>();
        need(n);
        std::string s(m_p, static_cast<std::size_t>(n));
        m_p += n;
        return s;
    } else if constexpr (detail::is_vector<T>::value) {
        using E = typename T::value_type;
        auto n = read<std::uint64_t>();
        T v;
        if constexpr (std::is_trivially_copyable_v<E> && !user_serializable<E>) {
            if (n > remaining() / (sizeof(E) == 0 ? 1 : sizeof(E))) need(n * sizeof(E));
            v.resize(static_cast<std::size_t>(n));
            read_bytes(v.data(), v.size() * sizeof(E));
        } else {
            for (std::uint64_t i = 0; i < n; ++i) v.push_back(read<E>());
        }
        return v;
    } else {
        static_assert(std::is_default_constructible_v<T> || std::is_trivially_copyable_v<T>);
        alignas(T) unsigned char raw[sizeof(T)];
        read_bytes(raw, sizeof(T));
        T out;
        std::memcpy(static_cast<void*>(std::addressof(out)), raw, sizeof(T));
        return out;
    }
}

class executor;

namespace detail {

using hop::detail::future_state;
using hop::detail::future_state_base;
using hop::detail::future_status;

/// The registry's view of a function: its name, its signature (compared
/// between ranks) and how to run it on a serialized argument block.
struct function_entry {
    std::string name;
    std::string signature;
    /// Reads the arguments from `in`, calls the function, appends the result to `out`.
    void (*call)(const function_entry&, reader& in, std::string& out) = nullptr;
    /// Reads a vector of single arguments, appends the vector of results.
    void (*call_each)(const function_entry&, reader& in, std::string& out) = nullptr;
    void* impl = nullptr;
};

/// Registers `e` under its name.
/// @throws std::logic_error if another function already has that name.
void register_function(function_entry* e);
void unregister_function(function_entry* e) noexcept;

/// A job queued on rank 0: a future state plus how to deliver its reply.
class remote_job {
public:
    virtual ~remote_job() = default;
    /// pending -> running, or false if it was cancelled (then release()).
    virtual bool start() noexcept = 0;
    /// Decodes the reply (a result) and completes the future.
    virtual void deliver(reader& in) noexcept = 0;
    /// Completes the future with `e`.
    virtual void fail(std::exception_ptr e) noexcept = 0;
    /// Drops the executor's reference.
    virtual void release_job() noexcept = 0;

    const function_entry* fn = nullptr;
    bool each = false;      // a map chunk: call_each, not call
    std::string args;       // the serialized arguments
};

template <class T>
T read_result(reader& in) {
    if constexpr (!std::is_void_v<T>) return in.template read<T>();
}

/// submit()'s job: the future state and the queue entry in one allocation.
template <class R>
class call_job final : public future_state<R>, public remote_job {
public:
    call_job() : future_state<R>(&call_job::destroy, 2) {}
    bool start() noexcept override { return this->try_start(); }
    void deliver(reader& in) noexcept override {
        try {
            if constexpr (std::is_void_v<R>) {
                this->set_value();
            } else {
                this->set_value(in.template read<R>());
            }
        } catch (...) {
            this->complete_with_error(std::current_exception());
        }
    }
    void fail(std::exception_ptr e) noexcept override { this->complete_with_error(std::move(e)); }
    void release_job() noexcept override { this->release(); }

private:
    static void destroy(future_state_base* s) noexcept { delete static_cast<call_job*>(static_cast<future_state<R>*>(s)); }
};

/// map()'s shared state: one result slot per item, one remote_job per chunk.
template <class R>
class map_job final : public future_state<std::vector<R>> {
public:
    class chunk final : public remote_job {
    public:
        bool start() noexcept override {
            m_owner->try_start();
            return m_owner->status() == future_status::running && !m_owner->stop_source().stop_requested();
        }
        void deliver(reader& in) noexcept override {
            try {
                auto n = in.template read<std::uint64_t>();
                if (n != m_end - m_begin) throw std::length_error("hop::mpi::map: a chunk's reply has the wrong length");
                for (std::size_t i = m_begin; i < m_end; ++i) m_owner->m_results[i] = in.template read<R>();
            } catch (...) {
                m_owner->record(m_begin, std::current_exception());
            }
        }
        void fail(std::exception_ptr e) noexcept override { m_owner->record(m_begin, std::move(e)); }
        void release_job() noexcept override { m_owner->chunk_done(); }

        map_job* m_owner = nullptr;
        std::size_t m_begin = 0, m_end = 0;
    };

    map_job(std::size_t items, std::size_t chunks)
        : future_state<std::vector<R>>(&map_job::destroy, 2), m_results(items), m_chunks(chunks) {
        this->enable_stop();
        m_remaining.store(chunks, std::memory_order_relaxed);
    }
    std::vector<chunk>& chunks() noexcept { return m_chunks; }

private:
    static void destroy(future_state_base* s) noexcept {
        delete static_cast<map_job*>(static_cast<future_state<std::vector<R>>*>(s));
    }
    // Only the progress thread calls record() and chunk_done(): no lock.
    void record(std::size_t begin, std::exception_ptr e) noexcept {
        if (begin < m_failure_at) {
            m_failure_at = begin;
            m_failure = std::move(e);
        }
    }
    void chunk_done() noexcept {
        if (m_remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        this->try_start();
        if (this->status() == future_status::running) {
            if (m_failure) {
                this->complete_with_error(m_failure);
            } else if (this->stop_source().stop_requested()) {
                this->complete_with_error(std::make_exception_ptr(cancelled_error("hop::mpi::executor::map: cancelled")));
            } else {
                try {
                    this->set_value(std::move(m_results));
                } catch (...) {
                    this->complete_with_error(std::current_exception());
                }
            }
        }
        this->release();
    }

    std::vector<R> m_results;
    std::vector<chunk> m_chunks;
    std::atomic<std::size_t> m_remaining{0};
    std::size_t m_failure_at = static_cast<std::size_t>(-1);
    std::exception_ptr m_failure;
};

template <class T>
std::string type_name() {
    return typeid(T).name();
}

}  // namespace detail

template <class Sig>
class function;

/// A function that ranks can run, registered under `name` on every rank
/// (declare it at namespace scope so every rank constructs it, as all ranks
/// run the same binary). Arguments and the result must be serializable.
/// @throws std::logic_error from the constructor if another function is
/// already registered under `name`.
template <class R, class... Args>
class function<R(Args...)> {
    static_assert((serializable<std::decay_t<Args>> && ...), "hop::mpi::function: an argument type is not serializable");
    static_assert(std::is_void_v<R> || serializable<R>, "hop::mpi::function: the result type is not serializable");

public:
    /// What the function returns.
    using result_type = R;
    /// The function's type.
    using pointer = R (*)(Args...);

    /// Registers `impl` under `name` on this rank (every rank makes the same
    /// registrations: all run the same binary).
    /// @throws std::invalid_argument for a null `impl`; std::logic_error if
    ///         another function is registered under `name`.
    function(std::string name, pointer impl) {
        if (impl == nullptr) throw std::invalid_argument("hop::mpi::function '" + name + "': the function pointer is null");
        m_entry.name = std::move(name);
        m_entry.signature = detail::type_name<R(Args...)>();
        m_entry.impl = reinterpret_cast<void*>(impl);
        m_entry.call = &call;
        m_entry.call_each = &call_each;
        detail::register_function(&m_entry);
    }
    ~function() { detail::unregister_function(&m_entry); }
    function(const function&) = delete;
    function& operator=(const function&) = delete;

    /// The registered name.
    const std::string& name() const noexcept { return m_entry.name; }
    /// Calls the function here, on this rank.
    R operator()(Args... args) const { return reinterpret_cast<pointer>(m_entry.impl)(std::forward<Args>(args)...); }

    /// The registration (for the executor).
    const detail::function_entry& entry() const noexcept { return m_entry; }

private:
    static void call(const detail::function_entry& e, reader& in, std::string& out) {
        // Braced init: the arguments are read left to right.
        std::tuple<std::decay_t<Args>...> args{in.template read<std::decay_t<Args>>()...};
        if (in.remaining() != 0) throw std::length_error("hop::mpi: '" + e.name + "': extra bytes after the arguments");
        auto fn = reinterpret_cast<pointer>(e.impl);
        writer w(out);
        if constexpr (std::is_void_v<R>) {
            std::apply(fn, std::move(args));
        } else {
            w.write(std::apply(fn, std::move(args)));
        }
    }
    static void call_each(const detail::function_entry& e, reader& in, std::string& out) {
        if constexpr (sizeof...(Args) == 1 && !std::is_void_v<R>) {
            using A = std::tuple_element_t<0, std::tuple<std::decay_t<Args>...>>;
            auto n = in.template read<std::uint64_t>();
            auto fn = reinterpret_cast<pointer>(e.impl);
            writer w(out);
            w.write(n);
            for (std::uint64_t i = 0; i < n; ++i) w.write(fn(in.template read<A>()));
        } else {
            throw std::logic_error("hop::mpi: '" + e.name + "' cannot be mapped (map needs one argument and a result)");
        }
    }

    detail::function_entry m_entry;
};

/// This process's rank in MPI_COMM_WORLD (-1 before run() has started MPI).
int rank() noexcept;

/// Rank 0's handle on the worker ranks. Thread-safe; made by run().
class executor {
public:
    executor(const executor&) = delete;
    executor& operator=(const executor&) = delete;

    /// Number of worker ranks (the world's size minus rank 0).
    std::size_t size() const noexcept;
    /// Threads of all the worker ranks' pools together.
    std::size_t worker_threads() const noexcept;
    /// How many jobs may be sent and unanswered at once, over all ranks
    /// (per rank: 8 per thread of its pool). More jobs wait on rank 0. A
    /// rank MPI reported an error for (rank_failed_error) no longer counts.
    std::size_t capacity() const noexcept;

    /// Runs `fn(args...)` on some worker rank; the future completes on
    /// rank 0's progress thread. cancel() succeeds while the job still waits
    /// on rank 0 (not yet sent); a sent job runs to its end.
    /// @throws executor_shutdown_error after shutdown().
    /// @throws std::invalid_argument if there is no worker rank.
    template <class R, class... P, class... A>
    future<R> submit(const function<R(P...)>& fn, A&&... args) {
        static_assert(sizeof...(P) == sizeof...(A), "hop::mpi::executor::submit: wrong number of arguments");
        auto* j = new detail::call_job<R>();
        j->fn = &fn.entry();
        try {
            writer w(j->args);
            (w.write(static_cast<std::decay_t<P>>(std::forward<A>(args))), ...);
        } catch (...) {
            delete j;
            throw;
        }
        auto fut = hop::detail::make_future<R>(j);
        enqueue(std::unique_ptr<detail::remote_job, job_release>(j));
        return fut;
    }

    /// Applies `fn` to every item on the worker ranks, `chunk_size` items
    /// per message (0: about four chunks per worker thread), and returns a
    /// future for the results in input order. The first failure in input
    /// order is rethrown; cancel() stops the chunks not yet sent. `R` must
    /// be default-constructible (the results are written in place).
    /// @throws executor_shutdown_error after shutdown().
    template <class R, class P, std::ranges::input_range Range>
    future<std::vector<R>> map(const function<R(P)>& fn, Range&& items, std::size_t chunk_size = 0) {
        using A = std::decay_t<P>;
        std::vector<A> in;
        for (auto&& x : items) in.push_back(static_cast<A>(x));
        const std::size_t n = in.size();
        if (chunk_size == 0) chunk_size = std::max<std::size_t>(1, n / std::max<std::size_t>(1, capacity() * 2));
        const std::size_t count = n / chunk_size + (n % chunk_size != 0 ? 1 : 0);
        auto* s = new detail::map_job<R>(n, count);
        auto fut = hop::detail::make_future<std::vector<R>>(s);
        if (n == 0) {
            s->try_start();
            s->set_value(std::vector<R>{});
            s->release();
            return fut;
        }
        std::vector<detail::remote_job*> jobs;
        for (std::size_t c = 0; c < count; ++c) {
            auto& ch = s->chunks()[c];
            ch.m_owner = s;
            ch.m_begin = c * chunk_size;
            ch.m_end = std::min(n, ch.m_begin + chunk_size);
            ch.fn = &fn.entry();
            ch.each = true;
            writer w(ch.args);
            w.write(static_cast<std::uint64_t>(ch.m_end - ch.m_begin));
            for (std::size_t i = ch.m_begin; i < ch.m_end; ++i) w.write(in[i]);
            jobs.push_back(&ch);
        }
        enqueue_all(jobs);
        return fut;
    }

    /// Stops taking work (submit and map then throw executor_shutdown_error).
    /// With `cancel_pending`, jobs not yet sent end cancelled. With `wait`,
    /// blocks until every sent job has answered. run() calls shutdown(true)
    /// when its function returns. Idempotent.
    void shutdown(bool wait = true, bool cancel_pending = false);
    /// Whether shutdown() was called.
    bool is_shutdown() const noexcept;

    struct impl;
    /// Made by run() on rank 0.
    explicit executor(impl* i) noexcept : m_impl(i) {}

private:
    struct job_release {
        void operator()(detail::remote_job* j) const noexcept { j->release_job(); }
    };
    void enqueue(std::unique_ptr<detail::remote_job, job_release> j);
    // Takes every job or none (each is released on failure).
    void enqueue_all(const std::vector<detail::remote_job*>& jobs);

    impl* m_impl;
};

/// Starts MPI (on a progress thread of its own, which makes every MPI call
/// of this process), then: on rank 0 calls `fn(executor&)` and returns its
/// result once every job has answered; on every other rank serves jobs on a
/// cpu_pool (HOP_MPI_THREADS threads, default: the cores) until rank 0 is
/// done, and returns 0. MPI is finalized before run() returns. Call it
/// once per process. HOP_MPI_PROGRESS=loop makes the progress thread poll
/// MPI from a task on an io_loop of its own instead (measured against the
/// default, HOP_MPI_PROGRESS=thread, in docs/cluster.md; it costs more CPU).
/// @throws what `fn` throws (after the workers were told to stop).
/// @throws std::logic_error if a function's registration clashed with another.
int run(int& argc, char**& argv, std::function<int(executor&)> fn);

}  // namespace hop::mpi
