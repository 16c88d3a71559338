#include <hop/io_loop.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/future.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>
#include <hop/detail/fd_wait.hpp>

#include "support/backend.hpp"
#include "support/counted.hpp"
#include "support/guard.hpp"
#include "support/os.hpp"
#include "lib/loop_core.hpp"

#include <doctest/doctest.h>

#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <latch>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::what_of;
using hop_test::options_for;
using hop_test::env_override;
using hop_test::pipe_fds;

namespace {

// A failure guard only: every wait below is released by the test itself; the
// bound turns a lost wakeup into a failed check instead of a hung run.
constexpr auto guard = hop_test::scaled(30s);

/// Runs loop.run() on a helper thread; its result, or nullopt if it did not
/// return within the guard (the loop is then stopped so the thread ends).
std::optional<std::size_t> run_guarded(hop::io_loop& loop) {
    hop::promise<std::size_t> p;
    auto f = p.get_future();
    std::thread t([&] {
        try {
            p.set_value(loop.run());
        } catch (...) {
            p.set_exception(std::current_exception());
        }
    });
    const bool returned = f.wait_for(guard);
    if (!returned) loop.stop();
    t.join();
    if (!returned) return std::nullopt;
    return f.get();
}


hop::task<int> answer() { co_return 42; }

hop::task<int> answer_after_sleep() {
    co_await hop::sleep_for(1ms);
    co_return 42;
}

hop::task<int> failing() {
    co_await hop::sleep_for(1ms);
    throw std::runtime_error("boom from a task");
}

hop::task<void> nothing() { co_return; }

hop::task<int> sleep_then_one(std::chrono::milliseconds d) {
    co_await hop::sleep_for(d);
    co_return 1;
}

// ---- the io_uring -> epoll fallback, in a child process -------------------

// The child's exit codes (0 = all good).
enum fallback_code : int {
    fb_ok = 0,
    fb_no_new_privs = 10,
    fb_seccomp = 11,
    fb_filter_not_active = 12,
    fb_not_epoll = 13,
    fb_epoll_loop_broken = 14,
    fb_automatic_threw = 15,
    fb_io_uring_started = 16,
    fb_io_uring_wrong_errno = 17,
    fb_io_uring_wrong_exception = 18,
};

const char* fallback_code_text(int code) {
    switch (code) {
        case fb_ok:
            return "ok";
        case fb_no_new_privs:
            return "prctl(PR_SET_NO_NEW_PRIVS) failed";
        case fb_seccomp:
            return "installing the seccomp filter failed";
        case fb_filter_not_active:
            return "io_uring_setup did not fail with the filtered errno";
        case fb_not_epoll:
            return "backend::automatic did not fall back to epoll";
        case fb_epoll_loop_broken:
            return "the fallback loop did not run a posted callable";
        case fb_automatic_threw:
            return "backend::automatic threw";
        case fb_io_uring_started:
            return "backend::io_uring started despite the filter";
        case fb_io_uring_wrong_errno:
            return "backend::io_uring threw std::system_error with another errno";
        case fb_io_uring_wrong_exception:
            return "backend::io_uring threw something other than std::system_error";
    }
    return "unexpected exit";
}

/// Makes io_uring_setup fail with `err` for this process (and its future
/// children); everything else is allowed.
bool refuse_io_uring_setup(int err) {
    sock_filter filter[] = {
#if defined(__x86_64__)
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
#elif defined(__aarch64__)
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_AARCH64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
#endif
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<unsigned>(err) & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{};
    prog.len = static_cast<unsigned short>(sizeof filter / sizeof filter[0]);
    prog.filter = filter;
    return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) == 0;
}

/// The child's body: returns a fallback_code. `check_errno`: io_uring works
/// in the parent, so an explicit backend::io_uring must fail with `err`.
int fallback_child(int err, bool check_errno) {
    ::unsetenv("HOP_BACKEND");
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fb_no_new_privs;
    if (!refuse_io_uring_setup(err)) return fb_seccomp;
    io_uring_params params{};
    errno = 0;
    if (::syscall(__NR_io_uring_setup, 4, &params) != -1 || errno != err) return fb_filter_not_active;
    try {
        hop::io_loop loop;  // backend::automatic
        if (loop.backend_name() != "epoll" || loop.backend_kind() != hop::backend::epoll) return fb_not_epoll;
        bool ran = false;
        loop.post([&] { ran = true; });
        loop.poll();
        if (!ran) return fb_epoll_loop_broken;
    } catch (...) {
        return fb_automatic_threw;
    }
    try {
        hop::io_loop loop{options_for(hop::backend::io_uring)};
        return fb_io_uring_started;
    } catch (const std::system_error& e) {
        if (check_errno && e.code().value() != err) return fb_io_uring_wrong_errno;
    } catch (...) {
        return fb_io_uring_wrong_exception;
    }
    return fb_ok;
}

}  // namespace

