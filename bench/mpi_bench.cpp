// hop::mpi's cluster executor, measured for bench/mpi_bench.sh (which runs
// bench/mpi_bench.py, mpi4py.futures on the same work and ranks, right
// after it). Run under mpirun: rank 0 submits, the other ranks serve.
//   tiny jobs:  int -> int+1, N submits then waits for all: jobs/s
//               (and the same through map(), in chunks);
//   1 ms jobs:  1 ms of CPU each (thread CPU clock), M of them, on the
//               cluster and then on a local cpu_pool with as many threads
//               as all the worker ranks together: the efficiency (local
//               time / cluster time) and the overhead per job (the extra
//               time times the threads, per job); best of three rounds.
// Prints "key value" lines that the script reads.
//
//   mpirun -n 4 -x HOP_MPI_THREADS=1 mpi_bench [--tiny N] [--ms M]

#include <hop/hop.hpp>
#include <hop/mpi.hpp>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

int inc_impl(int x) { return x + 1; }
hop::mpi::function<int(int)> inc{"inc", &inc_impl};

double thread_cpu_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// 1 ms of this thread's CPU time.
int spin_1ms_impl(int x) {
    const double end = thread_cpu_seconds() + 0.001;
    while (thread_cpu_seconds() < end) {
    }
    return x;
}
hop::mpi::function<int(int)> spin_1ms{"spin_1ms", &spin_1ms_impl};

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

}  // namespace

int main(int argc, char** argv) {
    int tiny = 200'000;
    int ms_jobs = 600;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--tiny") {
            tiny = std::atoi(argv[i + 1]);
        } else if (a == "--ms") {
            ms_jobs = std::atoi(argv[i + 1]);
        }
    }
    return hop::mpi::run(argc, argv, [&](hop::mpi::executor& cluster) -> int {
        if (cluster.size() == 0) {
            std::fprintf(stderr, "mpi_bench: run it under mpirun -n 2 or more\n");
            return 2;
        }
        // Warm-up: connections between ranks are set up lazily.
        for (int i = 0; i < 1000; ++i) cluster.submit(inc, i).get();

        std::vector<hop::future<int>> fs;
        fs.reserve(static_cast<std::size_t>(tiny));
        auto t0 = clock_type::now();
        for (int i = 0; i < tiny; ++i) fs.push_back(cluster.submit(inc, i));
        long long sum = 0;
        for (auto& f : fs) sum += f.get();
        const double tiny_s = seconds_since(t0);
        if (sum != static_cast<long long>(tiny) * (tiny + 1) / 2) return 1;

        std::vector<int> items(static_cast<std::size_t>(tiny));
        std::iota(items.begin(), items.end(), 0);
        t0 = clock_type::now();
        auto mapped = cluster.map(inc, items).get();
        const double map_s = seconds_since(t0);
        if (mapped.back() != tiny) return 1;

        // Every worker rank's threads together: the local pool gets as many.
        std::size_t worker_threads = cluster.worker_threads();
        // Cluster and local pool in turn, three rounds, the best of each:
        // a shared machine's noise hits one side or the other, not both.
        hop::cpu_pool pool{worker_threads};
        double cluster_ms_s = 1e9, local_ms_s = 1e9;
        for (int round = 0; round < 3; ++round) {
            std::vector<hop::future<int>> ms;
            t0 = clock_type::now();
            for (int i = 0; i < ms_jobs; ++i) ms.push_back(cluster.submit(spin_1ms, i));
            for (auto& f : ms) f.get();
            cluster_ms_s = std::min(cluster_ms_s, seconds_since(t0));

            std::vector<hop::future<int>> local;
            t0 = clock_type::now();
            for (int i = 0; i < ms_jobs; ++i) local.push_back(pool.submit(spin_1ms_impl, i));
            for (auto& f : local) f.get();
            local_ms_s = std::min(local_ms_s, seconds_since(t0));
        }

        std::printf("ranks %zu\n", cluster.size());
        std::printf("worker_threads %zu\n", worker_threads);
        std::printf("tiny_jobs %d\n", tiny);
        std::printf("tiny_submit_jobs_per_s %.0f\n", tiny / tiny_s);
        std::printf("tiny_map_items_per_s %.0f\n", tiny / map_s);
        std::printf("ms_jobs %d\n", ms_jobs);
        std::printf("ms_seconds %.4f\n", cluster_ms_s);
        std::printf("local_seconds %.4f\n", local_ms_s);
        // Against the local pool on the same run: what the cluster adds per job.
        std::printf("ms_overhead_us_per_job %.1f\n",
                    (cluster_ms_s - local_ms_s) * static_cast<double>(worker_threads) / ms_jobs * 1e6);
        std::printf("ms_efficiency_vs_local %.3f\n", local_ms_s / cluster_ms_s);
        return 0;
    });
}
