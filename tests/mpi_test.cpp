// hop::mpi under mpirun (tests/meson.build starts 4 ranks: rank 0 runs
// doctest, ranks 1-3 serve). Every case runs on rank 0 against the one
// cluster executor; the shutdown case comes last in the file because it
// ends that executor.
#include <hop/mpi.hpp>

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support/backend.hpp"
#include "support/guard.hpp"

#include <hop/hop.hpp>

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

hop::mpi::executor* g_cluster = nullptr;

hop::mpi::executor& cluster() {
    REQUIRE(g_cluster != nullptr);
    return *g_cluster;
}

struct tagged {
    std::uint64_t value;
    int rank;
};

tagged triple_impl(std::uint64_t x) { return {x * 3, hop::mpi::rank()}; }
hop::mpi::function<tagged(std::uint64_t)> triple{"triple", &triple_impl};

int inc_impl(int x) { return x + 1; }
hop::mpi::function<int(int)> inc{"inc", &inc_impl};

int fail_on_13_impl(int x) {
    if (x == 13) throw std::range_error("item 13 is unlucky");
    return x;
}
hop::mpi::function<int(int)> fail_on_13{"fail_on_13", &fail_on_13_impl};

/// Size and a checksum of a blob: proves every byte arrived.
std::uint64_t checksum_impl(std::vector<std::uint8_t> blob) {
    std::uint64_t h = blob.size();
    for (std::size_t i = 0; i < blob.size(); i += 4093) h = h * 31 + blob[i];
    return h + blob.back();
}
hop::mpi::function<std::uint64_t(std::vector<std::uint8_t>)> checksum{"checksum", &checksum_impl};

std::string greet_impl(std::string name, int times) {
    std::string out;
    for (int i = 0; i < times; ++i) out += "hi " + name + ";";
    return out;
}
hop::mpi::function<std::string(std::string, int)> greet{"greet", &greet_impl};

/// A user type with the documented serialize/deserialize pair.
struct sample {
    std::string name;
    std::vector<double> xs;
    std::vector<std::string> tags;
    void serialize(hop::mpi::writer& w) const {
        w.write(name);
        w.write(xs);
        w.write(tags);
    }
    static sample deserialize(hop::mpi::reader& r) {
        sample s;
        s.name = r.read<std::string>();
        s.xs = r.read<std::vector<double>>();
        s.tags = r.read<std::vector<std::string>>();
        return s;
    }
};

sample scale_impl(sample s, double k) {
    for (double& x : s.xs) x *= k;
    s.tags.push_back("scaled on rank " + std::to_string(hop::mpi::rank()));
    return s;
}
hop::mpi::function<sample(sample, double)> scale{"scale", &scale_impl};

void nothing_impl(int) {}
hop::mpi::function<void(int)> nothing{"nothing", &nothing_impl};

/// Blocks its pool thread until the file `path` exists: lets a test hold
/// every slot of the cluster on purpose. Fails rather than hanging.
int gate_impl(std::string path) {
    auto deadline = std::chrono::steady_clock::now() + hop_test::scaled(60s);
    while (!std::filesystem::exists(path)) {
        if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("gate " + path + " never opened");
        std::this_thread::sleep_for(1ms);  // polls a condition; the test opens the gate
    }
    return hop::mpi::rank();
}
hop::mpi::function<int(std::string)> gate{"gate", &gate_impl};

/// "mismatch" is int(int) on the worker ranks only (the launcher's rank
/// variable says which rank this is before MPI starts); rank 0 registers
/// it with another signature in its test.
int mismatch_impl(int x) { return x; }
std::unique_ptr<hop::mpi::function<int(int)>> mismatch_on_workers = [] {
    const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
    if (r == nullptr) r = std::getenv("PMI_RANK");
    if (r != nullptr && std::string(r) != "0") {
        return std::make_unique<hop::mpi::function<int(int)>>("mismatch", &mismatch_impl);
    }
    return std::unique_ptr<hop::mpi::function<int(int)>>();
}();

/// A gate: a fresh path that does not exist until open() creates it.
class gate_file {
public:
    gate_file() : m_path(std::filesystem::temp_directory_path() / ("hop_mpi_gate_" + std::to_string(::getpid()) + "_" +
                                                                   std::to_string(s_counter++))) {}
    ~gate_file() { std::filesystem::remove(m_path); }
    std::string path() const { return m_path.string(); }
    void open() { std::ofstream(m_path) << "open\n"; }

private:
    static inline int s_counter = 0;
    std::filesystem::path m_path;
};

/// capacity() gate jobs: every slot on every rank is then taken until the
/// gate opens, so whatever is submitted next waits on rank 0.
std::vector<hop::future<int>> hold_every_slot(const gate_file& g) {
    std::vector<hop::future<int>> held;
    for (std::size_t i = 0; i < cluster().capacity(); ++i) held.push_back(cluster().submit(gate, g.path()));
    return held;
}