TEST_SUITE("io_loop") {

// First in the file: fork() while this process has few threads.
TEST_CASE("automatic falls back to epoll where seccomp refuses io_uring_setup") {
    const bool uring_here = hop_test::available(hop::backend::io_uring);
    for (int err : {ENOSYS, EPERM}) {
        INFO("io_uring_setup fails with errno " << err);
        // Nothing buffered may be written twice (the child ends with _exit).
        std::cout.flush();
        std::cerr.flush();
        std::fflush(nullptr);
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) ::_exit(fallback_child(err, uring_here));
        int status = 0;
        pid_t r;
        do {
            r = ::waitpid(pid, &status, 0);
        } while (r < 0 && errno == EINTR);
        REQUIRE(r == pid);
        REQUIRE(WIFEXITED(status));
        INFO("child: " << fallback_code_text(WEXITSTATUS(status)));
        CHECK(WEXITSTATUS(status) == fb_ok);
    }
}

TEST_CASE("backend_name and backend_kind say which backend runs") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        CHECK(loop.backend_name() == hop_test::backend_label(b));
        CHECK(loop.backend_kind() == b);
    });
}

TEST_CASE("a queue_depth out of range throws std::invalid_argument naming it") {
    for_each_backend([](hop::backend b) {
        for (unsigned depth : {0u, 40000u}) {
            INFO("queue_depth " << depth);
            auto what = what_of<std::invalid_argument>([&] { hop::io_loop loop{options_for(b, depth)}; });
            CHECK(what.find("queue_depth " + std::to_string(depth)) != std::string::npos);
        }
        // The ends of the range are accepted.
        hop::io_loop small{options_for(b, 1)};
        CHECK(small.backend_kind() == b);
    });
}

TEST_CASE("HOP_BACKEND=garbage makes io_loop{} throw std::invalid_argument naming it") {
    // Read the backends under test before the variable changes.
    const auto backends = hop_test::backends_under_test();
    {
        env_override env("HOP_BACKEND", "garbage-backend");
        auto what = what_of<std::invalid_argument>([] { hop::io_loop loop; });
        CHECK(what.find("garbage-backend") != std::string::npos);
        // An explicit backend does not consult the variable.
        for_each_backend([](hop::backend b) {
            hop::io_loop loop{options_for(b)};
            CHECK(loop.backend_kind() == b);
        });
    }
    // Restored: io_loop{} works again (where the selected backend can start).
    if (hop_test::env_backend_available()) {
        hop::io_loop loop;
        if (backends.size() == 1) CHECK(loop.backend_kind() == backends.front());
    }
}

TEST_CASE("post from many threads runs every callable once; stop() from another thread ends run()") {
    for_each_backend([](hop::backend b) {
        constexpr int threads = 4;
        constexpr int per_thread = 10'000;
        constexpr int total = threads * per_thread;
        hop::io_loop loop{options_for(b)};
        // Touched only on the loop thread (TSan would see anything else).
        std::vector<int> runs(total, 0);
        int ran = 0;
        int off_loop = 0;
        hop::promise<void> all_ran;
        auto all_ran_f = all_ran.get_future();

        hop::promise<std::size_t> returned;
        auto returned_f = returned.get_future();
        std::thread loop_thread([&] { returned.set_value(loop.run()); });

        std::latch start(threads);
        std::vector<std::thread> posters;
        for (int t = 0; t < threads; ++t) {
            posters.emplace_back([&, t] {
                start.arrive_and_wait();
                for (int i = 0; i < per_thread; ++i) {
                    const int id = t * per_thread + i;
                    loop.post([&, id] {
                        ++runs[id];
                        if (!loop.running_in_this_thread()) ++off_loop;
                        if (++ran == total) all_ran.set_value();
                    });
                }
            });
        }
        for (auto& p : posters) p.join();
        CHECK(all_ran_f.wait_for(guard));

        std::thread stopper([&] { loop.stop(); });
        stopper.join();
        const bool run_returned = returned_f.wait_for(guard);
        CHECK(run_returned);
        if (!run_returned) loop.stop();
        loop_thread.join();

        CHECK(ran == total);
        CHECK(off_loop == 0);
        int not_once = 0;
        for (int r : runs) not_once += r != 1;
        CHECK(not_once == 0);
        CHECK(returned_f.get() >= static_cast<std::size_t>(total));
        CHECK(loop.stopped());
    });
}

