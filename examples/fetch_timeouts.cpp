// Parallel fetch with timeouts: several targets fetched at once, each bounded
// by hop::with_timeout. The targets are local servers started here:
//
//   fast     answers at once
//   medium   answers after 50 ms
//   slow     answers after 2 s: past the timeout, so its fetch is cancelled
//   closed   a port nobody listens on: the connect is refused
//
// Each fetch prints as it ends: ok (with its latency), timeout, or the error.
// The whole run takes about the timeout, not the sum of the delays. A timed
// out fetch is cancelled cleanly: with_timeout cancels the read in the
// kernel, waits for the fetch coroutine to end (its socket closed, its frame
// freed), and only then throws timeout_error.
//
//   fetch_timeouts [--timeout MS]

#include <hop/hop.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// ---- the servers --------------------------------------------------------------

/// One request: read it, wait `delay`, answer, close.
hop::task<> answer(hop::tcp_stream conn, std::string name, std::chrono::milliseconds delay) {
    try {
        char request[256];
        co_await conn.read_some(request);
        co_await hop::sleep_for(delay);  // a slow backend
        co_await conn.write_all("hello from " + name + "\n");
    } catch (const hop::cancelled_error&) {
        throw;
    } catch (const std::exception&) {
        // The client gave up first (the slow target): nothing to do.
    }
}

/// Accepts until cancelled (the task_group cancels and awaits the answers).
hop::task<> serve(hop::tcp_listener listener, std::string name, std::chrono::milliseconds delay) {
    hop::task_group answers;
    try {
        for (;;) answers.spawn(answer(co_await listener.accept(), name, delay));
    } catch (const hop::cancelled_error&) {
    }
    co_await answers.wait();
}

// ---- the client ---------------------------------------------------------------

/// Sets a flag when the fetch coroutine's frame is destroyed: shows that a
/// timed-out fetch has really ended, not been left behind.
struct mark_on_exit {
    bool& ended;
    ~mark_on_exit() { ended = true; }
};

/// Connects, sends a request, reads the answer until the server closes.
/// (`ended` may be a reference: the caller awaits this task at once.)
hop::task<std::string> fetch(hop::endpoint target, bool& ended) {
    mark_on_exit mark{ended};
    hop::tcp_stream conn = co_await hop::tcp_stream::connect(target);
    co_await conn.write_all(std::string_view("GET /\n"));
    std::string reply;
    char buf[1024];
    while (std::size_t n = co_await conn.read_some(buf)) reply.append(buf, n);
    while (!reply.empty() && reply.back() == '\n') reply.pop_back();
    co_return reply;
}  // a cancelled read ends here too: `conn` is closed, `mark` sets the flag

struct target {
    std::string name;
    hop::endpoint at;
};

/// One target, bounded by the timeout; prints its line as soon as it ends.
/// Returns true if it answered.
hop::task<bool> fetch_one(target t, std::chrono::milliseconds timeout) {
    const auto t0 = clock_type::now();
    bool ended = false;
    try {
        std::string reply = co_await hop::with_timeout(timeout, fetch(t.at, ended));
        std::printf("  %-7s ok       %6.1f ms  \"%s\"\n", t.name.c_str(), ms_since(t0), reply.c_str());
        co_return true;
    } catch (const hop::timeout_error&) {
        // with_timeout throws only once the fetch has ended: nothing is left running.
        if (!ended) throw std::logic_error(t.name + ": with_timeout returned before the fetch ended");
        std::printf("  %-7s timeout  %6.1f ms  (the fetch was cancelled and has ended)\n", t.name.c_str(),
                    ms_since(t0));
    } catch (const std::system_error& e) {
        // IO errors carry the errno: ECONNREFUSED, ECONNRESET, ...
        const char* what = e.code() == std::errc::connection_refused ? "refused" : "error";
        std::printf("  %-7s %-8s %6.1f ms  %s\n", t.name.c_str(), what, ms_since(t0), e.what());
    }
    co_return false;
}

hop::task<int> main_task(std::chrono::milliseconds timeout) {
    struct spec {
        const char* name;
        std::chrono::milliseconds delay;
    };
    const spec specs[] = {{"fast", 0ms}, {"medium", 50ms}, {"slow", 2000ms}};

    hop::task_group servers;
    std::vector<target> targets;
    for (const spec& s : specs) {
        auto listener = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));  // port 0: any free port
        targets.push_back({s.name, listener.local_endpoint()});
        servers.spawn(serve(std::move(listener), s.name, s.delay));
    }
    {
        // A port with no listener: bind one to get a free port, then close it.
        auto listener = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
        targets.push_back({"closed", listener.local_endpoint()});
    }

    std::printf("fetching %zu targets at once, timeout %lld ms each\n", targets.size(),
                static_cast<long long>(timeout.count()));
    const auto t0 = clock_type::now();
    std::vector<hop::task<bool>> fetches;
    for (const target& t : targets) fetches.push_back(fetch_one(t, timeout));
    std::vector<bool> ok = co_await hop::when_all(std::move(fetches));
    const double total = ms_since(t0);

    int answered = 0;
    for (bool b : ok) answered += b ? 1 : 0;
    std::printf("%d of %zu answered in %.1f ms total (the delays add up to %lld ms)\n", answered, ok.size(), total,
                static_cast<long long>((0ms + 50ms + 2000ms).count()));

    servers.cancel();  // stop the servers (the slow one is still sleeping)...
    co_await servers.wait();  // ...and wait until they have
    co_return 0;
}

}  // namespace

int main(int argc, char** argv) {
    long timeout_ms = 200;
    for (int i = 1; i < argc; i += 2) {  // --timeout MS: pairs
        const std::string a = argv[i];
        if (a == "--help" || a == "-h") {
            std::puts("usage: fetch_timeouts [--timeout MS]   (default 200)");
            return 0;
        }
        const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
        char* end = nullptr;
        errno = 0;
        if (a != "--timeout") {
            std::fprintf(stderr, "fetch_timeouts: unknown argument '%s'\nusage: fetch_timeouts [--timeout MS]\n",
                         a.c_str());
            return 2;
        }
        timeout_ms = v ? std::strtol(v, &end, 10) : -1;
        if (!v || *v == '\0' || *end != '\0' || errno != 0 || timeout_ms < 0 || timeout_ms > 3'600'000) {
            std::fprintf(stderr, "fetch_timeouts: --timeout %s%s%s: expected milliseconds from 0 to 3600000\n",
                         v ? "'" : "", v ? v : "(missing)", v ? "'" : "");
            return 2;
        }
    }
    try {
        return hop::run(main_task(std::chrono::milliseconds(timeout_ms)));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fetch_timeouts: %s\n", e.what());
        return 1;
    }
}
