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
// Both are started through peer.hpp (nginx's config from nginx.hpp): the
// polls back off from 1 ms to 20 ms and give up after a generous guard
// with the peer's log. A missing binary fails the test (never skips).

#include "http_peers.hpp"
#include "nginx.hpp"
#include "os.hpp"
#include "peer.hpp"
#include "tls_certs.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hop_test {

/// How long a peer may take to become ready, or to print what a test waits
/// for, before the test fails: a failure guard, not a synchronisation.
inline constexpr auto tls_peer_guard = scaled(std::chrono::seconds(20));

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
        auto start = [&](int attempt) {
            m_port = free_loopback_port();
            std::vector<std::string> argv{"openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(m_port),
                                          "-cert", o.cert.cert, "-key", o.cert.key};
            if (!o.version.empty()) argv.push_back(o.version);
            if (o.no_ticket) argv.push_back("-no_ticket");
            if (o.mode == s_server_mode::www) argv.push_back("-www");
            if (o.mode == s_server_mode::rev) argv.push_back("-rev");
            argv.insert(argv.end(), o.extra.begin(), o.extra.end());
            m_proc.reset();
            // Its stdin stays open: the test types s_server's commands.
            peer_options po = peer_options::logged(std::move(argv),
                                                   m_dir.path() / ("s_server." + std::to_string(attempt) + ".log"));
            po.console = true;
            m_proc.emplace(std::move(po));
            return m_proc->wait_for_output("ACCEPT", 0, tls_peer_guard);
        };
        start_on_free_port("openssl s_server on 127.0.0.1", start, [&] { return m_proc->output(); });
    }
    openssl_server(const openssl_server&) = delete;
    openssl_server& operator=(const openssl_server&) = delete;

    std::uint16_t port() const noexcept { return m_port; }
    hop::endpoint endpoint() const { return hop::endpoint::loopback_v4(m_port); }
    peer& process() { return *m_proc; }
    /// Types `text` on s_server's console: data for the client, or a
    /// command line ("K\n" key update, "q\n" close_notify, "Q\n" quit).
    void send(std::string_view text) { m_proc->send(text); }
    std::string output() const { return m_proc->output(); }
    bool wait_for_output(std::string_view text, std::size_t from = 0) {
        return m_proc->wait_for_output(text, from, tls_peer_guard);
    }

private:
    temp_dir m_dir{"hop-tls-peer-"};
    std::uint16_t m_port = 0;
    std::optional<peer> m_proc;
};

/// nginx with TLS on a free 127.0.0.1 port: one process (no master, no
/// daemon), all its files in a temp dir, serving root() plus
///   /hello   200 "hello over tls\n"
///   /sni     200 "sni=$ssl_server_name proto=$ssl_protocol\n"
class nginx_tls_origin {
public:
    explicit nginx_tls_origin(tls_cert_files cert) : m_cert(std::move(cert)) {
        std::filesystem::create_directories(root());
        const std::string d = dir().string();
        nginx_config c;
        c.http = "    default_type application/octet-stream;\n"
                 "    access_log " + d + "/access.log;\n";
        c.servers.push_back(nginx_server_block{
            " ssl",
            "        server_name localhost;\n"
            "        ssl_certificate " + m_cert.cert + ";\n"
            "        ssl_certificate_key " + m_cert.key + ";\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
            "        root " + d + "/www;\n"
            "        location = /hello { return 200 \"hello over tls\\n\"; }\n"
            "        location = /sni { return 200 \"sni=$ssl_server_name proto=$ssl_protocol\\n\"; }"});
        m_nginx.emplace(std::move(c), dir());
    }
    nginx_tls_origin(const nginx_tls_origin&) = delete;
    nginx_tls_origin& operator=(const nginx_tls_origin&) = delete;

    std::uint16_t port() const { return m_nginx->port(); }
    hop::endpoint endpoint() const { return hop::endpoint::loopback_v4(port()); }
    const std::filesystem::path& dir() const noexcept { return m_dir.path(); }
    std::filesystem::path root() const { return dir() / "www"; }
    std::string error_log() const { return m_nginx->error_log(); }

private:
    temp_dir m_dir{"hop-tls-peer-"};
    tls_cert_files m_cert;
    std::optional<nginx_process> m_nginx;
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