TEST_CASE("run_once and poll return how many handlers ran") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        CHECK(loop.poll() == 0);

        int ran = 0;
        for (int i = 0; i < 3; ++i) loop.post([&] { ++ran; });
        CHECK(loop.poll() == 3);
        CHECK(ran == 3);
        CHECK(loop.poll() == 0);

        loop.post([&] { ++ran; });
        loop.post([&] { ++ran; });
        CHECK(loop.run_once() == 2);
        CHECK(ran == 5);

        // run_once waits for an event: a post from another thread.
        std::thread poster([&] { loop.post([&] { ++ran; }); });
        std::size_t woken = 0;
        while (ran < 6) woken += loop.run_once();
        poster.join();
        CHECK(woken == 1);

        // A timer: the spawned task's start is one handler, the firing
        // another (one run_once may run both if the machine is slow). A
        // sleep whose deadline has passed by the time it is awaited does not
        // wait (that happened once at 1 ms under ASan on a loaded machine):
        // then the start is the only handler, and the task is done after it.
        auto f = loop.spawn(sleep_then_one(50ms));
        std::size_t handlers = loop.run_once();
        const bool slept = !(handlers == 1 && f.done());
        while (!f.done()) handlers += loop.run_once();
        CHECK(handlers == (slept ? 2u : 1u));
        CHECK(f.get() == 1);

        loop.stop();
        loop.post([&] { ++ran; });
        CHECK(loop.run_once() == 0);
        CHECK(ran == 6);
        loop.restart();
        CHECK(loop.run_once() == 1);
        CHECK(ran == 7);
    });
}

TEST_CASE("stop before run: run returns at once; restart makes the loop runnable again") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        CHECK_FALSE(loop.stopped());
        loop.stop();
        CHECK(loop.stopped());
        CHECK(loop.run() == 0);

        // Work posted while stopped waits for restart().
        int ran = 0;
        loop.post([&] {
            ++ran;
            loop.stop();
        });
        CHECK(loop.run() == 0);
        CHECK(ran == 0);

        loop.restart();
        CHECK_FALSE(loop.stopped());
        auto n = run_guarded(loop);
        REQUIRE(n.has_value());
        CHECK(*n == 1);
        CHECK(ran == 1);
        CHECK(loop.stopped());

        // And once more, stopped from another thread this time.
        loop.restart();
        hop::promise<void> running;
        auto running_f = running.get_future();
        loop.post([&] { running.set_value(); });
        std::thread stopper([&] {
            if (running_f.wait_for(guard)) loop.stop();
        });
        n = run_guarded(loop);
        stopper.join();
        CHECK(n.has_value());
    });
}

namespace {

struct schedule_report {
    std::thread::id before;
    std::thread::id on_loop;
    std::thread::id after_second;
    hop::io_loop* current_before = nullptr;
    hop::io_loop* current_on_loop = nullptr;
    bool second_suspended = true;
};

hop::task<void> hop_onto_loop(hop::io_loop& loop, schedule_report& r) {
    r.before = std::this_thread::get_id();
    r.current_before = hop::current_loop();
    co_await loop.schedule();
    r.on_loop = std::this_thread::get_id();
    r.current_on_loop = hop::current_loop();
    auto again = loop.schedule();
    hop_test::suspend_spy<hop::io_loop::schedule_operation> spy{again};
    co_await spy;
    r.second_suspended = spy.suspended;
    r.after_second = std::this_thread::get_id();
}

hop::task<void> schedule_after_gate(hop::io_loop& loop, hop::future<void> gate, bool& reached_loop) {
    co_await gate;  // not a cancellation point
    co_await loop.schedule();
    reached_loop = true;
}

}  // namespace

