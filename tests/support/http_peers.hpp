#pragma once
// External programs as test peers (curl, wrk, h2load, python3, nginx...):
// started by the test on loopback ports, their output captured, stopped
// after. A peer that is not installed fails the test with a message that
// says so (CI installs them through scripts/deps); it never skips.
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

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

extern char** environ;

namespace hop_test {

/// The full path of `name` found in PATH, or "" if it is not there.
inline std::string find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : std::string();
    const char* path = std::getenv("PATH");
    std::string_view rest = path ? path : "/usr/local/bin:/usr/bin:/bin";
    while (true) {
        const auto colon = rest.find(':');
        std::string dir(rest.substr(0, colon));
        if (dir.empty()) dir = ".";
        const std::string full = dir + "/" + name;
        struct stat st {};
        if (::stat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(full.c_str(), X_OK) == 0) return full;
        if (colon == std::string_view::npos) break;
        rest.remove_prefix(colon + 1);
    }
    return {};
}

/// find_program, or a failed test naming the missing peer.
inline std::string require_program(const std::string& name) {
    std::string p = find_program(name);
    REQUIRE_MESSAGE(!p.empty(), "the test peer '" << name
                                                  << "' is not installed (not in PATH): install it (scripts/deps "
                                                     "installs every peer the tests use)");
    return p;
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then
/// released): for a peer that must be told its port on its command line.
inline std::uint16_t free_loopback_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "free_loopback_port: socket");
    const auto ep = hop::endpoint::loopback_v4(0);
    if (::bind(fd, ep.data(), ep.size()) != 0) {
        const int e = errno;
        ::close(fd);
        throw std::system_error(e, std::generic_category(), "free_loopback_port: bind");
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    ::close(fd);
    return hop::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len).port();
}

/// How a peer ended and what it printed.
struct peer_result {
    int wait_status = 0;
    bool timed_out = false;  // killed by the guard
    std::string out;
    std::string err;

    bool exited_ok() const { return !timed_out && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0; }
    int exit_code() const { return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1; }
    /// For failure messages: the status and both outputs (cut).
    std::string describe() const {
        std::string s;
        if (timed_out) {
            s = "killed after the guard ran out";
        } else if (WIFEXITED(wait_status)) {
            s = "exit code " + std::to_string(WEXITSTATUS(wait_status));
        } else if (WIFSIGNALED(wait_status)) {
            s = "killed by signal " + std::to_string(WTERMSIG(wait_status));
        }
        auto cut = [](const std::string& t) { return t.size() > 2000 ? t.substr(0, 2000) + "..." : t; };
        return s + "\n--- stdout:\n" + cut(out) + "\n--- stderr:\n" + cut(err);
    }
};

/// posix_spawn of `path` with `argv` and the file actions `fa`; the child
/// starts with default signal handling and nothing blocked (the test main
/// ignores SIGPIPE). Returns posix_spawn's result; `pid` is set on success.
inline int spawn_program(pid_t& pid, const std::string& path, std::vector<std::string>& argv,
                         const posix_spawn_file_actions_t& fa) {
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    sigaddset(&dfl, SIGTERM);
    sigaddset(&dfl, SIGINT);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const int rc = ::posix_spawn(&pid, path.c_str(), &fa, &attr, args.data(), environ);
    posix_spawnattr_destroy(&attr);
    return rc;
}

/// A running program with its stdin, stdout and stderr on pipes.
/// Destroying it kills the program (SIGKILL) if it still runs, and reaps it.
class peer_process {
public:
    /// Starts argv[0] (looked up in PATH; missing: a failed REQUIRE).
    /// `input` is written to its stdin, which is then closed.
    explicit peer_process(std::vector<std::string> argv, std::string input = {})
        : m_argv(std::move(argv)), m_input(std::move(input)) {
        REQUIRE(!m_argv.empty());
        const std::string path = require_program(m_argv[0]);
        int in[2], out[2], err[2];
        REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        posix_spawn_file_actions_adddup2(&fa, err[1], 2);
        const int rc = spawn_program(m_pid, path, m_argv, fa);
        posix_spawn_file_actions_destroy(&fa);
        ::close(in[0]);
        ::close(out[1]);
        ::close(err[1]);
        m_in = in[1];
        m_out = out[0];
        m_err = err[0];
        if (rc != 0) {
            m_pid = -1;
            close_pipes();
            FAIL("posix_spawn of " << path << " failed: " << std::strerror(rc));
        }
        ::fcntl(m_in, F_SETFL, O_NONBLOCK);
        if (m_input.empty()) close_fd(m_in);
    }
    ~peer_process() {
        if (m_pid > 0) {
            ::kill(m_pid, SIGKILL);
            int st = 0;
            while (::waitpid(m_pid, &st, 0) < 0 && errno == EINTR) {
            }
        }
        close_pipes();
    }
    peer_process(const peer_process&) = delete;
    peer_process& operator=(const peer_process&) = delete;

