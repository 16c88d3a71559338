// Fork-join: hop's ways of splitting work into child tasks and joining them,
// against oneTBB's task_group and a plain serial recursion, on the two
// classic fork-join micro-benchmarks (as in tzcnt/runtime-benchmarks):
//
//   fib(n)   fib(n-1) and fib(n-2) as two child tasks, joined and summed;
//            every call is a task, no serial cutoff. n = 39 (204.7M calls),
//            --quick: n = 30.
//   skynet   a 10-way tree of 8 levels (100M leaves): a leaf returns its
//            number, a parent sums its 10 children. --quick: 6 levels.
//
// Variants, each in its own child process (bench::run_isolated_for), so its
// peak RSS and CPU time are its own:
//
//   serial        plain recursive functions
//   oneTBB        tbb::task_group in a tbb::task_arena of --threads threads:
//                 tg.run() all children but the last, the last inline,
//                 tg.wait()
//   when_all      hop::task<long> awaiting hop::when_all(children...) (the
//                 vector form for skynet), started with pool.submit()
//   (std::array)  skynet's children in a std::array, when_all's array form
//                 (no vector in or out); fib as when_all
//   + schedule()  the same, each child first doing co_await pool.schedule()
//                 (libcoro's idiom)
//   spawn         hop::spawn(pool, child) for all children but the last, the
//                 last awaited inline, then co_await each future
//   task_group    hop::task_group::spawn(pool, child) likewise, the last
//                 inline, co_await group.wait(), then the futures' get()
//
// The global operator new and delete of this program count their calls (per
// thread, summed), so the table shows how many allocations reach the global
// allocator per fork. Every variant's result must equal the serial one.
//
//   fork_join_bench [--quick] [--threads N] [--only fib|skynet]

#include "common.hpp"

#include <hop/hop.hpp>

// oneTBB is a reference here, not our code: its warnings are not ours to fix.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#include <oneapi/tbb/version.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

// ---- counting operator new / delete ------------------------------------------

namespace {

// One cache line of counters per thread (threads share a slot only past 64),
// so counting does not make the threads fight over one line.
struct alignas(64) alloc_slot {
    std::atomic<std::uint64_t> news{0};
    std::atomic<std::uint64_t> deletes{0};
};
constexpr std::size_t alloc_slot_count = 64;
alloc_slot g_alloc_slots[alloc_slot_count];
std::atomic<std::size_t> g_next_alloc_slot{0};

alloc_slot& my_alloc_slot() noexcept {
    thread_local alloc_slot* slot =
        &g_alloc_slots[g_next_alloc_slot.fetch_add(1, std::memory_order_relaxed) % alloc_slot_count];
    return *slot;
}

void count_new() noexcept { my_alloc_slot().news.fetch_add(1, std::memory_order_relaxed); }
void count_delete() noexcept { my_alloc_slot().deletes.fetch_add(1, std::memory_order_relaxed); }

/// Calls of the global operator new (any form) so far, all threads.
std::uint64_t new_calls() noexcept {
    std::uint64_t n = 0;
    for (auto& s : g_alloc_slots) n += s.news.load(std::memory_order_relaxed);
    return n;
}

void* counted_alloc(std::size_t n) noexcept {
    count_new();
    return std::malloc(n == 0 ? 1 : n);
}

void* counted_aligned_alloc(std::size_t n, std::align_val_t al) noexcept {
    count_new();
    const auto a = static_cast<std::size_t>(al);
    const std::size_t rounded = (std::max<std::size_t>(n, 1) + a - 1) / a * a;  // aligned_alloc wants a multiple
    return std::aligned_alloc(a, rounded);
}

void counted_free(void* p) noexcept {
    if (!p) return;
    count_delete();
    std::free(p);
}

}  // namespace

