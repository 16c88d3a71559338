// hop::mpi when MPI reports an error for a rank (tests/meson.build starts 4
// ranks: rank 0 runs doctest, ranks 1-3 serve). OpenMPI 4.1 cannot be made
// to return such an error on demand (a rank that dies ends the whole job,
// tests/mpi_dead_rank.sh), so the errors are simulated by lib/mpi's test
// seam (detail::inject_fault): the next MPI_Isend, or MPI_Test of a send,
// to the chosen rank reports MPI_ERR_OTHER. What runs for real is hop's
// side: the error becomes rank_failed_error for every future outstanding on
// that rank (jobs sent long before included), the rank gets no more work,
// and once no rank is left, work fails instead of waiting forever.
#include <hop/mpi.hpp>

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "lib/mpi/wire.hpp"
#include "support/guard.hpp"

#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

hop::mpi::executor* g_cluster = nullptr;

hop::mpi::executor& cluster() {
    REQUIRE(g_cluster != nullptr);
    return *g_cluster;
}

int inc_impl(int x) { return x + 1; }
hop::mpi::function<int(int)> inc{"inc", &inc_impl};

int where_impl(int) { return hop::mpi::rank(); }
hop::mpi::function<int(int)> where{"where", &where_impl};

/// Polls (with a deadline) until `p` exists.
bool wait_for_file(const fs::path& p) {
    auto deadline = std::chrono::steady_clock::now() + hop_test::scaled(60s);
    while (!fs::exists(p)) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);  // polls a condition another process sets
    }
    return true;
}

/// Writes `path` (whole, or not at all) holding this rank.
void mark(const std::string& path) {
    {
        std::ofstream(path + ".tmp") << hop::mpi::rank() << "\n";
    }
    fs::rename(path + ".tmp", path);
}

/// Writes "<gate>.started.<job>" holding this rank, then blocks its pool
/// thread until the gate file exists: the job stays outstanding on its rank
/// until the test opens the gate, and the test knows which rank that is.
/// "<gate>.passed.<job>" says it went through the gate.
int hold_impl(std::string gate, int job) {
    mark(gate + ".started." + std::to_string(job));
    if (!wait_for_file(gate)) throw std::runtime_error("gate " + gate + " never opened");
    mark(gate + ".passed." + std::to_string(job));
    return hop::mpi::rank();
}
hop::mpi::function<int(std::string, int)> hold{"hold", &hold_impl};

class gate_file {
public:
    gate_file() : m_path(fs::temp_directory_path() / ("hop_mpi_fault_gate_" + std::to_string(::getpid()))) {}
    ~gate_file() {
        fs::remove(m_path);
        for (int j = 0; j < 3; ++j) {
            fs::remove(started(j));
            fs::remove(passed(j));
        }
    }
    std::string path() const { return m_path.string(); }
    fs::path started(int job) const { return m_path.string() + ".started." + std::to_string(job); }
    fs::path passed(int job) const { return m_path.string() + ".passed." + std::to_string(job); }
    void open() { std::ofstream(m_path) << "open\n"; }

private:
    fs::path m_path;
};

/// `f` failed with rank_failed_error naming `rank` and the MPI call.
void check_rank_failed(const hop::future<int>& f, int rank, const std::string& call) {
    REQUIRE(f.wait_for(hop_test::scaled(30s)));
    try {
        f.get();
        FAIL("no exception");
    } catch (const hop::mpi::rank_failed_error& e) {
        CHECK(e.rank() == rank);
        const std::string what = e.what();
        CHECK(what.find("rank " + std::to_string(rank) + " cannot be reached") != std::string::npos);
        CHECK(what.find(call + " failed") != std::string::npos);
    }
}

template <class T>
int failed_rank_of(hop::future<T>& f) {
    REQUIRE(f.wait_for(hop_test::scaled(30s)));
    try {
        f.get();
    } catch (const hop::mpi::rank_failed_error& e) {
        return e.rank();
    }
    return 0;  // no rank failed
}

std::set<int> ranks_used(int items) {
    std::vector<int> in(static_cast<std::size_t>(items));
    std::iota(in.begin(), in.end(), 0);
    auto f = cluster().map(where, in, 1);
    REQUIRE(f.wait_for(hop_test::scaled(30s)));
    auto out = f.get();
    return {out.begin(), out.end()};
}

}  // namespace

