// hop::cpu_pool against standalone Asio's thread_pool, same work, same run.
//
//   (1) round trip: a coroutine on its home thread hops to the pool and back
//   (2) spawn throughput: tiny jobs submitted from 1 and 2 threads, results
//       collected by the submitters
//   (3) map: 10,000 jobs of ~50 us of real CPU work, against a serial loop
//
// Each side of each row runs in its own child process, in rounds that
// alternate hop and Asio (bench::run_interleaved), so peak RSS and CPU time
// are that side's alone and background load falls on both alike.
//
//   cpu_pool_bench [--quick] [--threads N] [--only round_trip|spawn|map]

#include "common.hpp"

#include <hop/hop.hpp>

#include <cstdint>
#include <cstdio>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

struct counts {
    std::size_t round_trips;
    std::size_t spawn_jobs;
    std::size_t map_jobs;
};

// ---- (1) round trip --------------------------------------------------------

// hop: the caller runs on the sync_wait thread; the child moves itself to the
// pool and ends there; by the affinity rule the caller resumes back on the
// sync_wait thread: one trip there and one trip back per iteration.
hop::task<> hop_child(hop::cpu_pool& pool, std::size_t* misplaced) {
    co_await pool.schedule();
    if (!pool.running_in_this_thread()) ++*misplaced;
}

hop::task<> hop_round_trips(hop::cpu_pool& pool, std::size_t n, std::thread::id home, std::size_t* misplaced) {
    for (std::size_t i = 0; i < n; ++i) {
        co_await hop_child(pool, misplaced);
        if (std::this_thread::get_id() != home) ++*misplaced;
    }
}

bench::sample hop_round_trip(std::size_t threads, std::size_t n) {
    hop::cpu_pool pool{threads};
    std::size_t misplaced = 0;
    const auto home = std::this_thread::get_id();
    hop::sync_wait(hop_round_trips(pool, n / 50 + 1, home, &misplaced));  // warm-up
    auto t0 = bench::clock::now();
    hop::sync_wait(hop_round_trips(pool, n, home, &misplaced));
    double s = bench::seconds_since(t0);
    if (misplaced != 0) throw std::runtime_error("hop round trip: " + std::to_string(misplaced) + " resumptions on the wrong thread");
    return {s, n};
}

// The same trips from an io_loop (hop::run on this thread), the home users
// have: a server handler hopping to the pool and back. sync_wait's loop
// (above) is a blocking helper, not an event loop.
bench::sample hop_round_trip_loop(std::size_t threads, std::size_t n) {
    hop::cpu_pool pool{threads};
    std::size_t misplaced = 0;
    const auto home = std::this_thread::get_id();
    hop::run(hop_round_trips(pool, n / 50 + 1, home, &misplaced));  // warm-up
    auto t0 = bench::clock::now();
    hop::run(hop_round_trips(pool, n, home, &misplaced));
    double s = bench::seconds_since(t0);
    if (misplaced != 0) throw std::runtime_error("hop round trip (io_loop): " + std::to_string(misplaced) + " resumptions on the wrong thread");
    return {s, n};
}

// Asio, closest equivalent: a child coroutine co_spawn'ed onto the pool and
// awaited with use_awaitable; the parent (an awaitable on an io_context run
// by this thread) resumes on the io_context when the child ends.
asio::awaitable<void> asio_child(std::thread::id home, std::size_t* misplaced) {
    if (std::this_thread::get_id() == home) ++*misplaced;
    co_return;
}

asio::awaitable<void> asio_round_trips_spawn(asio::thread_pool::executor_type pool, std::size_t n,
                                             std::thread::id home, std::size_t* misplaced) {
    for (std::size_t i = 0; i < n; ++i) {
        co_await asio::co_spawn(pool, asio_child(home, misplaced), asio::use_awaitable);
        if (std::this_thread::get_id() != home) ++*misplaced;
    }
}

// Asio's cheapest round trip: post an empty handler to the pool; the
// use_awaitable completion is dispatched back through the coroutine's own
// executor (the io_context), so one co_await is there-and-back, but no
// coroutine code runs on the pool.
asio::awaitable<void> asio_round_trips_post(asio::thread_pool::executor_type pool, std::size_t n,
                                            std::thread::id home, std::size_t* misplaced) {
    for (std::size_t i = 0; i < n; ++i) {
        co_await asio::post(pool, asio::use_awaitable);
        if (std::this_thread::get_id() != home) ++*misplaced;
    }
}