void* operator new(std::size_t n) {
    if (void* p = counted_alloc(n)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
    if (void* p = counted_alloc(n)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new(std::size_t n, std::align_val_t a) {
    if (void* p = counted_aligned_alloc(n, a)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
    if (void* p = counted_aligned_alloc(n, a)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return counted_aligned_alloc(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    return counted_aligned_alloc(n, a);
}
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }

namespace {

// ---- the workloads ----------------------------------------------------------

enum class workload { fib, skynet };

/// The call tree of one run, counted exactly: every call is a task; a fork
/// is a call that splits into children and joins them (a non-leaf).
struct tree_shape {
    std::uint64_t calls = 0;
    std::uint64_t leaves = 0;
    std::uint64_t forks = 0;
    unsigned children_per_fork = 0;
};

// fib(n) calls fib(n-1) and fib(n-2) unless n < 2.
tree_shape fib_shape(long n) {
    // calls[k] and leaves[k] for k = 0, 1, 2, ... n.
    std::vector<std::uint64_t> calls(static_cast<std::size_t>(std::max(n, 1L)) + 1, 1), leaves(calls.size(), 1);
    for (std::size_t k = 2; k < calls.size(); ++k) {
        calls[k] = 1 + calls[k - 1] + calls[k - 2];
        leaves[k] = leaves[k - 1] + leaves[k - 2];
    }
    const auto i = static_cast<std::size_t>(n);
    return {calls[i], leaves[i], calls[i] - leaves[i], 2};
}

std::uint64_t pow10(int levels) {
    std::uint64_t p = 1;
    for (int k = 0; k < levels; ++k) p *= 10;
    return p;
}

tree_shape skynet_shape(int levels) {
    const std::uint64_t leaves = pow10(levels);
    const std::uint64_t forks = (leaves - 1) / 9;  // 1 + 10 + ... + 10^(levels-1)
    return {leaves + forks, leaves, forks, 10};
}

// -- serial: plain recursion. GCC and clang inline it into itself several
// levels deep (fib(39) makes some 0.4 ns per call); that is what a program
// without tasks gets, so it is the baseline.

long fib_serial(long n) { return n < 2 ? n : fib_serial(n - 1) + fib_serial(n - 2); }

// skynet over the leaves [num, num + size): size is a power of 10.
long skynet_serial(long num, long size) {
    if (size == 1) return num;
    const long child = size / 10;
    long sum = 0;
    for (long i = 0; i < 10; ++i) sum += skynet_serial(num + i * child, child);
    return sum;
}

// -- oneTBB

long fib_tbb(long n) {
    if (n < 2) return n;
    long a = 0;
    tbb::task_group tg;
    tg.run([&a, n] { a = fib_tbb(n - 1); });
    const long b = fib_tbb(n - 2);
    tg.wait();
    return a + b;
}

long skynet_tbb(long num, long size) {
    if (size == 1) return num;
    const long child = size / 10;
    std::array<long, 10> r{};
    tbb::task_group tg;
    for (long i = 0; i < 9; ++i) {
        tg.run([&r, i, num, child] { r[static_cast<std::size_t>(i)] = skynet_tbb(num + i * child, child); });
    }
    r[9] = skynet_tbb(num + 9 * child, child);
    tg.wait();
    long sum = 0;
    for (long v : r) sum += v;
    return sum;
}

// -- hop when_all

hop::task<long> fib_when_all(long n) {
    if (n < 2) co_return n;
    auto r = co_await hop::when_all(fib_when_all(n - 1), fib_when_all(n - 2));
    co_return std::get<0>(r) + std::get<1>(r);
}

hop::task<long> skynet_when_all(long num, long size) {
    if (size == 1) co_return num;
    const long child = size / 10;
    std::vector<hop::task<long>> children;
    children.reserve(10);
    for (long i = 0; i < 10; ++i) children.push_back(skynet_when_all(num + i * child, child));
    std::vector<long> r = co_await hop::when_all(std::move(children));
    long sum = 0;
    for (long v : r) sum += v;
    co_return sum;
}

// -- hop when_all, every child first moving itself onto the pool

hop::task<long> fib_scheduled(hop::cpu_pool& pool, long n) {
    co_await pool.schedule();
    if (n < 2) co_return n;
    auto r = co_await hop::when_all(fib_scheduled(pool, n - 1), fib_scheduled(pool, n - 2));
    co_return std::get<0>(r) + std::get<1>(r);
}

hop::task<long> skynet_scheduled(hop::cpu_pool& pool, long num, long size) {
    co_await pool.schedule();
    if (size == 1) co_return num;
    const long child = size / 10;
    std::vector<hop::task<long>> children;
    children.reserve(10);
    for (long i = 0; i < 10; ++i) children.push_back(skynet_scheduled(pool, num + i * child, child));
    std::vector<long> r = co_await hop::when_all(std::move(children));
    long sum = 0;
    for (long v : r) sum += v;
    co_return sum;
}

// -- hop when_all over a std::array (skynet: no vectors)

hop::task<long> skynet_when_all_array(long num, long size) {
    if (size == 1) co_return num;
    const long child = size / 10;
    std::array<hop::task<long>, 10> children;
    for (long i = 0; i < 10; ++i) children[static_cast<std::size_t>(i)] = skynet_when_all_array(num + i * child, child);
    const std::array<long, 10> r = co_await hop::when_all(std::move(children));
    long sum = 0;
    for (long v : r) sum += v;
    co_return sum;
}

// -- hop spawn

hop::task<long> fib_spawn(hop::cpu_pool& pool, long n) {
    if (n < 2) co_return n;
    auto f = hop::spawn(pool, fib_spawn(pool, n - 1));
    const long b = co_await fib_spawn(pool, n - 2);
    const long a = co_await std::move(f);
    co_return a + b;
}

hop::task<long> skynet_spawn(hop::cpu_pool& pool, long num, long size) {
    if (size == 1) co_return num;
    const long child = size / 10;
    std::array<hop::future<long>, 9> f;
    for (long i = 0; i < 9; ++i) f[static_cast<std::size_t>(i)] = hop::spawn(pool, skynet_spawn(pool, num + i * child, child));
    long sum = co_await skynet_spawn(pool, num + 9 * child, child);
    for (auto& x : f) {
        const long v = co_await std::move(x);
        sum += v;
    }
    co_return sum;
}

// -- hop task_group

hop::task<long> fib_group(hop::cpu_pool& pool, long n) {
    if (n < 2) co_return n;
    hop::task_group g;
    auto fa = g.spawn(pool, fib_group(pool, n - 1));
    const long b = co_await fib_group(pool, n - 2);
    co_await g.wait();
    co_return fa.get() + b;
}

hop::task<long> skynet_group(hop::cpu_pool& pool, long num, long size) {
    if (size == 1) co_return num;
    const long child = size / 10;
    hop::task_group g;
    std::array<hop::future<long>, 9> f;
    for (long i = 0; i < 9; ++i) f[static_cast<std::size_t>(i)] = g.spawn(pool, skynet_group(pool, num + i * child, child));
    long sum = co_await skynet_group(pool, num + 9 * child, child);
    co_await g.wait();
    for (auto& x : f) sum += x.get();
    co_return sum;
}

// ---- running one variant (in its child process) -----------------------------

/// One run's problem: the workload and its size (n for fib, levels for
/// skynet), with a small warm-up size run first (threads started, caches
/// and frame caches filled).
struct problem {
    workload w;
    long size;
    long warm_size;
};

/// The measured part: wall time, CPU time of every thread of the process,
/// operator new calls; `check` is the result, `value` the new calls.
template <class Run>
bench::sample measure(Run run, long size) {
    const auto cpu0 = bench::process_cpu_times();
    const std::uint64_t new0 = new_calls();
    const auto t0 = bench::clock::now();
    const long result = run(size);
    const double seconds = bench::seconds_since(t0);
    const std::uint64_t new1 = new_calls();
    const auto cpu1 = bench::process_cpu_times();
    bench::sample s;
    s.seconds = seconds;
    s.check = static_cast<std::uint64_t>(result);
    s.user_seconds = cpu1.user - cpu0.user;
    s.system_seconds = cpu1.system - cpu0.system;
    s.value = static_cast<double>(new1 - new0);
    return s;
}

bench::sample run_serial(const problem& p) {
    auto run = [&p](long size) {
        return p.w == workload::fib ? fib_serial(size) : skynet_serial(0, static_cast<long>(pow10(static_cast<int>(size))));
    };
    if (run(p.warm_size) < 0) throw std::runtime_error("serial warm-up: negative result");
    return measure(run, p.size);
}

bench::sample run_tbb(const problem& p, std::size_t threads) {
    // Lets the arena have `threads` threads even past the core count.
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism, threads);
    tbb::task_arena arena(static_cast<int>(threads));
    auto run = [&](long size) {
        long r = 0;
        arena.execute([&] {
            r = p.w == workload::fib ? fib_tbb(size) : skynet_tbb(0, static_cast<long>(pow10(static_cast<int>(size))));
        });
        return r;
    };
    if (run(p.warm_size) < 0) throw std::runtime_error("oneTBB warm-up: negative result");
    return measure(run, p.size);
}

/// `make(pool, size)` returns the root task; it runs on the pool
/// (pool.submit of a function returning a task) while this thread waits.
template <class Make>
bench::sample run_hop(const problem& p, std::size_t threads, Make make) {
    hop::cpu_pool pool{threads};
    auto run = [&](long size) { return pool.submit([&pool, &make, size] { return make(pool, size); }).get(); };
    if (run(p.warm_size) < 0) throw std::runtime_error("hop warm-up: negative result");
    return measure(run, p.size);
}

long skynet_leaves(long levels) { return static_cast<long>(pow10(static_cast<int>(levels))); }

struct variant {
    const char* name;
    bool is_hop;
    std::function<bench::sample(const problem&, std::size_t)> run;
};

std::vector<variant> variants() {
    using hop::cpu_pool;
    return {
        {"serial (plain recursion)", false, [](const problem& p, std::size_t) { return run_serial(p); }},
        {"oneTBB task_group", false, [](const problem& p, std::size_t t) { return run_tbb(p, t); }},
        {"hop when_all", true,
         [](const problem& p, std::size_t t) {
             return run_hop(p, t, [&p](cpu_pool&, long size) {
                 return p.w == workload::fib ? fib_when_all(size) : skynet_when_all(0, skynet_leaves(size));
             });
         }},
        {"hop when_all (skynet: std::array)", true,
         [](const problem& p, std::size_t t) {
             return run_hop(p, t, [&p](cpu_pool&, long size) {
                 return p.w == workload::fib ? fib_when_all(size) : skynet_when_all_array(0, skynet_leaves(size));
             });
         }},
        {"hop when_all, children schedule()", true,
         [](const problem& p, std::size_t t) {
             return run_hop(p, t, [&p](cpu_pool& pool, long size) {
                 return p.w == workload::fib ? fib_scheduled(pool, size) : skynet_scheduled(pool, 0, skynet_leaves(size));
             });
         }},
        {"hop spawn + co_await future", true,
         [](const problem& p, std::size_t t) {
             return run_hop(p, t, [&p](cpu_pool& pool, long size) {
                 return p.w == workload::fib ? fib_spawn(pool, size) : skynet_spawn(pool, 0, skynet_leaves(size));
             });
         }},
        {"hop task_group spawn + wait", true,
         [](const problem& p, std::size_t t) {
             return run_hop(p, t, [&p](cpu_pool& pool, long size) {
                 return p.w == workload::fib ? fib_group(pool, size) : skynet_group(pool, 0, skynet_leaves(size));
             });
         }},
    };
}

// ---- the table --------------------------------------------------------------

constexpr int name_width = 34;

std::string cell(const char* fmt, double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, fmt, v);
    return buf;
}

void print_row(const std::string& name, const std::array<std::string, 8>& c) {
    std::printf("%-*s | %9s | %8s | %8s | %8s | %9s | %11s | %8s | %8s\n", name_width, name.c_str(), c[0].c_str(),
                c[1].c_str(), c[2].c_str(), c[3].c_str(), c[4].c_str(), c[5].c_str(), c[6].c_str(), c[7].c_str());
}

void print_header(const std::string& title) {
    std::printf("\n%s\n", title.c_str());
    print_row("variant", {"time ms", "speedup", "vs TBB", "CPU s", "user/wall", "CPU ns/fork", "new/fork", "RSS MiB"});
    std::printf("%s\n", std::string(name_width + 8 * 3 + 9 + 8 + 8 + 8 + 9 + 11 + 8 + 8, '-').c_str());
}

struct outcome {
    std::string name;
    bench::bounded b;
    bool failed = false;      // the child threw or died
    std::string error;
    double budget = -1;       // the time budget it ran under (negative: none)
};

void print_outcome(const outcome& o, const tree_shape& shape, double serial_s, double tbb_s) {
    const double forks = static_cast<double>(shape.forks);
    if (o.failed) {
        std::printf("%-*s | FAILED: %s\n", name_width, o.name.c_str(), o.error.c_str());
        return;
    }
    const auto& m = o.b.m;
    if (o.b.timed_out) {
        // Killed at the budget: time, speedup and ratio are bounds; CPU time
        // and RSS are the kernel's for the whole child until the kill.
        print_row(o.name, {cell(">%.0f", o.budget * 1e3), cell("<%.3fx", serial_s / o.budget),
                           cell(">%.1fx", o.budget / tbb_s), cell("%.2f", m.cpu_seconds), "-", "-", "-",
                           cell("%.1f", m.peak_rss_mib)});
        return;
    }
    const double s = m.s.seconds;
    const double cpu = m.s.user_seconds + m.s.system_seconds;
    print_row(o.name, {cell("%.1f", s * 1e3), cell("%.3fx", serial_s / s), cell("%.2fx", s / tbb_s), cell("%.2f", cpu),
                       cell("%.2f", m.s.user_seconds / s), cell("%.1f", cpu * 1e9 / forks),
                       cell("%.3f", m.s.value / forks), cell("%.1f", m.peak_rss_mib)});
}

// Runs every variant of one workload; returns false if a result was wrong
// or a variant failed.
bool run_workload(const char* title, const problem& p, const tree_shape& shape, long expected, const bench::options& opt) {
    std::printf("\n%s: %llu calls = %llu leaves + %llu forks of %u children each\n", title,
                static_cast<unsigned long long>(shape.calls), static_cast<unsigned long long>(shape.leaves),
                static_cast<unsigned long long>(shape.forks), shape.children_per_fork);
    std::fflush(stdout);
    std::vector<outcome> done;
    bool ok = true;
    double serial_s = 0, tbb_s = 0;
    long serial_result = 0;
    for (const auto& v : variants()) {
        outcome o;
        o.name = v.name;
        // hop's variants get a budget (serial and oneTBB always finish):
        // --quick: 20x oneTBB's time (at least 2 s); full size: 60 s.
        if (v.is_hop) o.budget = opt.quick ? std::max(20 * tbb_s, 2.0) : 60.0;
        try {
            o.b = bench::run_isolated_for([&] { return v.run(p, opt.threads); }, o.budget);
        } catch (const std::exception& e) {
            o.failed = true;
            o.error = e.what();
            ok = false;
        }
        if (!o.failed && !o.b.timed_out) {
            const long r = static_cast<long>(o.b.m.s.check);
            if (done.empty()) {
                serial_result = r;
                serial_s = o.b.m.s.seconds;
                if (r != expected) {
                    std::fprintf(stderr, "fork_join_bench: ERROR: %s: serial result %ld, expected %ld\n", title, r, expected);
                    ok = false;
                }
            } else if (r != serial_result) {
                std::fprintf(stderr, "fork_join_bench: ERROR: %s: %s computed %ld, serial %ld\n", title, v.name, r,
                             serial_result);
                o.failed = true;
                o.error = "wrong result " + std::to_string(r) + " (serial: " + std::to_string(serial_result) + ")";
                ok = false;
            }
            if (done.size() == 1) tbb_s = o.b.m.s.seconds;
        }
        if (done.size() < 2 && (o.failed || o.b.timed_out)) {
            // Without serial and oneTBB there is nothing to compare against.
            std::fprintf(stderr, "fork_join_bench: %s: %s failed: %s\n", title, v.name, o.error.c_str());
            return false;
        }
        done.push_back(std::move(o));
    }
    print_header(title);
    for (const auto& o : done) print_outcome(o, shape, serial_s, tbb_s);
    for (const auto& o : done) {
        if (o.b.timed_out) {
            std::printf("  %s: stopped (killed) at its budget of %.1f s (%s); figures with < or > are bounds, "
                        "CPU s and RSS are the whole child's until the kill\n",
                        o.name.c_str(), o.budget, opt.quick ? "20x oneTBB's time, at least 2 s" : "60 s at full size");
        }
    }
    std::fflush(stdout);
    return ok;
}

/// The 1-minute load average (/proc/loadavg), or a negative number if it
/// cannot be read: on a shared machine it says how much of the cores the
/// run could have.
double load_average() {
    double l = -1;
    if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &l) != 1) l = -1;
        std::fclose(f);
    }
    return l;
}

int run(const bench::options& opt) {
    const long fib_n = opt.quick ? 30 : 39;
    const long skynet_levels = opt.quick ? 6 : 8;
    std::printf("fork-join: hop against oneTBB %d.%d (task_group in a task_arena)%s\n", TBB_VERSION_MAJOR,
                TBB_VERSION_MINOR, opt.quick ? "  (--quick: small sizes)" : "");
    std::printf("cores: %zu   threads (hop pool, oneTBB arena): %zu   load average: %.2f   every call a task, no "
                "serial cutoff\n",
                bench::core_count(), opt.threads, load_average());
    std::printf("time ms: wall time of one run; speedup: serial time / time; vs TBB: time / oneTBB's time (below 1: faster)\n"
                "CPU s: user + system CPU time of the run, all threads; user/wall: user CPU s per wall s (cores busy)\n"
                "CPU ns/fork: CPU s / forks; new/fork: global operator new calls / forks (oneTBB allocates its tasks\n"
                "from its own pools; hop's coroutine frames come from a per-thread cache that calls operator new when\n"
                "empty); RSS MiB: peak RSS of the variant's own child process\n");
    bool ok = true;
    if (opt.wants("fib")) {
        const tree_shape shape = fib_shape(fib_n);
        // The expected result, by iteration.
        std::vector<long> f(static_cast<std::size_t>(fib_n) + 1, 0);
        f[1] = 1;
        for (std::size_t k = 2; k < f.size(); ++k) f[k] = f[k - 1] + f[k - 2];
        ok = run_workload(("fib(" + std::to_string(fib_n) + ")").c_str(), {workload::fib, fib_n, 20}, shape,
                          f[static_cast<std::size_t>(fib_n)], opt) &&
             ok;
    }
    if (opt.wants("skynet")) {
        const tree_shape shape = skynet_shape(static_cast<int>(skynet_levels));
        const long leaves = skynet_leaves(skynet_levels);
        ok = run_workload(("skynet, " + std::to_string(skynet_levels) + " levels").c_str(),
                          {workload::skynet, skynet_levels, 4}, shape, leaves / 2 * (leaves - 1), opt) &&
             ok;
    }
    std::printf("\nbenchmark driver peak RSS: %.1f MiB   load average at the end: %.2f\n", bench::self_peak_rss_mib(),
                load_average());
    return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    bench::options opt;
    try {
        opt = bench::parse_options(argc, argv, {"fib", "skynet"});
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fork_join_bench: %s\nusage: fork_join_bench [--quick] [--threads N] [--only fib|skynet]\n",
                     e.what());
        return 2;
    }
    try {
        return run(opt);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fork_join_bench: %s\n", e.what());
        return 1;
    }
}
