#pragma once
// TLS peers nobody here wrote, for the hop::tls tests: started by the test
// on a free 127.0.0.1 port, stopped (killed and reaped) when the fixture
// goes.
//
//   openssl_server   `openssl s_server`: echo (stdin to the client, the
//                    client's data to the log), -www or -rev; -tls1_2 /
//                    -tls1_3, -no_ticket. Its stdin stays open, so the test
//                    can type s_server's commands ("K\n": key update,
//                    "q\n": close_notify) and data.
//   nginx_tls_origin nginx (one process, master_process off) with
//                    `listen ... ssl`, every path inside a temp dir.
//   s_client_args / curl_args   argv for one-shot peers run by run_peer()
//                    (tests/support/http_peers.hpp).
//
// Readiness is polled, never slept for: s_server says "ACCEPT" once it
// listens (a probe connection would be a failed handshake in its log, and
// one of -naccept's connections); nginx is probed by connecting to its port.
// The polls back off from 1 ms to 20 ms and give up after a generous guard
// with the peer's log. A missing binary fails the test (never skips).

#include "http_peers.hpp"
#include "os.hpp"
#include "tls_certs.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace hop_test {

/// How long a peer may take to become ready, or to print what a test waits
/// for, before the test fails: a failure guard, not a synchronisation.
inline constexpr auto tls_peer_guard = scaled(std::chrono::seconds(20));

/// Calls `ready()` with a backoff (1 ms doubling to 20 ms) until it is true
/// (true), `gone()` is true (false), or the guard passes (false).
template <class Ready, class Gone>
bool poll_until(Ready&& ready, Gone&& gone, std::chrono::steady_clock::duration guard = tls_peer_guard) {
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

/// A program with its stdin on a pipe the test writes to (kept open until
/// close_stdin() or the end), and its stdout and stderr in one log file.
/// The destructor ends it (SIGTERM, then SIGKILL if it lingers) and reaps it.
class console_peer {
public:
    console_peer(std::vector<std::string> argv, std::filesystem::path log) : m_log(std::move(log)) {
        REQUIRE(!argv.empty());
        const std::string path = require_program(argv[0]);
        int in[2];
        REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        posix_spawn_file_actions_addopen(&fa, 1, m_log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        const int rc = spawn_program(m_pid, path, argv, fa);
        posix_spawn_file_actions_destroy(&fa);
        ::close(in[0]);
        m_stdin = in[1];
        if (rc != 0) {
            m_pid = -1;
            close_stdin();
            FAIL("posix_spawn of " << path << " failed: " << std::strerror(rc));
        }
    }
    ~console_peer() {
        stop();
        close_stdin();
    }
    console_peer(const console_peer&) = delete;
    console_peer& operator=(const console_peer&) = delete;

    pid_t pid() const noexcept { return m_pid; }

    /// Writes `text` to the program's stdin (blocking; small texts).
    void send(std::string_view text) {
        REQUIRE_MESSAGE(m_stdin >= 0, "console_peer::send after close_stdin");
        while (!text.empty()) {
            const auto n = ::write(m_stdin, text.data(), text.size());
            if (n < 0 && errno == EINTR) continue;
            REQUIRE_MESSAGE(n > 0, "writing to the peer's stdin failed: " << std::strerror(errno) << "\n" << output());
            text.remove_prefix(static_cast<std::size_t>(n));
        }
    }
    void close_stdin() noexcept {
        if (m_stdin >= 0) ::close(m_stdin);
        m_stdin = -1;
    }

    /// Everything the program printed so far (stdout and stderr).
    std::string output() const {
        std::ifstream f(m_log, std::ios::binary);
        std::ostringstream s;
        s << f.rdbuf();
        return s.str();
    }

    /// True (and reaped, status in wait_status()) once the program ended.
    bool exited() {
        if (m_pid <= 0) return true;
        int st = 0;
        const pid_t r = ::waitpid(m_pid, &st, WNOHANG);
        if (r == m_pid) {
            m_status = st;
            m_pid = -1;
            return true;
        }
        return false;
    }
    int wait_status() const noexcept { return m_status; }

    /// Polls the log (backing off) until `text` appears at or after byte
    /// `from` (true), or the program ended without printing it, or the
    /// guard passed (false).
    bool wait_for_output(std::string_view text, std::size_t from = 0,
                         std::chrono::steady_clock::duration guard = tls_peer_guard) {
        auto seen = [&] {
            const std::string out = output();
            return out.size() > from && out.find(text, from) != std::string::npos;
        };
        return poll_until(seen, [&] { return exited(); }, guard);
    }

    /// Sends `sig` if the program still runs.
    void kill(int sig = SIGKILL) {
        if (m_pid > 0) ::kill(m_pid, sig);
    }

    /// Ends the program: SIGTERM, up to 5 s to exit, then SIGKILL; reaps it.
    void stop() noexcept {
        if (m_pid <= 0) return;
        ::kill(m_pid, SIGTERM);
        const bool gone = poll_until([&] { return exited(); }, [] { return false; }, std::chrono::seconds(5));
        if (!gone && m_pid > 0) {
            ::kill(m_pid, SIGKILL);
            int st = 0;
            while (::waitpid(m_pid, &st, 0) < 0 && errno == EINTR) {
            }
            m_status = st;
            m_pid = -1;
        }
    }

    /// Kills with SIGKILL now and reaps: the kernel closes its sockets
    /// (a FIN to its peers, never a close_notify).
    void kill_now() noexcept {
        if (m_pid <= 0) return;
        ::kill(m_pid, SIGKILL);
        int st = 0;
        while (::waitpid(m_pid, &st, 0) < 0 && errno == EINTR) {
        }
        m_status = st;
        m_pid = -1;
    }

private:
    std::filesystem::path m_log;
    pid_t m_pid = -1;
    int m_stdin = -1;
    int m_status = 0;
};

/// A fresh directory for one peer's files, removed with them.
class peer_dir {
public:
    peer_dir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "hop-tls-peer-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) {
            throw std::system_error(errno, std::generic_category(), "peer_dir: mkdtemp(" + tmpl + ")");
        }
        m_path = tmpl;
    }
    ~peer_dir() {
        std::error_code ec;
        std::filesystem::remove_all(m_path, ec);
    }
    peer_dir(const peer_dir&) = delete;
    peer_dir& operator=(const peer_dir&) = delete;
    const std::filesystem::path& path() const noexcept { return m_path; }

private:
    std::filesystem::path m_path;
};