template <class Loop>
bench::sample asio_round_trip(std::size_t threads, std::size_t n, Loop loop) {
    asio::thread_pool pool(threads);
    asio::io_context io;
    std::size_t misplaced = 0;
    const auto home = std::this_thread::get_id();
    auto run = [&](std::size_t count) {
        auto done = asio::co_spawn(io, loop(pool.get_executor(), count, home, &misplaced), asio::use_future);
        io.restart();
        io.run();
        done.get();
    };
    run(n / 50 + 1);  // warm-up
    auto t0 = bench::clock::now();
    run(n);
    double s = bench::seconds_since(t0);
    pool.join();
    if (misplaced != 0) throw std::runtime_error("asio round trip: " + std::to_string(misplaced) + " resumptions on the wrong thread");
    return {s, n};
}

// ---- (2) spawn throughput --------------------------------------------------

std::uint64_t tiny_job(std::uint64_t i) { return i * 2 + 1; }

// The expected sum of tiny_job(i) for i in [0, n).
std::uint64_t tiny_sum(std::uint64_t n) { return n * n; }

std::uint64_t hop_submit_range(hop::cpu_pool& pool, std::uint64_t begin, std::uint64_t end) {
    std::vector<hop::future<std::uint64_t>> futures;
    futures.reserve(end - begin);
    for (std::uint64_t i = begin; i < end; ++i) futures.push_back(pool.submit(tiny_job, i));
    std::uint64_t sum = 0;
    for (auto& f : futures) sum += f.get();
    return sum;
}

std::uint64_t asio_submit_range(asio::thread_pool& pool, std::uint64_t begin, std::uint64_t end) {
    std::vector<std::future<std::uint64_t>> futures;
    futures.reserve(end - begin);
    for (std::uint64_t i = begin; i < end; ++i) {
        futures.push_back(asio::post(pool, asio::use_future([i] { return tiny_job(i); })));
    }
    std::uint64_t sum = 0;
    for (auto& f : futures) sum += f.get();
    return sum;
}

// Splits n jobs over `submitters` threads (this one included); times it.
template <class Pool, class SubmitRange>
bench::sample spawn_throughput(Pool& pool, std::size_t n, std::size_t submitters, SubmitRange submit_range) {
    std::vector<std::uint64_t> sums(submitters, 0);
    std::vector<std::thread> others;
    auto t0 = bench::clock::now();
    for (std::size_t k = 1; k < submitters; ++k) {
        others.emplace_back([&, k] { sums[k] = submit_range(pool, n * k / submitters, n * (k + 1) / submitters); });
    }
    sums[0] = submit_range(pool, 0, n / submitters);
    for (auto& t : others) t.join();
    double s = bench::seconds_since(t0);
    std::uint64_t total = 0;
    for (auto v : sums) total += v;
    if (total != tiny_sum(n)) throw std::runtime_error("spawn throughput: wrong sum of results");
    return {s, total};
}

bench::sample hop_spawn(std::size_t threads, std::size_t n, std::size_t submitters) {
    hop::cpu_pool pool{threads};
    hop_submit_range(pool, 0, n / 50 + 1);  // warm-up
    return spawn_throughput(pool, n, submitters, hop_submit_range);
}

bench::sample asio_spawn(std::size_t threads, std::size_t n, std::size_t submitters) {
    asio::thread_pool pool(threads);
    asio_submit_range(pool, 0, n / 50 + 1);  // warm-up
    auto r = spawn_throughput(pool, n, submitters, asio_submit_range);
    pool.join();
    return r;
}

// ---- (3) map ---------------------------------------------------------------

// A real CPU loop (a 64-bit LCG with an xorshift) whose length is calibrated
// at startup; the compiler cannot fold it because the seed and the count are
// run-time values and the result is used.
std::uint64_t spin_work(std::uint64_t seed, std::uint64_t iterations) {
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (std::uint64_t i = 0; i < iterations; ++i) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        x ^= x >> 29;
    }
    return x;
}

// Iterations for about `target` seconds of spin_work (best of several tries,
// so a busy neighbour does not inflate the estimate).
std::uint64_t calibrate(double target) {
    const std::uint64_t probe = 200'000;
    double best = 1e9;
    std::uint64_t sink = 0;
    for (int k = 0; k < 7; ++k) {
        auto t0 = bench::clock::now();
        sink += spin_work(static_cast<std::uint64_t>(k), probe);
        best = std::min(best, bench::seconds_since(t0));
    }
    if (sink == 42) std::printf(" ");  // keeps the probe alive
    return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(static_cast<double>(probe) * target / best));
}