    pid_t pid() const noexcept { return m_pid; }

    /// False once the program has ended (it is then reaped; wait() still
    /// gives its outputs).
    bool running() {
        if (m_pid <= 0) return false;
        int st = 0;
        if (::waitpid(m_pid, &st, WNOHANG) != m_pid) return true;
        m_result.wait_status = st;
        m_pid = -1;
        return false;
    }

    /// Sends `sig` (SIGTERM by default) if the program still runs.
    void signal(int sig = SIGTERM) {
        if (m_pid > 0) ::kill(m_pid, sig);
    }

    /// Blocks until stdout holds a whole line (or ends); returns it without
    /// its newline, and "" at the end. The rest stays for wait()/next lines.
    /// Past `guard` the program is killed and "" returned.
    std::string read_line(std::chrono::milliseconds guard = scaled(std::chrono::seconds(60))) {
        const auto deadline = std::chrono::steady_clock::now() + guard;
        for (;;) {
            const auto nl = m_result.out.find('\n', m_line_pos);
            if (nl != std::string::npos) {
                std::string line = m_result.out.substr(m_line_pos, nl - m_line_pos);
                m_line_pos = nl + 1;
                return line;
            }
            if (m_out < 0) {
                std::string line = m_result.out.substr(m_line_pos);
                m_line_pos = m_result.out.size();
                return line;
            }
            if (!pump(deadline, /*until_line=*/true)) {
                kill_now();
                return {};
            }
        }
    }

    /// Blocks until the program exits (its outputs read to their ends);
    /// past `guard` it is killed (result.timed_out).
    peer_result wait(std::chrono::milliseconds guard = scaled(std::chrono::seconds(120))) {
        const auto deadline = std::chrono::steady_clock::now() + guard;
        while (m_out >= 0 || m_err >= 0) {
            if (!pump(deadline, false)) {
                kill_now();
                m_result.timed_out = true;
                break;
            }
        }
        if (m_pid > 0) {
            int st = 0;
            while (::waitpid(m_pid, &st, 0) < 0 && errno == EINTR) {
            }
            m_result.wait_status = st;
            m_pid = -1;
        }
        close_pipes();
        return m_result;
    }

private:
    // One poll round over the open pipes. False once the deadline passed.
    bool pump(std::chrono::steady_clock::time_point deadline, bool until_line) {
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= std::chrono::steady_clock::duration::zero()) return false;
        std::array<pollfd, 3> fds{};
        nfds_t n = 0;
        if (m_out >= 0) fds[n++] = {m_out, POLLIN, 0};
        if (m_err >= 0) fds[n++] = {m_err, POLLIN, 0};
        if (m_in >= 0) fds[n++] = {m_in, POLLOUT, 0};
        if (n == 0) return true;
        const int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(left).count()) + 1;
        const int r = ::poll(fds.data(), n, ms);
        if (r < 0 && errno == EINTR) return true;
        if (r == 0) return std::chrono::steady_clock::now() < deadline;
        for (nfds_t i = 0; i < n; ++i) {
            if (fds[i].revents == 0) continue;
            if (fds[i].fd == m_in) {
                const auto w = ::write(m_in, m_input.data() + m_input_pos, m_input.size() - m_input_pos);
                if (w > 0) m_input_pos += static_cast<std::size_t>(w);
                if (w < 0 && errno != EAGAIN && errno != EINTR) m_input_pos = m_input.size();
                if (m_input_pos == m_input.size()) close_fd(m_in);
                continue;
            }
            char buf[16384];
            const auto got = ::read(fds[i].fd, buf, sizeof buf);
            if (got > 0) {
                (fds[i].fd == m_out ? m_result.out : m_result.err).append(buf, static_cast<std::size_t>(got));
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close_fd(fds[i].fd == m_out ? m_out : m_err);
            }
        }
        (void)until_line;
        return true;
    }
    void kill_now() {
        if (m_pid > 0) ::kill(m_pid, SIGKILL);
    }
    static void close_fd(int& fd) {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    void close_pipes() {
        close_fd(m_in);
        close_fd(m_out);
        close_fd(m_err);
    }

    std::vector<std::string> m_argv;
    std::string m_input;
    std::size_t m_input_pos = 0;
    pid_t m_pid = -1;
    int m_in = -1;
    int m_out = -1;
    int m_err = -1;
    std::size_t m_line_pos = 0;
    peer_result m_result;
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