TEST_CASE("schedule() moves a coroutine from a cpu_pool onto the loop thread, and is free there") {
    for_each_backend([](hop::backend b) {
        hop::cpu_pool pool{2};
        hop_test::running_loop rl(b);
        schedule_report r;
        auto f = hop::spawn(pool, hop_onto_loop(rl.loop(), r));
        REQUIRE(f.wait_for(guard));
        f.get();
        CHECK(r.before != rl.thread_id());
        CHECK(r.current_before == nullptr);
        CHECK(r.on_loop == rl.thread_id());
        CHECK(r.current_on_loop == &rl.loop());
        CHECK_FALSE(r.second_suspended);
        CHECK(r.after_second == rl.thread_id());

        // A cancellation point: stop requested before it throws cancelled_error.
        hop::promise<void> gate;
        bool reached_loop = false;
        auto g = hop::spawn(pool, schedule_after_gate(rl.loop(), gate.get_future(), reached_loop));
        CHECK(g.cancel());
        gate.set_value();
        REQUIRE(g.wait_for(guard));
        CHECK(g.cancelled());
        CHECK_THROWS_AS(g.get(), hop::cancelled_error);
        CHECK_FALSE(reached_loop);
    });
}

TEST_CASE("spawn returns a future for the task's value or exception") {
    for_each_backend([](hop::backend b) {
        hop_test::running_loop rl(b);
        auto f = rl.loop().spawn(answer_after_sleep());
        REQUIRE(f.wait_for(guard));
        CHECK(f.get() == 42);

        auto v = rl.loop().spawn(nothing());
        REQUIRE(v.wait_for(guard));
        CHECK_NOTHROW(v.get());

        auto e = rl.loop().spawn(failing());
        REQUIRE(e.wait_for(guard));
        CHECK_FALSE(e.cancelled());
        CHECK(what_of<std::runtime_error>([&] { e.get(); }) == "boom from a task");

        CHECK_THROWS_AS(rl.loop().spawn(hop::task<int>{}), std::invalid_argument);
    });
}

namespace {

hop::task<std::string> backend_inside_run(hop::io_loop*& seen) {
    seen = hop::current_loop();
    co_await hop::sleep_for(1ms);
    co_return std::string(hop::current_loop()->backend_name());
}

hop::task<int> stop_inside_run() {
    hop::current_loop()->stop();
    co_await hop::sleep_for(1h);  // never passes: 1 ms could, under ASan on a loaded machine
    co_return 1;
}

}  // namespace

TEST_CASE("hop::run returns the task's value or rethrows its exception") {
    if (!hop_test::env_backend_available()) return;
    CHECK(hop::current_loop() == nullptr);
    CHECK(hop::run(answer()) == 42);
    CHECK(hop::run(answer_after_sleep()) == 42);
    CHECK_NOTHROW(hop::run(nothing()));
    CHECK(what_of<std::runtime_error>([] { hop::run(failing()); }) == "boom from a task");
    CHECK(hop::current_loop() == nullptr);

    // It runs on a loop of its own, on this thread, with the selected backend.
    hop::io_loop* seen = nullptr;
    auto name = hop::run(backend_inside_run(seen));
    CHECK(seen != nullptr);
    const auto& backends = hop_test::backends_under_test();
    if (backends.size() == 1) CHECK(name == hop_test::backend_label(backends.front()));

    // Stopping hop::run's loop before the task ends is a logic error, not a hang.
    CHECK_THROWS_AS(hop::run(stop_inside_run()), std::logic_error);
}

namespace {

hop::task<hop::io_loop*> current_in_task() {
    auto* before = hop::current_loop();
    co_await hop::sleep_for(1ms);
    if (hop::current_loop() != before) co_return nullptr;
    co_return before;
}

hop::task<hop::io_loop*> current_on_pool(hop::cpu_pool& pool) {
    co_await pool.schedule();
    co_return hop::current_loop();
}

}  // namespace

TEST_CASE("current_loop() is the loop running on this thread, null elsewhere") {
    for_each_backend([](hop::backend b) {
        hop::cpu_pool pool{1};
        hop_test::running_loop rl(b);
        CHECK(hop::current_loop() == nullptr);

        hop::promise<hop::io_loop*> in_post;
        auto in_post_f = in_post.get_future();
        rl.loop().post([&] { in_post.set_value(hop::current_loop()); });
        REQUIRE(in_post_f.wait_for(guard));
        CHECK(in_post_f.get() == &rl.loop());

        auto in_task = rl.loop().spawn(current_in_task());
        REQUIRE(in_task.wait_for(guard));
        CHECK(in_task.get() == &rl.loop());

        // A task that hops from the loop to the pool sees no loop there.
        auto on_pool = rl.loop().spawn(current_on_pool(pool));
        REQUIRE(on_pool.wait_for(guard));
        CHECK(on_pool.get() == nullptr);
        CHECK(hop::current_loop() == nullptr);
    });
}

