#pragma once
// External programs as test peers (curl, wrk, h2load, python3, nginx...):
// started by the test on loopback ports, their output captured, stopped
// after, all through peer.hpp (peer_process below is its piped form). A
// peer that is not installed fails the test with a message that says so
// (CI installs them through scripts/deps); it never skips.
//
// A peer runs in its own process; waiting for it blocks a thread, so from a
// coroutine on the loop under test use run_peer() (the wait happens on
// hop's blocking pool while the loop goes on), or peer_process and
// hop::run_blocking for a peer read step by step.

#include <hop/file.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include <doctest/doctest.h>

#include "guard.hpp"
#include "loopback.hpp"
#include "peer.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hop_test {

/// find_program (peer.hpp), or a failed test naming the missing peer.
inline std::string require_program(const std::string& name) {
    std::string p = find_program(name);
    REQUIRE_MESSAGE(!p.empty(), not_installed_text(name));
    return p;
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then
/// released): for a peer that must be told its port on its command line.
inline std::uint16_t free_loopback_port() { return free_port(); }

/// A running program with its stdin, stdout and stderr on pipes (a peer,
/// peer.hpp): `input` is written to its stdin, which is then closed.
/// Destroying it ends the program if it still runs, and reaps it.
class peer_process : public peer {
public:
    explicit peer_process(std::vector<std::string> argv, std::string input = {})
        : peer(peer_options::piped(std::move(argv), std::move(input))) {}
};

/// Runs a program to its end on hop's blocking pool and returns what it
/// printed: `auto r = co_await run_peer({"curl", "-s", url});`. The calling
/// loop keeps running meanwhile (the peer may talk to a server on it).
inline hop::task<peer_result> run_peer(std::vector<std::string> argv, std::string input = {}) {
    require_program(argv.at(0));  // on this thread: a missing peer fails here
    auto f = hop::run_blocking([argv = std::move(argv), input = std::move(input)]() mutable {
        peer_process p(std::move(argv), std::move(input));
        return p.wait();
    });
    co_return co_await std::move(f);
}

/// True if 127.0.0.1:`port` answers `GET /status/200 HTTP/1.0` with a 200
/// within `guard` (one try: connect, send, read the status line).
inline bool answers_200(std::uint16_t port, std::chrono::milliseconds guard = std::chrono::seconds(10)) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    const auto ep = hop::endpoint::loopback_v4(port);
    bool ok = false;
    if (::connect(fd, ep.data(), ep.size()) == 0) {
        static constexpr std::string_view req = "GET /status/200 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
            std::string got;
            char buf[512];
            pollfd p{fd, POLLIN, 0};
            while (got.size() < 12 && ::poll(&p, 1, static_cast<int>(guard.count())) == 1) {
                const auto n = ::recv(fd, buf, sizeof buf, 0);
                if (n <= 0) break;
                got.append(buf, static_cast<std::size_t>(n));
            }
            ok = got.starts_with("HTTP/1.") && got.size() >= 12 && got.compare(9, 3, "200") == 0;
        }
    }
    ::close(fd);
    return ok;
}

/// httpbin (Debian's python3-httpbin, a real HTTP app nobody here wrote:
/// redirects, delays, drips, chunked streams) under gunicorn, as PEERS.md
/// says: `/usr/bin/python3 -m gunicorn -b 127.0.0.1:PORT -w 2 --log-level
/// warning httpbin:app` on a free port (`workers`: -w). The constructor returns once it
/// answers (bounded: 2 minutes, for slow sanitizer runs); the destructor
/// stops it with SIGINT (gunicorn's quick shutdown, workers included) and
/// reaps it. gunicorn's sync workers close the connection after each
/// response.
class httpbin_peer {
public:
    explicit httpbin_peer(int workers = 2) {
        require_program("/usr/bin/python3");
        for (int attempt = 0; attempt < 10; ++attempt) {
            m_port = free_loopback_port();
            m_proc = std::make_unique<peer_process>(std::vector<std::string>{
                "/usr/bin/python3", "-m", "gunicorn", "-b", "127.0.0.1:" + std::to_string(m_port), "-w",
                std::to_string(workers), "--log-level", "warning", "--graceful-timeout", "5", "httpbin:app"});
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
            while (m_proc->running() && std::chrono::steady_clock::now() < deadline) {
                if (answers_200(m_port)) return;
                ::usleep(50 * 1000);  // a readiness poll, bounded by the deadline
            }
            const peer_result r = m_proc->wait(std::chrono::seconds(30));
            m_proc.reset();
            if (r.err.find("Address already in use") == std::string::npos) {
                FAIL("httpbin under gunicorn did not answer on 127.0.0.1:"
                     << m_port << " (install python3-httpbin and gunicorn: scripts/deps): " << r.describe());
            }
        }
        FAIL("httpbin: no free port after 10 tries");
    }
    ~httpbin_peer() {
        if (m_proc) {
            m_proc->signal(SIGINT);
            m_proc->wait(std::chrono::seconds(60));  // killed if it lingers
        }
    }
    httpbin_peer(const httpbin_peer&) = delete;
    httpbin_peer& operator=(const httpbin_peer&) = delete;

    std::uint16_t port() const noexcept { return m_port; }
    std::string url(std::string_view path) const {
        return "http://127.0.0.1:" + std::to_string(m_port) + std::string(path);
    }

private:
    std::uint16_t m_port = 0;
    std::unique_ptr<peer_process> m_proc;
};