TEST_CASE("MPI errors for a rank fail its outstanding futures with rank_failed_error, then the next ranks") {
    REQUIRE(cluster().size() == 3);
    const std::size_t per_rank = cluster().capacity() / 3;
    REQUIRE(per_rank >= 2);

    // One held job per rank: each goes to the rank with the most free slots,
    // so three in a row (none answers) land on three different ranks.
    gate_file g;
    std::vector<hop::future<int>> held;
    for (int j = 0; j < 3; ++j) held.push_back(cluster().submit(hold, g.path(), j));
    std::map<int, hop::future<int>*> held_on;  // rank -> its held job
    for (int j = 0; j < 3; ++j) {
        REQUIRE(wait_for_file(g.started(j)));
        int r = 0;
        std::ifstream(g.started(j)) >> r;
        held_on[r] = &held[static_cast<std::size_t>(j)];
    }
    REQUIRE(held_on.size() == 3);
    REQUIRE(held_on.count(2) == 1);

    // 1. MPI_Isend to rank 2 fails. A map that fills every free slot gives
    // rank 2 its share, so the batch to rank 2 is sent, and fails.
    hop::mpi::detail::inject_fault(hop::mpi::detail::fault_kind::isend, 2, MPI_ERR_OTHER);
    {
        std::vector<int> items(3 * (per_rank - 1), 1);
        auto mapped = cluster().map(inc, items, 1);
        CHECK(failed_rank_of(mapped) == 2);
    }
    // The job sent to rank 2 long before the error fails too, naming it.
    check_rank_failed(*held_on[2], 2, "MPI_Isend");
    CHECK_FALSE(held_on[1]->done());
    CHECK_FALSE(held_on[3]->done());
    CHECK(cluster().capacity() == 2 * per_rank);
    CHECK(ranks_used(60) == std::set<int>{1, 3});

    // 2. MPI_Test of a send to rank 3 fails. (The simulated error leaves the
    // real send going: rank 3 may run and answer the map's chunks before
    // rank 0 tests the send; those answers count, the later ones are
    // ignored. Its held job is outstanding either way.)
    hop::mpi::detail::inject_fault(hop::mpi::detail::fault_kind::test, 3, MPI_ERR_OTHER);
    {
        std::vector<int> items(2 * (per_rank - 1), 1);
        auto mapped = cluster().map(inc, items, 1);
        const int r = failed_rank_of(mapped);
        CHECK((r == 0 || r == 3));
    }
    check_rank_failed(*held_on[3], 3, "MPI_Test");
    CHECK_FALSE(held_on[1]->done());
    CHECK(cluster().capacity() == per_rank);
    CHECK(ranks_used(30) == std::set<int>{1});

    // 3. The last rank: its futures fail, and then work that can never run
    // fails at once (rank -1: no rank in particular) instead of waiting.
    hop::mpi::detail::inject_fault(hop::mpi::detail::fault_kind::isend, 1, MPI_ERR_OTHER);
    auto last = cluster().submit(inc, 1);
    check_rank_failed(last, 1, "MPI_Isend");
    check_rank_failed(*held_on[1], 1, "MPI_Isend");
    CHECK(cluster().capacity() == 0);
    auto orphan = cluster().submit(inc, 2);
    REQUIRE(orphan.wait_for(hop_test::scaled(30s)));
    CHECK_THROWS_WITH_AS(orphan.get(), doctest::Contains("no worker rank is left"), hop::mpi::rank_failed_error);
    try {
        orphan.get();
    } catch (const hop::mpi::rank_failed_error& e) {
        CHECK(e.rank() == -1);
    }

    // The ranks are in fact alive: let their held jobs end, so they stop
    // when rank 0 tells them to (their answers are ignored).
    g.open();
    for (int j = 0; j < 3; ++j) CHECK(wait_for_file(g.passed(j)));
}

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    return hop::mpi::run(argc, argv, [&](hop::mpi::executor& ex) {
        g_cluster = &ex;
        doctest::Context ctx(argc, argv);
        return ctx.run();
    });
}