namespace {

struct default_loop_report {
    hop::io_loop* timed_by = nullptr;
    std::thread::id before;
    std::thread::id after;
};

hop::task<default_loop_report> sleep_without_a_loop() {
    default_loop_report r;
    r.timed_by = &hop::this_thread_loop();
    r.before = std::this_thread::get_id();
    co_await hop::sleep_for(2ms);
    r.after = std::this_thread::get_id();
    co_return r;
}

}  // namespace

TEST_CASE("default_loop() runs on a background thread; sleep_for from a plain sync_wait uses it") {
    if (!hop_test::env_backend_available()) return;
    hop::io_loop& d = hop::default_loop();
    CHECK(&hop::default_loop() == &d);
    CHECK(hop::current_loop() == nullptr);
    CHECK(&hop::this_thread_loop() == &d);
    CHECK_FALSE(d.running_in_this_thread());

    hop::promise<std::thread::id> where;
    auto where_f = where.get_future();
    d.post([&] { where.set_value(d.running_in_this_thread() ? std::this_thread::get_id() : std::thread::id{}); });
    REQUIRE(where_f.wait_for(guard));
    const auto loop_thread = where_f.get();
    CHECK(loop_thread != std::thread::id{});
    CHECK(loop_thread != std::this_thread::get_id());

    // The sleep is timed by the default loop; the caller resumes on its own
    // (the sync_wait) thread.
    auto r = hop::sync_wait(sleep_without_a_loop());
    CHECK(r.timed_by == &d);
    CHECK(r.before == std::this_thread::get_id());
    CHECK(r.after == std::this_thread::get_id());
}

namespace {

hop::task<void> long_sleeper(hop_test::counted c, std::atomic<int>& started) {
    (void)c;
    started.fetch_add(1, std::memory_order_relaxed);
    co_await hop::sleep_for(1h);
}

hop::task<void> nested_sleeper(hop_test::counted c, std::atomic<int>& started) {
    (void)c;
    co_await long_sleeper(c, started);
}

// Catches the cancellation and waits again: the dying loop must not hang.
hop::task<void> stubborn_sleeper(hop_test::counted c, std::atomic<int>& started, std::atomic<int>& second_cancel) {
    (void)c;
    started.fetch_add(1, std::memory_order_relaxed);
    bool cancelled = false;
    try {
        co_await hop::sleep_for(1h);
    } catch (const hop::cancelled_error&) {
        cancelled = true;
    }
    if (!cancelled) co_return;
    try {
        co_await hop::sleep_for(1h);
    } catch (const hop::cancelled_error&) {
        second_cancel.fetch_add(1, std::memory_order_relaxed);
        throw;
    }
}

}  // namespace

TEST_CASE("destroying a loop cancels its suspended sleepers and frees every frame") {
    for_each_backend([](hop::backend b) {
        hop_test::counters c;
        std::atomic<int> started{0};
        std::atomic<int> second_cancel{0};
        std::vector<hop::future<void>> fs;
        {
            hop::io_loop loop{options_for(b)};
            for (int i = 0; i < 80; ++i) fs.push_back(loop.spawn(long_sleeper(hop_test::counted{c}, started)));
            for (int i = 0; i < 10; ++i) fs.push_back(loop.spawn(nested_sleeper(hop_test::counted{c}, started)));
            for (int i = 0; i < 10; ++i) {
                fs.push_back(loop.spawn(stubborn_sleeper(hop_test::counted{c}, started, second_cancel)));
            }
            loop.poll();  // every task starts and suspends in its sleep
            CHECK(started.load() == 100);
            CHECK(c.alive() > 0);
            for (auto& f : fs) CHECK_FALSE(f.done());
        }
        CHECK(c.alive() == 0);
        CHECK(second_cancel.load() == 10);
        int cancelled = 0;
        for (auto& f : fs) cancelled += f.done() && f.cancelled();
        CHECK(cancelled == 100);
        CHECK_THROWS_AS(fs.front().get(), hop::cancelled_error);
    });
}

