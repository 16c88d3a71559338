#pragma once
// nginx as a peer, for every test and benchmark that runs it: one writer of
// nginx.conf and one way to start it (on free 127.0.0.1 ports, retried on
// another port while one picked free was taken meanwhile; ready once every
// port accepts; its log in the message when it does not start).
//
// The config keeps every path (pid file, error log, temp dirs) inside the
// peer's directory and runs nginx in the foreground (`daemon off`), by
// default as one process (`master_process off`: the peer's pid is the one
// that serves). The caller gives the server blocks (each gets its own port)
// and what else the http block holds. Plain C++ (no doctest, no hop), as
// peer.hpp.

#include "peer.hpp"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace hop_test {

/// Debian's nginx (nginx-light).
inline constexpr const char* nginx_binary = "/usr/sbin/nginx";

/// One `server { }` block; nginx_config_text starts it with
/// `listen 127.0.0.1:PORT<listen>;` on the block's own port.
struct nginx_server_block {
    std::string listen;  ///< after the address: "", " ssl", " reuseport", " ssl backlog=4096"...
    std::string body;    ///< the rest of the block: directives and locations, each ending in ';' or '}'
};

/// What differs between the nginx peers; the rest is nginx_config_text's.
struct nginx_config {
    int workers = 1;               ///< worker_processes
    bool master = false;           ///< master_process (on: the peer's pid is the master)
    int worker_connections = 256;  ///< events { worker_connections }
    std::string error_log_level = "warn";
    std::string http;  ///< directives inside http { } before the servers (access_log, keepalive_*, ...)
    std::vector<nginx_server_block> servers;
};

/// nginx.conf for `c` with every path inside `dir`, server i on `ports[i]`.
inline std::string nginx_config_text(const nginx_config& c, const std::filesystem::path& dir,
                                     const std::vector<std::uint16_t>& ports) {
    if (ports.size() != c.servers.size()) {
        throw std::invalid_argument("nginx_config_text: " + std::to_string(c.servers.size()) + " server blocks, " +
                                    std::to_string(ports.size()) + " ports");
    }
    const std::string d = dir.string();
    std::ostringstream t;
    t << "daemon off;\n";
    if (!c.master) t << "master_process off;\n";
    t << "worker_processes " << c.workers << ";\n"
      << "pid " << d << "/nginx.pid;\n"
      << "error_log " << d << "/error.log " << c.error_log_level << ";\n"
      << "events { worker_connections " << c.worker_connections << "; }\n"
      << "http {\n"
      << "    client_body_temp_path " << d << "/client_body;\n"
      << "    proxy_temp_path " << d << "/proxy;\n"
      << "    fastcgi_temp_path " << d << "/fastcgi;\n"
      << "    uwsgi_temp_path " << d << "/uwsgi;\n"
      << "    scgi_temp_path " << d << "/scgi;\n"
      << c.http;
    for (std::size_t i = 0; i < ports.size(); ++i) {
        t << "    server {\n"
          << "        listen 127.0.0.1:" << ports[i] << c.servers[i].listen << ";\n"
          << c.servers[i].body << "\n"
          << "    }\n";
    }
    t << "}\n";
    return t.str();
}

/// nginx running `config` from `dir` (made if missing; nginx.conf, the pid
/// file, the logs and temp dirs go there), each server block on a free
/// 127.0.0.1 port. The constructor returns once every port accepts; the
/// destructor stops nginx (SIGTERM, then SIGKILL) and reaps it.
class nginx_process {
public:
    /// @throws std::runtime_error if nginx is missing, or does not start
    ///         (with its log).
    nginx_process(nginx_config config, std::filesystem::path dir) : m_config(std::move(config)), m_dir(std::move(dir)) {
        if (::access(nginx_binary, X_OK) != 0) {
            throw std::runtime_error(std::string(nginx_binary) + " is missing: install nginx-light (scripts/deps)");
        }
        std::filesystem::create_directories(m_dir);
        const auto guard = scaled(std::chrono::seconds(20));
        auto start = [&](int) {
            m_ports.clear();
            while (m_ports.size() < m_config.servers.size()) {
                const std::uint16_t p = free_port();
                if (std::find(m_ports.begin(), m_ports.end(), p) == m_ports.end()) m_ports.push_back(p);
            }
            const auto conf = m_dir / "nginx.conf";
            std::ofstream(conf, std::ios::trunc) << nginx_config_text(m_config, m_dir, m_ports);
            m_proc.reset();
            // The error log is truncated for each try, so a message names this try's cause.
            std::ofstream(m_dir / "error.log", std::ios::trunc);
            m_proc.emplace(peer_options::logged({nginx_binary, "-p", m_dir.string() + "/", "-c", conf.string(), "-e",
                                                 (m_dir / "error.log").string()},
                                                m_dir / "nginx.out"));
            for (const std::uint16_t p : m_ports) {
                if (!m_proc->wait_for_port(p, guard)) return false;
            }
            return true;
        };
        start_on_free_port("nginx", start, [&] { return log(); });
    }
    nginx_process(const nginx_process&) = delete;
    nginx_process& operator=(const nginx_process&) = delete;

    /// Server block i's port.
    std::uint16_t port(std::size_t i = 0) const { return m_ports.at(i); }
    /// nginx's pid (the master's if config.master).
    pid_t pid() const noexcept { return m_proc ? m_proc->pid() : -1; }
    const std::filesystem::path& dir() const noexcept { return m_dir; }
    /// nginx's error log.
    std::string error_log() const {
        std::ifstream f(m_dir / "error.log", std::ios::binary);
        std::ostringstream s;
        s << f.rdbuf();
        return s.str();
    }
    /// The error log and what nginx printed.
    std::string log() const { return error_log() + (m_proc ? m_proc->output() : std::string()); }
    /// Stops nginx now (the destructor would).
    void stop() noexcept {
        if (m_proc) m_proc->stop();
    }

private:
    nginx_config m_config;
    std::filesystem::path m_dir;
    std::vector<std::uint16_t> m_ports;
    std::optional<peer> m_proc;
};

}  // namespace hop_test
