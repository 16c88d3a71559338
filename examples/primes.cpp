// Counts the primes below --limit on a hop::cpu_pool: first serially, then in
// parallel three ways, with a progress bar for the first two:
//   - pool.map(fn, items), polling its future with wait_for to redraw;
//   - pool.submit(fn, args...) per range, consumed with hop::as_completed;
//   - fork-join: a coroutine that splits its ranges in two and joins both
//     halves with hop::when_all, which forks on the pool.
// Prints the times and speedups, and exits 1 unless every result matches.
// With --mpi (when hop was built with MPI), run under mpirun: rank 0 counts
// on its local pool and then across the other ranks with the cluster
// executor's map and submit, and checks that the counts are the same.
//
//   primes [--limit N] [--chunks N] [--threads N]
//   mpirun -n 4 primes --mpi [--limit N] [--chunks N] [--threads N]

#include <hop/hop.hpp>
#if HOP_PRIMES_MPI
#include <hop/mpi.hpp>
#endif

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iterator>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

struct range {
    std::uint64_t lo, hi;  // [lo, hi)
};

bool is_prime(std::uint64_t n) {
    if (n < 4) return n >= 2;
    if (n % 2 == 0) return false;
    for (std::uint64_t d = 3; d * d <= n; d += 2) {
        if (n % d == 0) return false;
    }
    return true;
}

/// The number of primes in [r.lo, r.hi), by trial division: CPU-heavy on
/// purpose.
std::uint64_t count_primes(range r) {
    std::uint64_t n = 0;
    for (std::uint64_t x = r.lo; x < r.hi; ++x) n += is_prime(x) ? 1 : 0;
    return n;
}

/// [0, limit) cut into `chunks` ranges of equal width.
std::vector<range> split(std::uint64_t limit, std::uint64_t chunks) {
    std::vector<range> out;
    for (std::uint64_t i = 0; i < chunks; ++i) out.push_back({limit * i / chunks, limit * (i + 1) / chunks});
    return out;
}

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

/// "label [#######.......] done/total" on stderr: redrawn in place on a
/// terminal, printed once when done otherwise (logs stay readable).
class progress_bar {
public:
    progress_bar(const char* label, std::size_t total) : m_label(label), m_total(total), m_tty(::isatty(2) != 0) {
        std::fflush(stdout);  // keeps stdout and the bar (on stderr) in order
        if (m_tty) draw(0);
    }
    void update(std::size_t done) {
        if (m_tty) draw(done);
    }
    void finish(std::size_t done) {
        draw(done);
        std::fputc('\n', stderr);
    }

private:
    void draw(std::size_t done) {
        constexpr std::size_t width = 40;
        std::size_t filled = m_total == 0 ? width : std::min(done, m_total) * width / m_total;
        std::string bar(filled, '#');
        bar.resize(width, '.');
        std::fprintf(stderr, "%s%-28s [%s] %zu/%zu", m_tty ? "\r" : "", m_label, bar.c_str(), done, m_total);
        std::fflush(stderr);
    }
    const char* m_label;
    std::size_t m_total;
    bool m_tty;
};

/// The serial baseline, as a coroutine: it moves itself onto the pool and
/// counts every range there, on one thread. The caller (sync_wait) resumes
/// on its own thread when it is done.
hop::task<std::vector<std::uint64_t>> count_serially(hop::cpu_pool& pool, std::vector<range> ranges) {
    co_await pool.schedule();  // from here on: one pool thread
    std::vector<std::uint64_t> counts;
    for (range r : ranges) counts.push_back(count_primes(r));
    co_return counts;
}

/// Fork-join: split the ranges in two until one is left, count both halves
/// with when_all. On a pool worker when_all forks: one half runs here, the
/// other is left on this worker's deque for an idle worker to steal (and
/// taken back and run here if nobody does).
hop::task<std::uint64_t> count_split(std::span<const range> rs) {
    if (rs.size() == 1) co_return count_primes(rs[0]);
    const std::size_t mid = rs.size() / 2;
    auto halves = co_await hop::when_all(count_split(rs.first(mid)), count_split(rs.subspan(mid)));
    co_return std::get<0>(halves) + std::get<1>(halves);
}