TEST_CASE("native_handle() lets a plain poll(2) loop drive hop with poll()") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const int fd = loop.native_handle();
        REQUIRE(fd >= 0);
        CHECK(loop.native_handle() == fd);

        auto slept = loop.spawn(sleep_then_one(10ms));
        bool posted_ran = false;  // written by loop.poll(), on this thread
        std::thread poster([&] {
            if (slept.wait_for(guard)) loop.post([&] { posted_ran = true; });
        });

        bool fd_timed_out = false;
        while (!(slept.done() && posted_ran)) {
            pollfd p{};
            p.fd = fd;
            p.events = POLLIN;
            const int r = ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(guard).count()));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                FAIL_CHECK("poll(2) failed: errno " << errno);
                break;
            }
            if (r == 0) {
                fd_timed_out = true;  // work was due but the fd never said so
                break;
            }
            loop.poll();
        }
        poster.join();
        CHECK_FALSE(fd_timed_out);
        REQUIRE(slept.done());
        CHECK(slept.get() == 1);
        CHECK(posted_ran);

        // With nothing else pending, each post from another thread alone
        // must make the fd readable (the wakeup is re-armed every time).
        for (int round = 0; round < 3 && !fd_timed_out; ++round) {
            INFO("round " << round);
            bool round_ran = false;
            std::thread other([&] { loop.post([&] { round_ran = true; }); });
            while (!round_ran) {
                pollfd p{};
                p.fd = fd;
                p.events = POLLIN;
                const int r = ::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(guard).count()));
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) {
                    fd_timed_out = true;
                    break;
                }
                loop.poll();
            }
            other.join();
            CHECK_FALSE(fd_timed_out);
        }
    });
}

namespace {

// Each round needs a host handler to run before the hop task can go on.
hop::task<int> interleaved(asio::io_context& ctx, hop::io_loop& loop, std::vector<std::string>& log) {
    for (int i = 0; i < 3; ++i) {
        hop::promise<int> p;
        auto from_host = p.get_future();
        auto handler = [&log, i, p = std::move(p)]() mutable {
            log.push_back("host " + std::to_string(i));
            p.set_value(i);
        };
        asio::post(ctx, std::move(handler));
        const int v = co_await from_host;
        if (hop::current_loop() != &loop) co_return -1;
        log.push_back("hop " + std::to_string(v));
    }
    co_await hop::sleep_for(5ms);
    auto result = [&log] { log.push_back("result"); };
    asio::post(ctx, result);
    co_return 42;
}

}  // namespace

TEST_CASE("an io_loop hosted on an asio::io_context runs hop tasks between the host's handlers") {
    asio::io_context ctx;
    hop::io_loop loop(ctx);
    CHECK(loop.backend_name() == "epoll");
    CHECK_THROWS_AS(loop.native_handle(), std::logic_error);

    std::vector<std::string> log;  // appended by host handlers and hop code alike, all on this thread
    auto f = loop.spawn(interleaved(ctx, loop, log));
    ctx.run();  // returns when neither side has work left
    REQUIRE(f.done());
    CHECK(f.get() == 42);
    const std::vector<std::string> expected{"host 0", "hop 0", "host 1", "hop 1", "host 2", "hop 2", "result"};
    CHECK(log == expected);

    // The loop's own run_once() drives the host context too.
    ctx.restart();
    auto g = loop.spawn(sleep_then_one(1ms));
    while (!g.done()) loop.run_once();
    CHECK(g.get() == 1);
}

namespace {

// Touches `inside` (a plain int) around a sleep: if two host threads ran hop
// work at once, TSan would see the race and the count would go wrong.
hop::task<void> serialised_sleeper(int i, int& inside, int& overlaps, int& done) {
    if (inside++ != 0) ++overlaps;
    --inside;
    co_await hop::sleep_for(std::chrono::microseconds(100 + (i % 7) * 150));
    if (inside++ != 0) ++overlaps;
    ++done;
    --inside;
}

}  // namespace

TEST_CASE("hop work on an asio::io_context run by several threads stays serialised") {
    asio::io_context ctx;
    hop::io_loop loop(ctx);
    int inside = 0;
    int overlaps = 0;
    int done = 0;
    std::vector<hop::future<void>> fs;
    for (int i = 0; i < 200; ++i) fs.push_back(loop.spawn(serialised_sleeper(i, inside, overlaps, done)));
    std::vector<std::thread> hosts;
    for (int t = 0; t < 3; ++t) hosts.emplace_back([&] { ctx.run(); });
    for (auto& h : hosts) h.join();  // run() returns once hop has no timer or work left
    int finished = 0;
    for (auto& f : fs) finished += f.done() && !f.cancelled();
    CHECK(finished == 200);
    CHECK(done == 200);
    CHECK(overlaps == 0);
}

// ---- readiness waits: the loop's first kernel operation ---------------------

namespace {


hop::task<unsigned> wait_readable(int fd, hop_test::counted) { co_return co_await hop::detail::wait_fd(fd, POLLIN); }

hop::task<unsigned> wait_with_timeout(int fd) {
    hop_test::counters unused;
    co_return co_await hop::with_timeout(10ms, wait_readable(fd, hop_test::counted{unused}));
}

template <class T>
void run_until_done(hop::io_loop& loop, const hop::future<T>& f) {
    while (!f.done()) loop.run_once();
}

}  // namespace