/// What `openssl s_server` does with a connection.
enum class s_server_mode {
    echo,  ///< the default: the client's data goes to its stdout (the log), stdin goes to the client
    www,   ///< -www: answers "GET /" with a status page, then close_notify
    rev,   ///< -rev: answers each line reversed
};

struct s_server_options {
    tls_cert_files cert;
    std::string version;  ///< "", "-tls1_2" or "-tls1_3"
    bool no_ticket = false;
    s_server_mode mode = s_server_mode::echo;
    std::vector<std::string> extra;  ///< more s_server options
};

/// `openssl s_server -accept 127.0.0.1:PORT ...` on a free port, until the
/// fixture goes. Connections are served one after another.
class openssl_server {
public:
    explicit openssl_server(s_server_options o) {
        for (int attempt = 0; attempt < 20; ++attempt) {
            m_port = free_loopback_port();
            const auto log = m_dir.path() / ("s_server." + std::to_string(attempt) + ".log");
            std::vector<std::string> argv{"openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(m_port),
                                          "-cert", o.cert.cert, "-key", o.cert.key};
            if (!o.version.empty()) argv.push_back(o.version);
            if (o.no_ticket) argv.push_back("-no_ticket");
            if (o.mode == s_server_mode::www) argv.push_back("-www");
            if (o.mode == s_server_mode::rev) argv.push_back("-rev");
            argv.insert(argv.end(), o.extra.begin(), o.extra.end());
            m_proc.emplace(argv, log);
            if (m_proc->wait_for_output("ACCEPT")) return;
            const std::string out = m_proc->output();
            m_proc.reset();
            if (out.find("in use") == std::string::npos) {
                FAIL("openssl s_server did not start listening on 127.0.0.1:" << m_port << "; its output:\n" << out);
            }
        }
        FAIL("openssl s_server: no free port after 20 tries");
    }
    openssl_server(const openssl_server&) = delete;
    openssl_server& operator=(const openssl_server&) = delete;

    std::uint16_t port() const noexcept { return m_port; }
    hop::endpoint endpoint() const { return hop::endpoint::loopback_v4(m_port); }
    console_peer& process() { return *m_proc; }
    /// Types `text` on s_server's console: data for the client, or a
    /// command line ("K\n" key update, "q\n" close_notify, "Q\n" quit).
    void send(std::string_view text) { m_proc->send(text); }
    std::string output() const { return m_proc->output(); }
    bool wait_for_output(std::string_view text, std::size_t from = 0) { return m_proc->wait_for_output(text, from); }

private:
    peer_dir m_dir;
    std::uint16_t m_port = 0;
    std::optional<console_peer> m_proc;
};

/// nginx with TLS on a free 127.0.0.1 port: one process (no master, no
/// daemon), all its files in a temp dir, serving root() plus
///   /hello   200 "hello over tls\n"
///   /sni     200 "sni=$ssl_server_name proto=$ssl_protocol\n"
class nginx_tls_origin {
public:
    static constexpr const char* binary = "/usr/sbin/nginx";

