#pragma once
// The one way tests and benchmarks start the programs they run against
// (curl, wrk, nginx, openssl, python3, gunicorn...): a peer is spawned with
// its argv (argv[0] looked up in PATH), extra environment and working
// directory; its stdout and stderr go to pipes read into memory or to a log
// file; its stdin is /dev/null, a given input, or a pipe the caller types
// into. The caller waits for a port to accept, for a line of output, or
// for the exit; the destructor ends the program (SIGTERM, then SIGKILL if it
// lingers) and reaps it. A peer that is not installed, that cannot start,
// or that dies before it is ready is an exception whose message names the
// program and carries what it printed.
//
// Plain C++, no doctest, no hop: bench/common.hpp includes it too. Waiting
// blocks the calling thread: from a coroutine on the loop under test, use
// run_peer() (tests/support/http_peers.hpp) or hop::run_blocking.
// Readiness is polled with a backoff (1 ms doubling to 20 ms) under a
// bounded guard, never slept for.

#include "guard.hpp"     // scaled()
#include "loopback.hpp"  // accepting()

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace hop_test {

/// The full path of `name` found in PATH (or `name` itself if it has a
/// slash and is executable); "" if it is nowhere.
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

/// What a missing peer says: which program, and what to install.
inline std::string not_installed_text(const std::string& name) {
    return "the peer '" + name +
           "' is not installed (not in PATH): install it (scripts/deps installs every peer the tests and "
           "benchmarks use)";
}

/// Calls `ready()` with a backoff (1 ms doubling to 20 ms) until it is true
/// (true), `gone()` is true (then whether `ready()` is), or `guard` passes
/// (false).
template <class Ready, class Gone>
bool poll_until(Ready&& ready, Gone&& gone, std::chrono::steady_clock::duration guard) {
    const auto deadline = std::chrono::steady_clock::now() + guard;
    auto pause = std::chrono::milliseconds(1);
    while (true) {
        if (ready()) return true;
        if (gone()) return ready();
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::milliseconds(20));
    }
}

/// How a peer ended and what it printed.
struct peer_result {
    int wait_status = 0;
    bool timed_out = false;  // killed by the guard
    double cpu_seconds = 0;  // user + system time of the program (and its reaped children)
    std::string out;         // stdout (pipes), or the log (log file)
    std::string err;         // stderr (pipes)

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

/// How to start a peer.
struct peer_options {
    std::vector<std::string> argv;  ///< argv[0]: a name looked up in PATH, or a path
    std::vector<std::string> env;   ///< "NAME=value", added to the environment (replacing NAME)
    std::filesystem::path cwd;      ///< "": the caller's
    /// "": stdout and stderr on pipes, read into memory (read_line, wait);
    /// else both written to this file (output()).
    std::filesystem::path log;
    bool truncate_log = false;  ///< start the log empty (else append)
    /// stdin: a pipe the caller writes (send(), close_stdin()); else
    /// /dev/null, unless `input` is given.
    bool console = false;
    /// Written to stdin (by wait() and read_line(), without blocking), which
    /// is then closed.
    std::string input;