TEST_CASE("a readiness wait completes when the fd becomes ready") {
    for_each_backend([](hop::backend b) {
        pipe_fds p;
        hop_test::counters c;
        hop::io_loop loop{options_for(b)};
        auto f = loop.spawn(wait_readable(p.r, hop_test::counted{c}));
        loop.poll();  // armed in the kernel now, nothing ready
        CHECK_FALSE(f.done());
        REQUIRE(::write(p.w, "x", 1) == 1);
        run_until_done(loop, f);
        CHECK((f.get() & POLLIN) != 0);
        CHECK(c.alive() == 0);
    });
}

TEST_CASE("cancelling an in-flight wait cancels it in the kernel and resumes only after its completion") {
    for_each_backend([](hop::backend b) {
        pipe_fds p;
        hop_test::counters c;
        hop::io_loop loop{options_for(b)};
        auto f = loop.spawn(wait_readable(p.r, hop_test::counted{c}));
        loop.poll();
        loop.poll();
        REQUIRE_FALSE(f.done());
        CHECK(f.cancel());  // from this thread; the loop is not running now
        run_until_done(loop, f);
        CHECK(f.cancelled());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        CHECK(c.alive() == 0);
        // The cancelled wait took nothing: data written now is there for the next.
        REQUIRE(::write(p.w, "y", 1) == 1);
        auto g = loop.spawn(wait_readable(p.r, hop_test::counted{c}));
        run_until_done(loop, g);
        CHECK((g.get() & POLLIN) != 0);
        char ch = 0;
        CHECK(::read(p.r, &ch, 1) == 1);
        CHECK(ch == 'y');
    });
}

TEST_CASE("with_timeout on a readiness wait cancels the wait and throws timeout_error") {
    for_each_backend([](hop::backend b) {
        pipe_fds p;
        hop::io_loop loop{options_for(b)};
        auto f = loop.spawn(wait_with_timeout(p.r));
        run_until_done(loop, f);
        CHECK_THROWS_AS(f.get(), hop::timeout_error);
    });
}

TEST_CASE("destroying a loop with waits in flight ends them cancelled and frees every frame") {
    for_each_backend([](hop::backend b) {
        // One pipe per wait: the epoll backend registers an fd once (two
        // concurrent waits on one fd are for the socket types to share).
        std::vector<std::unique_ptr<pipe_fds>> pipes;
        for (int i = 0; i < 10; ++i) pipes.push_back(std::make_unique<pipe_fds>());
        hop_test::counters c;
        std::vector<hop::future<unsigned>> fs;
        {
            hop::io_loop loop{options_for(b)};
            for (auto& p : pipes) fs.push_back(loop.spawn(wait_readable(p->r, hop_test::counted{c})));
            loop.poll();
            loop.poll();
            CHECK(c.alive() == 10);
        }
        CHECK(c.alive() == 0);
        for (auto& f : fs) {
            REQUIRE(f.done());
            CHECK(f.cancelled());
        }
    });
}

TEST_CASE("a loop made on one thread, run on a second and destroyed on a third ends its waits cancelled") {
    // An io_uring ring may be tied to the thread that submits to it
    // (IORING_SETUP_SINGLE_ISSUER): the loop must still work when the thread
    // that runs it is not the one that made it, nor the one that ends it,
    // whether that thread has exited by then or is still alive.
    for_each_backend([](hop::backend b) {
        for (bool runner_alive : {false, true}) {
            INFO("the running thread " << (runner_alive ? "is still alive" : "has exited") << " at the destruction");
            std::vector<std::unique_ptr<pipe_fds>> pipes;
            for (int i = 0; i < 4; ++i) pipes.push_back(std::make_unique<pipe_fds>());
            hop_test::counters c;
            std::vector<hop::future<unsigned>> fs;
            auto loop = std::make_unique<hop::io_loop>(options_for(b));
            for (auto& p : pipes) fs.push_back(loop->spawn(wait_readable(p->r, hop_test::counted{c})));
            std::latch ran(1);
            std::latch release(1);
            ssize_t wrote = 0;
            std::thread runner([&] {
                loop->poll();
                loop->poll();  // the waits are armed now, on this thread
                wrote = ::write(pipes[0]->w, "x", 1);
                if (wrote == 1) run_until_done(*loop, fs[0]);  // one completes here
                ran.count_down();
                if (runner_alive) release.wait();
            });
            if (runner_alive) {
                ran.wait();
            } else {
                runner.join();
            }
            REQUIRE(wrote == 1);
            REQUIRE(fs[0].done());
            CHECK((fs[0].get() & POLLIN) != 0);
            CHECK(c.alive() == 3);
            std::thread destroyer([&] { loop.reset(); });
            destroyer.join();
            if (runner_alive) {
                release.count_down();
                runner.join();
            }
            CHECK(c.alive() == 0);
            for (std::size_t i = 1; i < fs.size(); ++i) {
                REQUIRE(fs[i].done());
                CHECK(fs[i].cancelled());
            }
        }
    });
}

}  // TEST_SUITE