struct spin_fn {
    std::uint64_t iterations;
    std::uint64_t operator()(std::uint64_t seed) const { return spin_work(seed, iterations); }
};

std::uint64_t checksum(const std::vector<std::uint64_t>& v) {
    std::uint64_t h = 1469598103934665603ULL;
    for (auto x : v) h = (h ^ x) * 1099511628211ULL;
    return h;
}

std::vector<std::uint64_t> seeds(std::size_t n) {
    std::vector<std::uint64_t> s(n);
    for (std::size_t i = 0; i < n; ++i) s[i] = i;
    return s;
}

bench::sample map_serial(std::size_t n, std::uint64_t iterations) {
    auto items = seeds(n);
    spin_fn fn{iterations};
    auto t0 = bench::clock::now();
    std::vector<std::uint64_t> out;
    out.reserve(n);
    for (auto s : items) out.push_back(fn(s));
    return {bench::seconds_since(t0), checksum(out)};
}

bench::sample map_hop(std::size_t threads, std::size_t n, std::uint64_t iterations) {
    hop::cpu_pool pool{threads};
    auto items = seeds(n);
    pool.map(spin_fn{iterations}, seeds(threads * 4)).get();  // warm-up: wakes every worker
    auto t0 = bench::clock::now();
    std::vector<std::uint64_t> out = pool.map(spin_fn{iterations}, items).get();
    return {bench::seconds_since(t0), checksum(out)};
}

// Asio: the same chunking as hop's map (about four chunks per thread), each
// chunk posted with use_future and filling its slice of the results.
std::vector<std::uint64_t> asio_map(asio::thread_pool& pool, std::size_t threads, const std::vector<std::uint64_t>& items,
                                    spin_fn fn) {
    const std::size_t n = items.size();
    const std::size_t chunk = std::max<std::size_t>(1, n / (threads * 4));
    std::vector<std::uint64_t> out(n);
    std::vector<std::future<void>> parts;
    for (std::size_t b = 0; b < n; b += chunk) {
        const std::size_t e = std::min(n, b + chunk);
        parts.push_back(asio::post(pool, asio::use_future([&items, &out, fn, b, e] {
                                       for (std::size_t i = b; i < e; ++i) out[i] = fn(items[i]);
                                   })));
    }
    for (auto& p : parts) p.get();
    return out;
}

bench::sample map_asio(std::size_t threads, std::size_t n, std::uint64_t iterations) {
    asio::thread_pool pool(threads);
    auto items = seeds(n);
    asio_map(pool, threads, seeds(threads * 4), spin_fn{iterations});  // warm-up
    auto t0 = bench::clock::now();
    auto out = asio_map(pool, threads, items, spin_fn{iterations});
    double s = bench::seconds_since(t0);
    pool.join();
    return {s, checksum(out)};
}

// ---- main ------------------------------------------------------------------

struct resource_row {
    std::string name;
    bench::measured hop, asio;
};