/// count_primes against known values of pi(10^k), each check a pool job;
/// hop::wait returns {done, not_done} like Python's concurrent.futures.wait.
bool self_check(hop::cpu_pool& pool) {
    const std::uint64_t known[] = {4, 25, 168, 1229, 9592, 78498};  // pi(10^1) .. pi(10^6)
    std::vector<hop::future<std::uint64_t>> checks;
    std::uint64_t limit = 1;
    for (std::size_t k = 0; k < std::size(known); ++k) {
        limit *= 10;
        checks.push_back(pool.submit(count_primes, range{0, limit}));
    }
    auto [done, not_done] = hop::wait(checks, hop::return_when::first_exception);
    for (const auto& f : done) f.get();  // rethrows the failure that ended the wait early, if any
    for (std::size_t k = 0; k < checks.size(); ++k) {
        if (checks[k].get() != known[k]) {
            std::fprintf(stderr, "self-check failed: pi(10^%zu) = %llu, expected %llu\n", k + 1,
                         static_cast<unsigned long long>(checks[k].get()), static_cast<unsigned long long>(known[k]));
            return false;
        }
    }
    return true;
}

/// pool.map over every range; a counter bumped by each item drives the bar.
std::vector<std::uint64_t> count_with_map(hop::cpu_pool& pool, const std::vector<range>& ranges) {
    std::atomic<std::size_t> finished{0};
    auto count_one = [&finished](range r) {
        std::uint64_t n = count_primes(r);
        finished.fetch_add(1, std::memory_order_relaxed);
        return n;
    };
    progress_bar bar("pool.map", ranges.size());
    hop::future<std::vector<std::uint64_t>> all = pool.map(count_one, ranges);
    while (!all.wait_for(50ms)) bar.update(finished.load(std::memory_order_relaxed));  // redraw pacing
    std::vector<std::uint64_t> counts = all.get();
    bar.finish(counts.size());
    return counts;
}

/// One pool.submit per range; hop::as_completed yields each future as it
/// finishes, in completion order.
std::uint64_t count_with_submit(hop::cpu_pool& pool, const std::vector<range>& ranges) {
    std::vector<hop::future<std::uint64_t>> futures;
    for (range r : ranges) futures.push_back(pool.submit(count_primes, r));
    progress_bar bar("pool.submit + as_completed", futures.size());
    std::uint64_t total = 0;
    std::size_t finished = 0;
    for (const hop::future<std::uint64_t>& f : hop::as_completed(futures)) {
        total += f.get();
        bar.update(++finished);
    }
    bar.finish(finished);
    return total;
}

#if HOP_PRIMES_MPI
/// count_primes, registered on every rank under one name.
hop::mpi::function<std::uint64_t(range)> count_on_rank{"count_primes", &count_primes};

/// Rank 0: the local pool's counts, then the cluster's (map, then submit +
/// as_completed); the other ranks serve until rank 0 is done.
int run_mpi(int& argc, char**& argv, std::uint64_t limit, std::uint64_t chunks, std::uint64_t threads) {
    return hop::mpi::run(argc, argv, [&](hop::mpi::executor& cluster) -> int {
        if (cluster.size() == 0) {
            std::fprintf(stderr, "primes --mpi: no worker ranks: start it with mpirun -n 2 (or more) primes --mpi\n");
            return 2;
        }
        hop::cpu_pool pool{threads};
        std::printf("primes below %llu: %llu ranges; local pool of %zu threads, cluster of %zu worker ranks\n",
                    static_cast<unsigned long long>(limit), static_cast<unsigned long long>(chunks), pool.size(),
                    cluster.size());
        const std::vector<range> ranges = split(limit, chunks);

        auto t0 = clock_type::now();
        std::vector<std::uint64_t> local = pool.map(count_primes, ranges).get();
        const double local_s = seconds_since(t0);

        t0 = clock_type::now();
        std::vector<std::uint64_t> remote = cluster.map(count_on_rank, ranges, 1).get();
        const double map_s = seconds_since(t0);

        t0 = clock_type::now();
        std::vector<hop::future<std::uint64_t>> futures;
        for (range r : ranges) futures.push_back(cluster.submit(count_on_rank, r));
        std::uint64_t submitted_total = 0;
        for (const auto& f : hop::as_completed(futures)) submitted_total += f.get();
        const double submit_s = seconds_since(t0);

        std::uint64_t local_total = 0;
        for (auto n : local) local_total += n;
        std::printf("primes found:              %llu\n", static_cast<unsigned long long>(local_total));
        std::printf("local pool.map:            %7.3f s\n", local_s);
        std::printf("cluster.map:               %7.3f s\n", map_s);
        std::printf("cluster.submit+as_completed:%6.3f s\n", submit_s);
        if (remote != local || submitted_total != local_total) {
            std::fprintf(stderr, "MISMATCH: the cluster's counts differ from the local pool's\n");
            return 1;
        }
        std::printf("cluster results == local pool results\n");
        return 0;
    });
}
#endif