    explicit nginx_tls_origin(tls_cert_files cert) : m_cert(std::move(cert)) {
        REQUIRE_MESSAGE(::access(binary, X_OK) == 0,
                        binary << " is missing: install nginx-light (scripts/deps) to run the TLS tests");
        std::filesystem::create_directories(root());
        for (int attempt = 0; attempt < 20; ++attempt) {
            m_port = free_loopback_port();
            write_config();
            const auto error_log = dir() / "error.log";
            m_proc.emplace(std::vector<std::string>{binary, "-p", dir().string() + "/", "-c", (dir() / "nginx.conf").string(),
                                                    "-e", error_log.string()},
                           dir() / "stderr.log");
            const bool up = poll_until([&] { return accepting(m_port); }, [&] { return m_proc->exited(); });
            if (up) return;
            const std::string log = m_proc->output() + read_text(error_log);
            m_proc.reset();
            if (log.find("Address already in use") == std::string::npos) {
                FAIL("nginx did not start on 127.0.0.1:" << m_port << "; its log:\n" << log);
            }
        }
        FAIL("nginx: no free port after 20 tries");
    }
    nginx_tls_origin(const nginx_tls_origin&) = delete;
    nginx_tls_origin& operator=(const nginx_tls_origin&) = delete;

    std::uint16_t port() const noexcept { return m_port; }
    hop::endpoint endpoint() const { return hop::endpoint::loopback_v4(m_port); }
    const std::filesystem::path& dir() const noexcept { return m_dir.path(); }
    std::filesystem::path root() const { return dir() / "www"; }
    std::string error_log() const { return read_text(dir() / "error.log"); }

private:
    static std::string read_text(const std::filesystem::path& p) {
        std::ifstream f(p, std::ios::binary);
        std::ostringstream s;
        s << f.rdbuf();
        return s.str();
    }

    void write_config() const {
        const std::string d = dir().string();
        std::ostringstream c;
        c << "daemon off;\n"
          << "master_process off;\n"
          << "worker_processes 1;\n"
          << "pid " << d << "/nginx.pid;\n"
          << "error_log " << d << "/error.log warn;\n"
          << "events { worker_connections 256; }\n"
          << "http {\n"
          << "    default_type application/octet-stream;\n"
          << "    access_log " << d << "/access.log;\n"
          << "    client_body_temp_path " << d << "/client_body;\n"
          << "    proxy_temp_path " << d << "/proxy;\n"
          << "    fastcgi_temp_path " << d << "/fastcgi;\n"
          << "    uwsgi_temp_path " << d << "/uwsgi;\n"
          << "    scgi_temp_path " << d << "/scgi;\n"
          << "    server {\n"
          << "        listen 127.0.0.1:" << m_port << " ssl;\n"
          << "        server_name localhost;\n"
          << "        ssl_certificate " << m_cert.cert << ";\n"
          << "        ssl_certificate_key " << m_cert.key << ";\n"
          << "        ssl_protocols TLSv1.2 TLSv1.3;\n"
          << "        root " << d << "/www;\n"
          << "        location = /hello { return 200 \"hello over tls\\n\"; }\n"
          << "        location = /sni { return 200 \"sni=$ssl_server_name proto=$ssl_protocol\\n\"; }\n"
          << "    }\n"
          << "}\n";
        std::ofstream f(dir() / "nginx.conf", std::ios::trunc);
        f << c.str();
        REQUIRE_MESSAGE(static_cast<bool>(f), "cannot write " << (dir() / "nginx.conf").string());
    }

    peer_dir m_dir;
    tls_cert_files m_cert;
    std::uint16_t m_port = 0;
    std::optional<console_peer> m_proc;
};

/// argv for `openssl s_client` to 127.0.0.1:`port`, verifying against `ca`
/// (failing on a bad certificate), SNI and host check `server_name`,
/// `-quiet` (stdin to the server, the server's data to stdout; it waits for
/// the server to close after its stdin ends). `version`: "", "-tls1_2" or
/// "-tls1_3".
inline std::vector<std::string> s_client_args(std::uint16_t port, const std::string& ca,
                                              const std::string& server_name = "localhost",
                                              const std::string& version = "") {
    std::vector<std::string> a{"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(port), "-CAfile", ca,
                               "-verify_return_error", "-servername", server_name, "-verify_hostname", server_name,
                               "-quiet"};
    if (!version.empty()) a.push_back(version);
    return a;
}

/// argv for `curl` fetching https://localhost:`port``path` (resolved to
/// 127.0.0.1), trusting `ca`, body to stdout, failing on HTTP errors.
inline std::vector<std::string> curl_args(std::uint16_t port, const std::string& path, const std::string& ca) {
    const std::string p = std::to_string(port);
    return {"curl", "-sS", "--fail", "--max-time", "20", "--cacert", ca, "--resolve", "localhost:" + p + ":127.0.0.1",
            "https://localhost:" + p + path};
}

}  // namespace hop_test
