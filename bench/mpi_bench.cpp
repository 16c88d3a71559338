// hop::mpi's cluster executor, measured for bench/mpi_bench.sh (which runs
// it once per progress mode, HOP_MPI_PROGRESS=thread and =loop, and
// bench/mpi_bench.py, mpi4py.futures on the same work and ranks, one after
// the other). Run under mpirun: rank 0 submits, the other ranks serve.
//   tiny jobs:  int -> int+1, N submits then waits for all: jobs/s
//               (and the same through map(), in chunks);
//   1 ms jobs:  1 ms of CPU each (thread CPU clock), M of them, on the
//               cluster and then on a local cpu_pool with as many threads
//               as all the worker ranks together: the efficiency (local
//               time / cluster time) and the overhead per job (the extra
//               time times the threads, per job).
// Every figure is measured in R rounds (the 1 ms ones as pairs: cluster
// then local, so a burst of load on a shared machine hits both sides of
// one pair), each round's figure printed (the script takes the median over
// its runs), with the load average (/proc/loadavg) before and after.
// Prints "key value..." lines that the script reads.
//
//   mpirun -n 4 -x HOP_MPI_THREADS=1 -x HOP_MPI_PROGRESS=thread mpi_bench [--tiny N] [--ms M] [--rounds R]
//       [--idle S]   (S seconds with nothing in flight at the end: rank_cpu_seconds then shows what idle ranks cost)

#include <hop/hop.hpp>
#include <hop/mpi.hpp>

#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <string>
#include <thread>
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

/// The 1-minute load average.
std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one;
    in >> one;
    return one.empty() ? "?" : one;
}

/// Prints "key v1 v2 ... vR": every round's figure (the script takes the median).
void print_rounds(const char* key, const std::vector<double>& v, const char* format) {
    std::printf("%s", key);
    for (double x : v) {
        std::printf(" ");
        std::printf(format, x);
    }
    std::printf("\n");
}

}  // namespace

/// CPU seconds (user + system) this process has used, all its threads.
double process_cpu_seconds() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
    return s(u.ru_utime) + s(u.ru_stime);
}

int main(int argc, char** argv) {
    int tiny = 200'000;
    int ms_jobs = 600;
    int rounds = 5;
    int idle_s = 0;  // rank 0 waits this long at the end, nothing in flight: what idle ranks cost
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--tiny") {
            tiny = std::atoi(argv[i + 1]);
        } else if (a == "--ms") {
            ms_jobs = std::atoi(argv[i + 1]);
        } else if (a == "--rounds") {
            rounds = std::max(1, std::atoi(argv[i + 1]));
        } else if (a == "--idle") {
            idle_s = std::atoi(argv[i + 1]);
        }
    }
    const int status = hop::mpi::run(argc, argv, [&](hop::mpi::executor& cluster) -> int {
        if (cluster.size() == 0) {
            std::fprintf(stderr, "mpi_bench: run it under mpirun -n 2 or more\n");
            return 2;
        }
        const std::string load_before = load_average();
        // Warm-up: connections between ranks are set up lazily.
        for (int i = 0; i < 1000; ++i) cluster.submit(inc, i).get();

        std::vector<double> submit_rate, map_rate;
        std::vector<int> items(static_cast<std::size_t>(tiny));
        std::iota(items.begin(), items.end(), 0);
        for (int round = 0; round < rounds; ++round) {
            std::vector<hop::future<int>> fs;
            fs.reserve(static_cast<std::size_t>(tiny));
            auto t0 = clock_type::now();
            for (int i = 0; i < tiny; ++i) fs.push_back(cluster.submit(inc, i));
            long long sum = 0;
            for (auto& f : fs) sum += f.get();
            submit_rate.push_back(tiny / seconds_since(t0));
            if (sum != static_cast<long long>(tiny) * (tiny + 1) / 2) return 1;

            t0 = clock_type::now();
            auto mapped = cluster.map(inc, items).get();
            map_rate.push_back(tiny / seconds_since(t0));
            if (mapped.back() != tiny) return 1;
        }

        // Every worker rank's threads together: the local pool gets as many.
        std::size_t worker_threads = cluster.worker_threads();
        hop::cpu_pool pool{worker_threads};
        std::vector<double> cluster_s, local_s, overhead_us, efficiency;
        for (int round = 0; round < rounds; ++round) {
            std::vector<hop::future<int>> ms;
            auto t0 = clock_type::now();
            for (int i = 0; i < ms_jobs; ++i) ms.push_back(cluster.submit(spin_1ms, i));
            for (auto& f : ms) f.get();
            const double c = seconds_since(t0);

            std::vector<hop::future<int>> local;
            t0 = clock_type::now();
            for (int i = 0; i < ms_jobs; ++i) local.push_back(pool.submit(spin_1ms_impl, i));
            for (auto& f : local) f.get();
            const double l = seconds_since(t0);
            cluster_s.push_back(c);
            local_s.push_back(l);
            // Against the local pool of the same pair: what the cluster adds per job.
            overhead_us.push_back((c - l) * static_cast<double>(worker_threads) / ms_jobs * 1e6);
            efficiency.push_back(l / c);
        }

        const char* mode = std::getenv("HOP_MPI_PROGRESS");
        std::printf("progress %s\n", mode != nullptr && *mode != '\0' ? mode : "thread");
        std::printf("ranks %zu\n", cluster.size());
        std::printf("worker_threads %zu\n", worker_threads);
        std::printf("rounds %d\n", rounds);
        std::printf("tiny_jobs %d\n", tiny);
        print_rounds("tiny_submit_jobs_per_s", submit_rate, "%.0f");
        print_rounds("tiny_map_items_per_s", map_rate, "%.0f");
        std::printf("ms_jobs %d\n", ms_jobs);
        print_rounds("ms_seconds", cluster_s, "%.4f");
        print_rounds("local_seconds", local_s, "%.4f");
        print_rounds("ms_overhead_us_per_job", overhead_us, "%.1f");
        print_rounds("ms_efficiency_vs_local", efficiency, "%.3f");
        std::printf("load_before %s\n", load_before.c_str());
        std::printf("load_after %s\n", load_average().c_str());
        std::fflush(stdout);
        std::this_thread::sleep_for(std::chrono::seconds(idle_s));
        return 0;
    });
    // Every rank: what the whole run cost it (jobs, polls, MPI), the local
    // pool's share included on rank 0; the script adds the ranks up.
    std::printf("rank_cpu_seconds %.3f\n", process_cpu_seconds());
    return status;
}