    /// stdout and stderr on pipes; `input` (if any) to stdin.
    static peer_options piped(std::vector<std::string> argv, std::string input = {}) {
        peer_options o;
        o.argv = std::move(argv);
        o.input = std::move(input);
        return o;
    }
    /// stdout and stderr to the file `log`.
    static peer_options logged(std::vector<std::string> argv, std::filesystem::path log) {
        peer_options o;
        o.argv = std::move(argv);
        o.log = std::move(log);
        return o;
    }
};

/// A running peer (see the top of the file). Destroying it ends the
/// program (SIGTERM, up to 5 s, then SIGKILL) and reaps it.
class peer {
public:
    /// @throws std::runtime_error if the program is not installed or
    ///         cannot be started.
    explicit peer(peer_options o) : m_opts(std::move(o)) {
        if (m_opts.argv.empty()) throw std::invalid_argument("hop_test::peer: argv is empty");
        const std::string path = find_program(m_opts.argv[0]);
        if (path.empty()) throw std::runtime_error(not_installed_text(m_opts.argv[0]));
        const bool pipes = m_opts.log.empty();
        const bool stdin_pipe = m_opts.console || !m_opts.input.empty();
        int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
        if ((stdin_pipe && ::pipe2(in, O_CLOEXEC) != 0) || (pipes && ::pipe2(out, O_CLOEXEC) != 0) ||
            (pipes && ::pipe2(err, O_CLOEXEC) != 0)) {
            const int e = errno;
            for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) {
                if (fd >= 0) ::close(fd);
            }
            throw std::runtime_error("hop_test::peer: pipe2 for " + path + ": " + std::strerror(e));
        }
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        if (stdin_pipe) {
            posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        } else {
            posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        }
        if (pipes) {
            posix_spawn_file_actions_adddup2(&fa, out[1], 1);
            posix_spawn_file_actions_adddup2(&fa, err[1], 2);
        } else {
            const int mode = O_WRONLY | O_CREAT | (m_opts.truncate_log ? O_TRUNC : O_APPEND);
            posix_spawn_file_actions_addopen(&fa, 1, m_opts.log.c_str(), mode, 0644);
            posix_spawn_file_actions_adddup2(&fa, 1, 2);
        }
        if (!m_opts.cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, m_opts.cwd.c_str());
        // The test main ignores SIGPIPE: the program starts with default
        // signal handling and nothing blocked, as from a shell.
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
        std::vector<std::string> env_strings = environment();
        std::vector<char*> envp, args;
        for (auto& e : env_strings) envp.push_back(e.data());
        envp.push_back(nullptr);
        for (auto& a : m_opts.argv) args.push_back(a.data());
        args.push_back(nullptr);
        const int rc = ::posix_spawn(&m_pid, path.c_str(), &fa, &attr, args.data(), envp.data());
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        for (int fd : {in[0], out[1], err[1]}) {
            if (fd >= 0) ::close(fd);
        }
        m_in = in[1];
        m_out = out[0];
        m_err = err[0];
        if (rc != 0) {
            m_pid = -1;
            close_pipes();
            throw std::runtime_error("hop_test::peer: posix_spawn of " + path + " failed: " + std::strerror(rc));
        }
        if (!m_opts.input.empty()) ::fcntl(m_in, F_SETFL, O_NONBLOCK);
    }
    ~peer() {
        stop();
        close_pipes();
    }
    peer(const peer&) = delete;
    peer& operator=(const peer&) = delete;

    /// The program's pid; -1 once it has been reaped.
    pid_t pid() const noexcept { return m_pid; }
    const std::string& name() const noexcept { return m_opts.argv[0]; }

    /// False once the program has ended (it is then reaped: wait_status()).
    bool running() {
        if (m_pid <= 0) return false;
        int st = 0;
        rusage ru{};
        if (::wait4(m_pid, &st, WNOHANG, &ru) != m_pid) return true;
        reaped(st, ru);
        return false;
    }
    /// The opposite of running().
    bool exited() { return !running(); }
    int wait_status() const noexcept { return m_result.wait_status; }

    /// Sends `sig` if the program still runs.
    void signal(int sig = SIGTERM) {
        if (m_pid > 0) ::kill(m_pid, sig);
    }