/// What a finished `wrk` run reports: the request count, after checking it
/// had no socket errors and no non-2xx answers (failed checks otherwise).
inline long wrk_clean_requests(const peer_result& r) {
    REQUIRE_MESSAGE(r.exited_ok(), r.describe());
    CHECK_MESSAGE(r.out.find("Socket errors") == std::string::npos, r.out);
    CHECK_MESSAGE(r.out.find("Non-2xx") == std::string::npos, r.out);
    const auto at = r.out.find(" requests in ");
    REQUIRE_MESSAGE(at != std::string::npos, r.out);
    const auto start = r.out.rfind('\n', at);
    const long requests = std::atol(r.out.c_str() + (start == std::string::npos ? 0 : start + 1));
    CHECK_MESSAGE(requests > 0, r.out);
    return requests;
}

/// Lines of `text` (without their newlines).
inline std::vector<std::string> lines_of(std::string_view text) {
    std::vector<std::string> v;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        std::string line(text.substr(0, nl));
        if (!line.empty() && line.back() == '\r') line.pop_back();
        v.push_back(std::move(line));
        if (nl == std::string_view::npos) break;
        text.remove_prefix(nl + 1);
    }
    return v;
}

}  // namespace hop_test

// ---- raw HTTP/1.x over a hop::tcp_stream ------------------------------------
// For tests that must send bytes no well-behaved client sends, and read the
// answer byte for byte. Deliberately simple: no parser of hop's own is used,
// so a bug there cannot hide itself.

namespace hop_test {

/// A response read off the wire.
struct raw_response {
    int status = 0;
    std::string head;  // status line and fields, up to the blank line
    std::string body;
    bool chunked = false;

    /// The first value of field `name` (case-insensitive), or "" .
    std::string field(std::string_view name) const {
        for (const auto& line : lines_of(head)) {
            const auto colon = line.find(':');
            if (colon == std::string::npos || colon != name.size()) continue;
            bool same = true;
            for (std::size_t i = 0; i < colon; ++i) {
                if (std::tolower(static_cast<unsigned char>(line[i])) !=
                    std::tolower(static_cast<unsigned char>(name[i]))) {
                    same = false;
                }
            }
            if (!same) continue;
            std::string v = line.substr(colon + 1);
            while (!v.empty() && v.front() == ' ') v.erase(0, 1);
            while (!v.empty() && v.back() == ' ') v.pop_back();
            return v;
        }
        return {};
    }
    bool has_field(std::string_view name) const {
        for (const auto& line : lines_of(head)) {
            if (line.size() > name.size() && line[name.size()] == ':') {
                bool same = true;
                for (std::size_t i = 0; i < name.size(); ++i) {
                    if (std::tolower(static_cast<unsigned char>(line[i])) !=
                        std::tolower(static_cast<unsigned char>(name[i]))) {
                        same = false;
                    }
                }
                if (same) return true;
            }
        }
        return false;
    }
};

/// Reads until the peer closes (or resets: then what came before); returns
/// everything read.
inline hop::task<std::string> read_until_close(hop::tcp_stream& s, std::string already = {}) {
    std::string all = std::move(already);
    char buf[16384];
    for (;;) {
        std::size_t n = 0;
        bool reset = false;
        try {
            n = co_await s.read_some(buf);
        } catch (const std::system_error&) {
            reset = true;
        }
        if (reset || n == 0) break;
        all.append(buf, n);
    }
    co_return all;
}

/// Reads one response from `s`; `buffered` holds bytes read before and
/// keeps those read past this response. `no_body`: the answer to HEAD.
/// At the end of the stream before a whole head: status 0.
inline hop::task<raw_response> read_response(hop::tcp_stream& s, std::string& buffered, bool no_body = false) {
    raw_response r;
    char buf[16384];
    auto more = [&]() -> hop::task<bool> {
        std::size_t n = 0;
        try {
            n = co_await s.read_some(buf);
        } catch (const std::system_error&) {
            n = 0;
        }
        buffered.append(buf, n);
        co_return n != 0;
    };
    std::size_t end;
    while ((end = buffered.find("\r\n\r\n")) == std::string::npos) {
        auto step = more();
        if (!co_await std::move(step)) co_return r;
    }
    r.head = buffered.substr(0, end + 2);
    buffered.erase(0, end + 4);
    if (r.head.size() >= 12) r.status = std::atoi(r.head.c_str() + 9);
    if (no_body || r.status == 204 || r.status == 304 || (r.status >= 100 && r.status < 200)) co_return r;
    const std::string te = r.field("Transfer-Encoding");
    const std::string cl = r.field("Content-Length");
    if (te.find("chunked") != std::string::npos) {
        r.chunked = true;
        for (;;) {
            std::size_t eol;
            while ((eol = buffered.find("\r\n")) == std::string::npos) {
                auto step = more();
                if (!co_await std::move(step)) co_return r;
            }
            const std::size_t size = std::strtoul(buffered.c_str(), nullptr, 16);
            buffered.erase(0, eol + 2);
            while (buffered.size() < size + 2) {
                auto step = more();
                if (!co_await std::move(step)) co_return r;
            }
            r.body.append(buffered, 0, size);
            buffered.erase(0, size + 2);
            if (size == 0) co_return r;  // no trailers are sent by hop
        }
    }
    if (!cl.empty()) {
        const std::size_t size = std::strtoul(cl.c_str(), nullptr, 10);
        while (buffered.size() < size) {
            auto step = more();
            if (!co_await std::move(step)) break;
        }
        r.body = buffered.substr(0, std::min(size, buffered.size()));
        buffered.erase(0, r.body.size());
        co_return r;
    }
    // No length: the body runs until the close.
    r.body = co_await read_until_close(s, std::move(buffered));
    buffered.clear();
    co_return r;
}

}  // namespace hop_test
