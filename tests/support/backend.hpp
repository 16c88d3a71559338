#pragma once
// The io_loop backend(s) a test runs on. HOP_BACKEND=io_uring|epoll picks
// one (tests/meson.build registers each loop test once per backend); unset
// (or "auto"), a case written with for_each_backend runs on both. Where the
// kernel cannot start a ring, the io_uring cases skip with a MESSAGE — they
// do not fail.

#include <hop/io_loop.hpp>

#include <hop/future.hpp>

#include <doctest/doctest.h>

#include <coroutine>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

namespace hop_test {

inline const char* backend_label(hop::backend b) noexcept {
    switch (b) {
        case hop::backend::io_uring:
            return "io_uring";
        case hop::backend::epoll:
            return "epoll";
        case hop::backend::automatic:
            break;
    }
    return "automatic";
}

/// The backends under test: the one HOP_BACKEND names, or both when it is
/// unset. Read once, at first use.
/// @throws std::invalid_argument for another HOP_BACKEND value.
inline const std::vector<hop::backend>& backends_under_test() {
    static const std::vector<hop::backend> list = [] {
        const char* v = std::getenv("HOP_BACKEND");
        if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0 || std::strcmp(v, "automatic") == 0) {
            return std::vector<hop::backend>{hop::backend::io_uring, hop::backend::epoll};
        }
        if (std::strcmp(v, "io_uring") == 0) return std::vector<hop::backend>{hop::backend::io_uring};
        if (std::strcmp(v, "epoll") == 0) return std::vector<hop::backend>{hop::backend::epoll};
        throw std::invalid_argument(std::string("tests: HOP_BACKEND='") + v + "' is not io_uring, epoll or auto");
    }();
    return list;
}

/// Options that ask for exactly `b`.
inline hop::io_loop_options options_for(hop::backend b, unsigned queue_depth = 256) {
    hop::io_loop_options o;
    o.backend = b;
    o.queue_depth = queue_depth;
    return o;
}

/// Why a loop on `b` cannot start here ("" if it can). Found out once per
/// backend by constructing one.
inline const std::string& unavailable_reason(hop::backend b) {
    auto probe = [](hop::backend which) -> std::string {
        try {
            hop::io_loop loop{options_for(which)};
            return {};
        } catch (const std::system_error& e) {
            return e.what();
        }
    };
    static const std::string uring = probe(hop::backend::io_uring);
    static const std::string epoll = probe(hop::backend::epoll);
    return b == hop::backend::io_uring ? uring : epoll;
}

inline bool available(hop::backend b) { return unavailable_reason(b).empty(); }

/// Calls `f(b)` for each backend under test that can start; one that cannot
/// is skipped with a MESSAGE. Failures inside name the backend.
template <class F>
void for_each_backend(F&& f) {
    for (hop::backend b : backends_under_test()) {
        if (!available(b)) {
            MESSAGE("skipping the " << std::string(backend_label(b)) << " case: it cannot start on this kernel ("
                                    << unavailable_reason(b) << ")");
            continue;
        }
        INFO("backend: " << std::string(backend_label(b)));
        f(b);
    }
}

/// For tests of what a default-constructed io_loop does (hop::run,
/// default_loop): true if the backend HOP_BACKEND selects can start; if it
/// cannot, says so in a MESSAGE.
inline bool env_backend_available() {
    const auto& list = backends_under_test();
    if (list.size() != 1 || available(list.front())) return true;
    MESSAGE("skipping: HOP_BACKEND=" << std::string(backend_label(list.front())) << " cannot start on this kernel ("
                                     << unavailable_reason(list.front()) << ")");
    return false;
}

/// A loop of one backend running on its own thread (run()) until the
/// fixture is destroyed: then it is stopped, joined, and destroyed on the
/// destroying thread.
class running_loop {
public:
    explicit running_loop(hop::backend b) : m_loop(options_for(b)) {
        m_thread = std::thread([this] {
            try {
                m_returned.set_value(m_loop.run());
            } catch (...) {
                m_returned.set_exception(std::current_exception());
            }
        });
    }
    ~running_loop() {
        m_loop.stop();
        if (m_thread.joinable()) m_thread.join();
    }
    running_loop(const running_loop&) = delete;
    running_loop& operator=(const running_loop&) = delete;

    hop::io_loop& loop() noexcept { return m_loop; }
    std::thread::id thread_id() const noexcept { return m_thread.get_id(); }
    /// Done once run() has returned (with its result).
    const hop::future<std::size_t>& returned() const noexcept { return m_returned_future; }

private:
    hop::io_loop m_loop;
    hop::promise<std::size_t> m_returned;
    hop::future<std::size_t> m_returned_future = m_returned.get_future();
    std::thread m_thread;
};

/// Wraps an awaiter (by reference) and records whether awaiting it really
/// suspended the coroutine: `suspend_spy s{op}; co_await s; CHECK(!s.suspended);`
template <class Awaiter>
struct suspend_spy {
    Awaiter& inner;
    bool suspended = false;

    bool await_ready() { return inner.await_ready(); }
    // Once the inner await_suspend has returned true the coroutine may
    // already run on another thread: nothing is written after that.
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        suspended = true;
        if constexpr (std::is_same_v<decltype(inner.await_suspend(h)), bool>) {
            if (inner.await_suspend(h)) return true;
            suspended = false;
            return false;
        } else {
            static_assert(std::is_void_v<decltype(inner.await_suspend(h))>, "suspend_spy: unsupported await_suspend");
            inner.await_suspend(h);
            return true;
        }
    }
    decltype(auto) await_resume() { return inner.await_resume(); }
};

/// The message of the E that `fn` throws, or "(nothing thrown)" (a
/// different exception type propagates and fails the test).
template <class E, class F>
std::string what_of(F&& fn) {
    try {
        fn();
    } catch (const E& e) {
        return e.what();
    }
    return "(nothing thrown)";
}

}  // namespace hop_test