    /// Writes `text` to the program's stdin (a console peer; blocking).
    /// @throws std::runtime_error if stdin is closed or the write fails.
    void send(std::string_view text) {
        if (m_in < 0) throw std::logic_error("hop_test::peer::send: " + name() + "'s stdin is not open");
        while (!text.empty()) {
            const auto n = ::write(m_in, text.data(), text.size());
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                throw std::runtime_error("writing to " + name() + "'s stdin failed: " + std::strerror(errno) +
                                         "; its output:\n" + output());
            }
            text.remove_prefix(static_cast<std::size_t>(n));
        }
    }
    void close_stdin() noexcept { close_fd(m_in); }

    /// Everything the program printed so far: the log file, or (pipes) what
    /// was read so far from stdout and stderr.
    std::string output() const {
        if (m_opts.log.empty()) return m_result.out + m_result.err;
        std::ifstream f(m_opts.log, std::ios::binary);
        std::ostringstream s;
        s << f.rdbuf();
        return s.str();
    }

    /// Pipes: blocks until stdout holds a whole line (or ends); returns it
    /// without its newline, and "" at the end. The rest stays for wait() and
    /// the next lines. Past `guard` the program is killed and "" returned.
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
            if (!pump(deadline)) {
                signal(SIGKILL);
                return {};
            }
        }
    }

    /// Blocks until the program exits (pipes: its outputs read to their
    /// ends); past `guard` it is killed (timed_out). Returns its status,
    /// CPU time and output (with a log file: out holds the log).
    peer_result wait(std::chrono::milliseconds guard = scaled(std::chrono::seconds(120))) {
        return wait_until(std::chrono::steady_clock::now() + guard);
    }
    /// wait() without a guard: for benchmarks, whose programs run as long
    /// as they were told to (the wait is one blocking wait4).
    peer_result wait_unguarded() { return wait_until(std::chrono::steady_clock::time_point::max()); }

    /// Polls until 127.0.0.1:`port` accepts (true), or the program ended
    /// or `guard` passed (false).
    bool wait_for_port(std::uint16_t port, std::chrono::steady_clock::duration guard) {
        return poll_until([&] { return accepting(port); }, [&] { return exited(); }, guard);
    }
    /// Polls the output until `text` appears at or after byte `from`
    /// (true), or the program ended without printing it, or `guard` passed
    /// (false).
    bool wait_for_output(std::string_view text, std::size_t from, std::chrono::steady_clock::duration guard) {
        auto seen = [&] {
            if (m_opts.log.empty()) {
                const auto soon = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
                if (m_out >= 0 || m_err >= 0) pump(soon);
            }
            const std::string out = output();
            return out.size() > from && out.find(text, from) != std::string::npos;
        };
        return poll_until(seen, [&] { return exited(); }, guard);
    }

    /// Ends the program: SIGTERM, up to `grace` to exit, then SIGKILL; reaps it.
    void stop(std::chrono::milliseconds grace = std::chrono::seconds(5)) noexcept {
        if (m_pid <= 0) return;
        ::kill(m_pid, SIGTERM);
        const bool gone = poll_until([&] { return !running(); }, [] { return false; }, grace);
        if (!gone) kill_now();
    }

    /// SIGKILL now, and reaps: the kernel closes its sockets (a FIN to its
    /// peers, nothing said first).
    void kill_now() noexcept {
        if (m_pid <= 0) return;
        ::kill(m_pid, SIGKILL);
        reap_blocking();
    }