std::uint64_t parse_count(const char* flag, const char* text, std::uint64_t min, std::uint64_t max) {
    std::string v = text ? text : "";
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0 || n < min || n > max) {
        throw std::invalid_argument(std::string(flag) + " " + (text ? "'" + v + "'" : "(missing)") +
                                    ": expected a whole number from " + std::to_string(min) + " to " +
                                    std::to_string(max));
    }
    return n;
}

int run(std::uint64_t limit, std::uint64_t chunks, std::uint64_t threads) {
    hop::cpu_pool pool{threads};
    std::printf("primes below %llu: %llu ranges on %zu pool threads (%u cores)\n",
                static_cast<unsigned long long>(limit), static_cast<unsigned long long>(chunks), pool.size(),
                std::thread::hardware_concurrency());
    if (!self_check(pool)) return 1;

    const std::vector<range> ranges = split(limit, chunks);

    auto t0 = clock_type::now();
    std::vector<std::uint64_t> serial = hop::sync_wait(count_serially(pool, ranges));
    const double serial_s = seconds_since(t0);

    t0 = clock_type::now();
    std::vector<std::uint64_t> mapped = count_with_map(pool, ranges);
    const double map_s = seconds_since(t0);

    t0 = clock_type::now();
    std::uint64_t submitted_total = count_with_submit(pool, ranges);
    const double submit_s = seconds_since(t0);

    t0 = clock_type::now();
    // submit() runs a coroutine function's task on the pool: when_all forks there.
    std::uint64_t forked_total = pool.submit([&ranges] { return count_split(ranges); }).get();
    const double fork_s = seconds_since(t0);

    std::uint64_t serial_total = 0;
    for (auto n : serial) serial_total += n;
    std::printf("primes found:              %llu\n", static_cast<unsigned long long>(serial_total));
    std::printf("serial (1 thread):         %7.3f s\n", serial_s);
    std::printf("pool.map:                  %7.3f s   speedup %.2fx\n", map_s, serial_s / map_s);
    std::printf("pool.submit + as_completed:%7.3f s   speedup %.2fx\n", submit_s, serial_s / submit_s);
    std::printf("fork-join (when_all):      %7.3f s   speedup %.2fx\n", fork_s, serial_s / fork_s);

    if (mapped != serial || submitted_total != serial_total || forked_total != serial_total) {
        std::fprintf(stderr, "MISMATCH: the parallel results differ from the serial ones\n");
        return 1;
    }
    std::printf("parallel results == serial results\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::uint64_t limit = 6'000'000;
    std::uint64_t chunks = 256;
    std::uint64_t threads = std::max(1u, std::thread::hardware_concurrency());
    bool mpi = false;
    try {
        for (int i = 1; i < argc; i += 2) {  // every option takes one value, but --mpi
            std::string a = argv[i];
            if (a == "--mpi") {
                mpi = true;
                --i;
                continue;
            }
            const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
            if (a == "--limit") {
                limit = parse_count("--limit", value, 0, std::uint64_t{1} << 40);
            } else if (a == "--chunks") {
                chunks = parse_count("--chunks", value, 1, 1'000'000);
            } else if (a == "--threads") {
                threads = parse_count("--threads", value, 1, 1024);
            } else {
                throw std::invalid_argument("unknown argument '" + a + "'");
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "primes: %s\nusage: primes [--mpi] [--limit N] [--chunks N] [--threads N]\n", e.what());
        return 2;
    }

    try {
        if (mpi) {
#if HOP_PRIMES_MPI
            return run_mpi(argc, argv, limit, chunks, threads);
#else
            std::fprintf(stderr, "primes: --mpi: this hop was built without MPI (install libopenmpi-dev and reconfigure)\n");
            return 2;
#endif
        }
        return run(limit, chunks, threads);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "primes: %s\n", e.what());
        return 1;
    }
}