/// Waits until rank 0 has sent `f`'s job (its future is then running).
void wait_until_sent(const hop::future<int>& f) {
    auto deadline = std::chrono::steady_clock::now() + hop_test::scaled(30s);
    while (!f.running() && !f.done()) {
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        std::this_thread::yield();
    }
}

}  // namespace

TEST_SUITE("mpi") {
    TEST_CASE("three worker ranks, each with slots") {
        CHECK(cluster().size() == 3);
        CHECK(cluster().capacity() >= 3 * 2);
        CHECK(hop::mpi::rank() == 0);
    }

    TEST_CASE("map of 10,000 items across the workers: input order, every rank used") {
        std::vector<std::uint64_t> items(10'000);
        std::iota(items.begin(), items.end(), std::uint64_t{0});
        auto f = cluster().map(triple, items, 50);
        REQUIRE(f.wait_for(hop_test::scaled(30s)));
        std::vector<tagged> out = f.get();
        REQUIRE(out.size() == items.size());
        std::set<int> ranks;
        for (std::size_t i = 0; i < out.size(); ++i) {
            REQUIRE(out[i].value == items[i] * 3);
            ranks.insert(out[i].rank);
        }
        CHECK(ranks == std::set<int>{1, 2, 3});
        // Default chunking too.
        auto g = cluster().map(triple, std::vector<std::uint64_t>{5, 6, 7}).get();
        CHECK(g.size() == 3);
        CHECK(g[2].value == 21);
        CHECK(cluster().map(triple, std::vector<std::uint64_t>{}).get().empty());
    }

    TEST_CASE("submit: strings, user types, void, and as_completed / wait over cluster futures") {
        CHECK(cluster().submit(greet, std::string("ann"), 2).get() == "hi ann;hi ann;");
        sample s{"s", {1.0, 2.5}, {"a"}};
        sample out = cluster().submit(scale, s, 2.0).get();
        CHECK(out.name == "s");
        CHECK(out.xs == std::vector<double>{2.0, 5.0});
        REQUIRE(out.tags.size() == 2);
        CHECK(out.tags[1].rfind("scaled on rank ", 0) == 0);
        auto v = cluster().submit(nothing, 1);
        v.get();
        CHECK(v.done());

        std::vector<hop::future<int>> fs;
        for (int i = 0; i < 100; ++i) fs.push_back(cluster().submit(inc, i));
        int sum = 0;
        for (const auto& f : hop::as_completed(fs)) sum += f.get();
        CHECK(sum == 100 * 101 / 2);
        auto [done, not_done] = hop::wait(fs);
        CHECK(done.size() == 100);
        CHECK(not_done.empty());
    }

    TEST_CASE("many tiny jobs and a 64 MiB argument") {
        std::vector<hop::future<int>> fs;
        const int n = 20'000;
        fs.reserve(n);
        for (int i = 0; i < n; ++i) fs.push_back(cluster().submit(inc, i));
        long long sum = 0;
        for (auto& f : fs) {
            REQUIRE(f.wait_for(hop_test::scaled(30s)));
            sum += f.get();
        }
        CHECK(sum == static_cast<long long>(n) * (n + 1) / 2);

        std::vector<std::uint8_t> blob(64u << 20);
        for (std::size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<std::uint8_t>(i * 7 + (i >> 13));
        const std::uint64_t want = checksum_impl(blob);
        auto f = cluster().submit(checksum, blob);
        REQUIRE(f.wait_for(hop_test::scaled(30s)));
        CHECK(f.get() == want);
    }

    TEST_CASE("a remote exception rethrows on rank 0 with its message, rank and function") {
        auto f = cluster().submit(fail_on_13, 13);
        REQUIRE(f.wait_for(hop_test::scaled(30s)));
        try {
            f.get();
            FAIL("no exception");
        } catch (const hop::mpi::remote_error& e) {
            CHECK(e.function() == "fail_on_13");
            CHECK(e.rank() >= 1);
            CHECK(e.rank() <= 3);
            CHECK(std::string(e.what()).find("item 13 is unlucky (std::range_error)") != std::string::npos);
            CHECK(std::string(e.what()).find("'fail_on_13' failed on rank " + std::to_string(e.rank())) !=
                  std::string::npos);
        }
        // In a map: the first failure in input order.
        std::vector<int> items(100);
        std::iota(items.begin(), items.end(), 0);
        CHECK_THROWS_WITH_AS(cluster().map(fail_on_13, items, 7).get(), doctest::Contains("item 13 is unlucky"),
                             hop::mpi::remote_error);
        // The executor goes on.
        CHECK(cluster().submit(inc, 1).get() == 2);
    }

    TEST_CASE("unknown names, clashing names and mismatched signatures fail clearly") {
        {
            long (*fp)(long) = [](long x) { return x; };
            CHECK_THROWS_WITH_AS(hop::mpi::function<long(long)>("inc", fp),
                                 doctest::Contains("'inc' is already registered"), std::logic_error);
        }
        {
            hop::mpi::function<int(int)> only_here{"only_on_rank_0", &inc_impl};
            CHECK_THROWS_WITH_AS(cluster().submit(only_here, 1).get(),
                                 doctest::Contains("no function is registered under the name 'only_on_rank_0'"),
                                 hop::mpi::remote_error);
        }
        {
            hop::mpi::function<long(long)> other{"mismatch", [](long x) { return x; }};
            CHECK_THROWS_WITH_AS(cluster().submit(other, 1L).get(), doctest::Contains("'mismatch' is registered with signature"),
                                 hop::mpi::remote_error);
        }
    }

    TEST_CASE("cancelling jobs that wait on rank 0") {
        gate_file g;
        auto held = hold_every_slot(g);
        std::vector<hop::future<int>> queued;
        for (int i = 0; i < 50; ++i) queued.push_back(cluster().submit(inc, i));
        std::vector<int> items(1000, 1);
        auto mapped = cluster().map(inc, items, 10);
        for (auto& f : queued) {
            CHECK(f.cancel());
            CHECK(f.cancelled());
        }
        CHECK(mapped.cancel());
        for (auto& f : held) CHECK_FALSE(f.done());  // nothing answers while the gate is shut
        g.open();
        std::set<int> ranks;
        for (auto& f : held) {
            REQUIRE(f.wait_for(hop_test::scaled(30s)));
            ranks.insert(f.get());
        }
        CHECK(ranks == std::set<int>{1, 2, 3});
        REQUIRE(mapped.wait_for(hop_test::scaled(30s)));
        CHECK(mapped.cancelled());
        CHECK_THROWS_AS(mapped.get(), hop::cancelled_error);
        CHECK(cluster().submit(inc, 41).get() == 42);
    }
}

namespace {

hop::task<int> local_work(int x) { co_return x * 2; }

template <class T>
hop::task<T> await_future(hop::future<T> f) {
    co_return co_await f;
}

}  // namespace

TEST_SUITE("mpi") {
    TEST_CASE("co_await a cluster future on an io_loop (each backend) and on the pool") {
        hop_test::for_each_backend([](hop::backend b) {
            hop::io_loop loop{hop_test::options_for(b)};
            auto body = [&loop]() -> hop::task<int> {
                hop::future<int> a = cluster().submit(inc, 1);
                int first = co_await a;
                CHECK(loop.running_in_this_thread());  // resumed on the loop, not the progress thread
                hop::future<int> b2 = cluster().submit(inc, 2);
                int second = co_await hop::with_timeout(hop_test::scaled(30s), std::move(b2));
                hop::future<int> c = cluster().submit(inc, 3);
                auto [remote, local] = co_await hop::when_all(await_future(std::move(c)), local_work(10));
                CHECK(loop.running_in_this_thread());
                co_return first + second + remote + local;
            };
            auto f = loop.spawn(body());
            f.on_done([&loop](const hop::future<int>&) { loop.stop(); });
            loop.run();
            CHECK(f.get() == 2 + 3 + 4 + 20);
        });

        hop::cpu_pool pool{2};
        auto on_pool = [&pool]() -> hop::task<int> {
            hop::future<int> a = cluster().submit(inc, 5);
            int x = co_await a;
            CHECK(pool.running_in_this_thread());
            hop::future<int> c = cluster().submit(inc, 6);
            auto [remote, local] = co_await hop::when_all(await_future(std::move(c)), local_work(1));
            CHECK(pool.running_in_this_thread());
            co_return x + remote + local;
        };
        auto f = pool.submit(on_pool);
        REQUIRE(f.wait_for(hop_test::scaled(30s)));
        CHECK(f.get() == 6 + 7 + 2);
    }

    // Last: it ends the executor.
    TEST_CASE("shutdown with work in flight: queued jobs cancelled, sent ones finish") {
        gate_file g;
        auto held = hold_every_slot(g);
        for (auto& f : held) wait_until_sent(f);
        std::vector<hop::future<int>> queued;
        for (int i = 0; i < 20; ++i) queued.push_back(cluster().submit(inc, i));
        cluster().shutdown(false, true);
        CHECK(cluster().is_shutdown());
        for (auto& f : queued) {
            REQUIRE(f.done());
            CHECK(f.cancelled());
        }
        CHECK_THROWS_AS(cluster().submit(inc, 1), hop::executor_shutdown_error);
        for (auto& f : held) CHECK_FALSE(f.done());
        g.open();
        cluster().shutdown(true);
        for (auto& f : held) {
            REQUIRE(f.done());
            CHECK(f.get() >= 1);
        }
    }
}

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    return hop::mpi::run(argc, argv, [&](hop::mpi::executor& ex) {
        g_cluster = &ex;
        doctest::Context ctx(argc, argv);
        return ctx.run();
    });
}