int run(const bench::options& opt) {
    // Every row runs in `rounds` interleaved rounds (hop, asio, hop, asio ...).
    const counts c = opt.quick ? counts{20'000, 50'000, 1'000} : counts{1'000'000, 1'000'000, 10'000};
    const std::size_t rounds = opt.quick ? 1 : 5;
    const std::size_t cores = bench::core_count();
    const std::size_t t = opt.threads;
    std::printf("hop cpu_pool vs standalone Asio %d.%d.%d thread_pool%s\n", ASIO_VERSION / 100000,
                ASIO_VERSION / 100 % 1000, ASIO_VERSION % 100, opt.quick ? "  (--quick: small counts)" : "");
    std::printf("cores: %zu   pool threads: %zu   rounds: %zu (interleaved, summed)\n", cores, t, rounds);
    std::printf("ratio: how many times better hop is (>1: hop wins)\n");
    std::vector<resource_row> resources;

    if (opt.wants("round_trip")) {
        bench::print_table_header("(1) round trip: home thread -> pool -> home thread");
        const std::size_t n = c.round_trips / rounds;
        auto [h, a1, a2, hl] = bench::run_interleaved(
            rounds, [&] { return hop_round_trip(t, n); },
            [&] { return asio_round_trip(t, n, asio_round_trips_spawn); },
            [&] { return asio_round_trip(t, n, asio_round_trips_post); },
            [&] { return hop_round_trip_loop(t, n); });
        const double trips = static_cast<double>(n * rounds);
        bench::print_row("ns/trip from an io_loop (hop::run) vs asio co_spawn", hl.s.seconds * 1e9 / trips,
                         a1.s.seconds * 1e9 / trips, bench::better::lower);
        bench::print_row("ns/trip from an io_loop (hop::run) vs asio bare post", hl.s.seconds * 1e9 / trips,
                         a2.s.seconds * 1e9 / trips, bench::better::lower);
        std::printf("  (rows below: hop's home is sync_wait's blocking loop)\n");
        bench::print_row("ns/trip vs asio co_spawn child on pool", h.s.seconds * 1e9 / trips,
                         a1.s.seconds * 1e9 / trips, bench::better::lower);
        bench::print_row("ns/trip vs asio bare post(pool, use_awaitable)", h.s.seconds * 1e9 / trips,
                         a2.s.seconds * 1e9 / trips, bench::better::lower);
        resources.push_back({"round trip (co_spawn)", h, a1});
        resources.push_back({"round trip (bare post)", h, a2});
    }

    if (opt.wants("spawn")) {
        bench::print_table_header("(2) spawn throughput: tiny jobs, every result collected");
        for (std::size_t submitters : {std::size_t{1}, std::size_t{2}}) {
            auto [h, a] = bench::run_interleaved(
                rounds, [&] { return hop_spawn(t, c.spawn_jobs, submitters); },
                [&] { return asio_spawn(t, c.spawn_jobs, submitters); });
            bench::check_same("spawn throughput", h, a);
            const double jobs = static_cast<double>(c.spawn_jobs * rounds);
            std::string name = std::to_string(c.spawn_jobs) + " jobs, " + std::to_string(submitters) + " submitter" +
                               (submitters > 1 ? "s" : "") + " (M jobs/s)";
            bench::print_row(name, jobs / h.s.seconds / 1e6, jobs / a.s.seconds / 1e6, bench::better::higher, 3);
            resources.push_back({"spawn, " + std::to_string(submitters) + " submitter(s)", h, a});
        }
    }

    if (opt.wants("map")) {
        const std::uint64_t iterations = calibrate(50e-6);
        bench::print_table_header("(3) map: CPU jobs of ~50 us, against a serial loop");
        auto [s, h, a] = bench::run_interleaved(
            rounds, [&] { return map_serial(c.map_jobs, iterations); },
            [&] { return map_hop(t, c.map_jobs, iterations); }, [&] { return map_asio(t, c.map_jobs, iterations); });
        bench::check_same("map (hop vs serial)", h, s);
        bench::check_same("map (asio vs serial)", a, s);
        const double r = static_cast<double>(rounds);
        const double per_job_us = s.s.seconds * 1e6 / (r * static_cast<double>(c.map_jobs));
        bench::print_note_row("serial loop (ms), " + std::to_string(c.map_jobs) + " jobs x " +
                                  std::to_string(static_cast<int>(per_job_us + 0.5)) + " us",
                              s.s.seconds * 1e3 / r);
        bench::print_row("parallel map (ms)", h.s.seconds * 1e3 / r, a.s.seconds * 1e3 / r, bench::better::lower);
        const double hs = s.s.seconds / h.s.seconds, as = s.s.seconds / a.s.seconds;
        bench::print_row("speedup over serial", hs, as, bench::better::higher, 2);
        bench::print_row("speedup / cores (" + std::to_string(cores) + ")", hs / static_cast<double>(cores),
                         as / static_cast<double>(cores), bench::better::higher, 2);
        resources.push_back({"map", h, a});
    }

    bench::print_table_header("peak RSS (MiB) and CPU time (s, all rounds) of each side's process");
    for (auto& r : resources) {
        bench::print_row(r.name + ": peak RSS MiB", r.hop.peak_rss_mib, r.asio.peak_rss_mib, bench::better::lower);
        bench::print_row(r.name + ": CPU s", r.hop.cpu_seconds, r.asio.cpu_seconds, bench::better::lower, 2);
    }
    std::printf("\nbenchmark driver peak RSS: %.1f MiB\n", bench::self_peak_rss_mib());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    bench::options opt;
    try {
        opt = bench::parse_options(argc, argv, {"round_trip", "spawn", "map"});
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cpu_pool_bench: %s\nusage: cpu_pool_bench [--quick] [--threads N] [--only round_trip|spawn|map]\n",
                     e.what());
        return 2;
    }
    try {
        return run(opt);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cpu_pool_bench: %s\n", e.what());
        return 1;
    }
}