private:
    peer_result wait_until(std::chrono::steady_clock::time_point deadline) {
        while (m_out >= 0 || m_err >= 0 || (m_in >= 0 && !m_opts.input.empty())) {
            if (!pump(deadline)) {
                signal(SIGKILL);
                m_result.timed_out = true;
                break;
            }
        }
        if (m_pid > 0 && !m_result.timed_out && deadline != std::chrono::steady_clock::time_point::max()) {
            const bool ended = poll_until([&] { return !running(); }, [] { return false; },
                                          deadline - std::chrono::steady_clock::now());
            if (!ended) {
                signal(SIGKILL);
                m_result.timed_out = true;
            }
        }
        reap_blocking();
        close_pipes();
        peer_result r = m_result;
        if (!m_opts.log.empty()) r.out = output();
        return r;
    }

    std::vector<std::string> environment() const {
        std::vector<std::string> env;
        for (char** e = environ; *e != nullptr; ++e) {
            const std::string_view v(*e);
            const auto same_name = [&](const std::string& o) {
                const auto eq = o.find('=');
                return eq != std::string::npos && v.substr(0, eq + 1) == std::string_view(o).substr(0, eq + 1);
            };
            if (std::none_of(m_opts.env.begin(), m_opts.env.end(), same_name)) env.emplace_back(v);
        }
        env.insert(env.end(), m_opts.env.begin(), m_opts.env.end());
        return env;
    }

    void reaped(int status, const rusage& ru) noexcept {
        m_result.wait_status = status;
        m_result.cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                               static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        m_pid = -1;
    }
    void reap_blocking() noexcept {
        if (m_pid <= 0) return;
        int st = 0;
        rusage ru{};
        while (::wait4(m_pid, &st, 0, &ru) < 0 && errno == EINTR) {
        }
        reaped(st, ru);
    }

    // One poll round over the open pipes: reads what is there, writes what
    // input is left. False once the deadline passed.
    bool pump(std::chrono::steady_clock::time_point deadline) {
        const bool forever = deadline == std::chrono::steady_clock::time_point::max();
        const auto left = forever ? std::chrono::steady_clock::duration::zero() : deadline - std::chrono::steady_clock::now();
        if (!forever && left <= std::chrono::steady_clock::duration::zero()) return false;
        const bool feeding = m_in >= 0 && !m_opts.input.empty();
        std::array<pollfd, 3> fds{};
        nfds_t n = 0;
        if (m_out >= 0) fds[n++] = {m_out, POLLIN, 0};
        if (m_err >= 0) fds[n++] = {m_err, POLLIN, 0};
        if (feeding) fds[n++] = {m_in, POLLOUT, 0};
        if (n == 0) return true;
        const int ms =
            forever ? -1 : static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(left).count()) + 1;
        const int r = ::poll(fds.data(), n, ms);
        if (r < 0 && errno == EINTR) return true;
        if (r == 0) return std::chrono::steady_clock::now() < deadline;
        for (nfds_t i = 0; i < n; ++i) {
            if (fds[i].revents == 0) continue;
            if (fds[i].fd == m_in) {
                const std::string& input = m_opts.input;
                const auto w = ::write(m_in, input.data() + m_input_pos, input.size() - m_input_pos);
                if (w > 0) m_input_pos += static_cast<std::size_t>(w);
                if (w < 0 && errno != EAGAIN && errno != EINTR) m_input_pos = input.size();
                if (m_input_pos == input.size()) close_fd(m_in);
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
        return true;
    }
    static void close_fd(int& fd) noexcept {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
    void close_pipes() noexcept {
        close_fd(m_in);
        close_fd(m_out);
        close_fd(m_err);
    }

    peer_options m_opts;
    std::size_t m_input_pos = 0;
    pid_t m_pid = -1;
    int m_in = -1;
    int m_out = -1;
    int m_err = -1;
    std::size_t m_line_pos = 0;
    peer_result m_result;
};

/// Starts a server peer on a port of its own, retrying on another port
/// while it fails for "Address already in use" (the port picked free was
/// taken meanwhile): `start(attempt)` starts it (on ports it picks) and
/// returns whether it became ready; `log()` is what it printed, for the
/// message. @throws std::runtime_error naming `what`, with the log, if it
/// fails otherwise or 20 ports in a row were taken.
template <class Start, class Log>
void start_on_free_port(const std::string& what, Start&& start, Log&& log) {
    for (int attempt = 0; attempt < 20; ++attempt) {
        if (start(attempt)) return;
        const std::string text = log();
        if (text.find("in use") == std::string::npos) {
            throw std::runtime_error(what + " did not start (or did not become ready in time); its log:\n" + text);
        }
    }
    throw std::runtime_error(what + ": no free port after 20 tries");
}

/// A fresh directory under the temp dir named `prefix`XXXXXX, removed with
/// everything in it.
class temp_dir {
public:
    explicit temp_dir(const std::string& prefix = "hop-test-") {
        std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
        if (::mkdtemp(tmpl.data()) == nullptr) {
            throw std::runtime_error("mkdtemp(" + tmpl + "): " + std::strerror(errno));
        }
        m_path = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(m_path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const std::filesystem::path& path() const noexcept { return m_path; }

private:
    std::filesystem::path m_path;
};

}  // namespace hop_test
