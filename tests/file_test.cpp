#include <hop/file.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <latch>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {
struct where {
    std::thread::id ran_on;
    std::thread::id resumed_on;
};
hop::task<where> blocking_from_loop() {
    where w;
    w.ran_on = co_await hop::run_blocking([] { return std::this_thread::get_id(); });
    w.resumed_on = std::this_thread::get_id();
    co_return w;
}
}  // namespace

TEST_SUITE("file") {

TEST_CASE("run_blocking returns the value or the exception of the call") {
    CHECK(hop::run_blocking([](int a, int b) { return a * b; }, 6, 7).get() == 42);
    auto f = hop::run_blocking([]() -> int { throw std::runtime_error("disk on fire"); });
    CHECK_THROWS_WITH_AS(f.get(), "disk on fire", std::runtime_error);
}

TEST_CASE("run_blocking runs off the loop thread and resumes the caller on it") {
    hop::io_loop loop;
    auto f = loop.spawn(blocking_from_loop());
    std::thread::id loop_thread = std::this_thread::get_id();
    while (!f.done()) loop.run_once();  // this thread runs the loop
    auto w = f.get();
    CHECK(w.ran_on != loop_thread);
    CHECK(w.resumed_on == loop_thread);
}

TEST_CASE("the blocking pool grows: 16 calls that wait for each other all run at once") {
    // With a fixed pool smaller than 16 this would never finish: the guard
    // below turns that into a failure, not a hang.
    std::latch all_in(16);
    std::vector<hop::future<int>> fs;
    for (int i = 0; i < 16; ++i) {
        fs.push_back(hop::run_blocking([&all_in, i] {
            all_in.arrive_and_wait();
            return i;
        }));
    }
    int sum = 0;
    for (auto& f : fs) {
        REQUIRE(f.wait_for(60s));
        sum += f.get();
    }
    CHECK(sum == 120);
}

}  // TEST_SUITE