namespace {

hop::task<void> wait_for_go(hop::event& go) { co_await go.wait(); }

/// `n` tasks alive at once (each waits on an event), then all ended: their
/// frames go to the loop thread's frame cache (and the depot). Returns how
/// many frames are cached then.
hop::task<std::size_t> churn_frames(hop::io_loop& loop, std::size_t n) {
    hop::event go;
    hop::task_group g;
    for (std::size_t i = 0; i < n; ++i) g.spawn(wait_for_go(go));
    co_await loop.schedule();  // queued behind the children: they all wait now
    go.set();
    co_await g.wait();
    co_return hop::detail::cached_frames();
}

hop::task<std::size_t> cached_now() { co_return hop::detail::cached_frames(); }

hop::task<void> nap(std::chrono::milliseconds d) { co_await hop::sleep_for(d); }

}  // namespace

TEST_CASE("io_loop: idle_trim: a loop that idles after work gives its cached frames back (frame cache and depot "
          "emptied), once per idle period") {
    for_each_backend([](hop::backend b) {
        auto o = options_for(b);
        o.idle_trim = 20ms;
        hop::io_loop loop{o};
        std::thread runner([&loop] { loop.run(); });
        const auto trims_before = loop.core().idle_trims();
        CHECK(trims_before == 0);  // nothing ran yet: nothing to trim

        const std::size_t cached = loop.spawn(churn_frames(loop, 1000)).get();
        if (hop::detail::frame_cache_enabled()) {
            CHECK(cached >= 64);  // a class's worth on the thread at least
        } else {
            MESSAGE("the frame cache is compiled out (HOP_FRAME_CACHE=0): only malloc_trim is checked");
        }

        // The loop idles now: its trim comes idle_trim later. Polled with a
        // generous guard (a failure bound, not a synchronisation).
        const auto guard = std::chrono::steady_clock::now() + 2min;
        while (loop.core().idle_trims() == trims_before && std::chrono::steady_clock::now() < guard) {
            std::this_thread::sleep_for(1ms);
        }
        REQUIRE(loop.core().idle_trims() > trims_before);
        // Nothing ran on the loop thread since: it caches nothing, and the
        // depot shared by all threads is empty.
        CHECK(loop.spawn(cached_now()).get() == 0);

        loop.stop();
        runner.join();
    });
}

TEST_CASE("io_loop: idle_trim: run_once trims once the loop has idled that long after work; 0 never trims; a "
          "negative idle_trim is refused, naming it") {
    for_each_backend([](hop::backend b) {
        auto o = options_for(b);
        o.idle_trim = -5ms;
        const auto what = what_of<std::invalid_argument>([&] { hop::io_loop loop{o}; });
        CHECK_MESSAGE(what.find("idle_trim -5 ms") != std::string::npos, what);

        {
            o.idle_trim = 1ms;
            hop::io_loop loop{o};
            auto f = loop.spawn(churn_frames(loop, 100));
            while (!f.done()) loop.run_once();
            // A timer far away (a guard) keeps run_once from blocking for
            // ever if the trim never came; the trim deadline is sooner.
            auto guard = loop.spawn(nap(2min));
            while (loop.core().idle_trims() == 0 && !guard.done()) loop.run_once();
            CHECK(loop.core().idle_trims() == 1);
            guard.cancel();
            while (!guard.done()) loop.run_once();
        }
        {
            o.idle_trim = 0ms;
            hop::io_loop loop{o};
            auto f = loop.spawn(churn_frames(loop, 100));
            while (!f.done()) loop.run_once();
            auto t = loop.spawn(nap(50ms));
            while (!t.done()) loop.run_once();
            CHECK(loop.core().idle_trims() == 0);
        }
    });
}
