// hop::http::client through proxies: tinyproxy and squid started by the
// test on free loopback ports, hop servers (plain and TLS) as origins, and
// raw proxies of the test's own for what real ones do not do on demand
// (closing in the middle of a CONNECT). The proxy URL and NO_PROXY parsing
// are tested directly (lib/http/proxy.hpp).

#include <hop/http/client.hpp>

#include <hop/http.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>
#include <hop/tls.hpp>

#include "lib/http/proxy.hpp"
#include "support/backend.hpp"
#include "support/http_origin.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/peer.hpp"
#include "support/tls_certs.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::run_on;
namespace http = hop::http;

namespace {

// ---- the proxies ------------------------------------------------------------------

enum class proxy_kind { tinyproxy, squid };

const char* name_of(proxy_kind k) { return k == proxy_kind::tinyproxy ? "tinyproxy" : "squid"; }

// tinyproxy or squid on a free 127.0.0.1 port, in the foreground, with its
// config and logs in a directory of its own; stopped by its pid when the
// fixture goes. `basic_auth` ("user password", tinyproxy only) makes it ask
// for credentials.
class proxy_peer {
public:
    explicit proxy_peer(proxy_kind k, std::string basic_auth = {}) : m_kind(k) {
        // squid drops root for its own user ("proxy"), which must write here.
        ::chmod(m_dir.path().c_str(), 0777);
        const auto guard = hop_test::scaled(std::chrono::seconds(60));
        auto start = [&](int) {
            m_port = hop_test::free_port();
            m_proc.reset();
            const auto d = m_dir.path();
            if (k == proxy_kind::tinyproxy) {
                std::string conf = "Port " + std::to_string(m_port) +
                                   "\nListen 127.0.0.1\nAllow 127.0.0.1\nMaxClients 64\nLogLevel Connect\n";
                if (!basic_auth.empty()) conf += "BasicAuth " + basic_auth + "\n";
                hop_test::write_file(d / "tinyproxy.conf", conf);
                auto o = hop_test::peer_options::logged({"tinyproxy", "-d", "-c", (d / "tinyproxy.conf").string()},
                                                        d / "proxy.log");
                o.truncate_log = true;
                m_proc.emplace(std::move(o));
            } else {
                const std::string s = d.string();
                const std::string conf = "http_port 127.0.0.1:" + std::to_string(m_port) +
                                         "\nhttp_access allow localhost\nhttp_access deny all\n"
                                         "pid_filename " + s + "/squid.pid\n"
                                         "cache_log " + s + "/cache.log\n"
                                         "access_log stdio:" + s + "/access.log\n"
                                         "cache deny all\ncache_mem 8 MB\npinger_enable off\n"
                                         "coredump_dir " + s + "\nshutdown_lifetime 0 seconds\n";
                hop_test::write_file(d / "squid.conf", conf);
                std::ofstream(d / "cache.log", std::ios::trunc);
                auto o = hop_test::peer_options::logged({"squid", "-N", "-f", (d / "squid.conf").string()},
                                                        d / "proxy.log");
                o.truncate_log = true;
                m_proc.emplace(std::move(o));
            }
            return m_proc->wait_for_port(m_port, guard);
        };
        hop_test::start_on_free_port(name_of(k), start, [&] { return log(); });
    }

    std::uint16_t port() const { return m_port; }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(m_port); }
    const char* name() const { return name_of(m_kind); }
    /// Everything the proxy logged: its output, and squid's logs.
    std::string log() const {
        std::string out = m_proc ? m_proc->output() : std::string();
        if (m_kind == proxy_kind::squid) {
            out += hop_test::read_file(m_dir.path() / "cache.log");
            out += hop_test::read_file(m_dir.path() / "access.log");
        }
        return out;
    }
    /// Whether the proxy logs a CONNECT to 127.0.0.1:`port` (tinyproxy
    /// logs it when the request comes; squid once the tunnel has closed).
    bool logged_connect(std::uint16_t port) const { return logged_connect("127.0.0.1:" + std::to_string(port)); }
    bool logged_connect(const std::string& authority) const {
        const std::string needle = "CONNECT " + authority;
        return hop_test::poll_until([&] { return log().find(needle) != std::string::npos; }, [] { return false; },
                                    hop_test::scaled(std::chrono::seconds(20)));
    }

private:
    proxy_kind m_kind;
    hop_test::temp_dir m_dir{"hop-proxy-"};
    std::uint16_t m_port = 0;
    std::optional<hop_test::peer> m_proc;
};

// ---- the origins --------------------------------------------------------------------

// What the origin saw: the target, the Via a proxy adds, a Proxy-Authorization
// that should never reach it, and which server answered.
hop::task<http::response> describe(http::request& req, std::string_view server) {
    http::response r;
    r.headers.add("Content-Type", "text/plain");
    r.body = "server=" + std::string(server) + "\ntarget=" + req.url +
             "\nvia=" + std::string(req.headers.get("Via").value_or("")) +
             "\nproxy-authorization=" + std::string(req.headers.get("Proxy-Authorization").value_or("")) +
             "\nauthorization=" + std::string(req.headers.get("Authorization").value_or("")) + "\n";
    co_return r;
}
hop::task<http::response> origin_a(http::request& req) { return describe(req, "a"); }
hop::task<http::response> origin_b(http::request& req) { return describe(req, "b"); }

bool has(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

hop::tls::context trusting_client() {
    auto c = hop::tls::context::client();
    c.load_ca_file(hop_test::test_certs().ca);
    return c;
}

http::server_options tls_options(const hop_test::tls_cert_files& cert) {
    auto o = hop_test::test_options();
    o.tls = hop::tls::context::server(cert.cert, cert.key);
    return o;
}

std::string plain_url(const http::server& srv, std::string_view path) {
    return "http://127.0.0.1:" + std::to_string(srv.local_endpoint().port()) + std::string(path);
}
std::string tls_url(const http::server& srv, std::string_view path) {
    return "https://127.0.0.1:" + std::to_string(srv.local_endpoint().port()) + std::string(path);
}

// What a request threw: its message and, for a proxy_error, the status.
struct failure {
    std::string what;
    std::string type;
    int status = -1;
    std::error_code code{};
};

hop::task<failure> failure_of(http::client& c, std::string u) {
    failure f;
    try {
        http::response r = co_await c.get(std::move(u));
        f.what = "no exception: status " + std::to_string(r.status);
    } catch (const http::proxy_error& e) {
        f = {e.what(), "proxy_error", e.status(), {}};
    } catch (const hop::tls::error& e) {
        f = {e.what(), "tls::error", -1, {}};
    } catch (const std::system_error& e) {
        f = {e.what(), "system_error", -1, e.code()};
    } catch (const std::exception& e) {
        f = {e.what(), "other", -1, {}};
    }
    co_return f;
}

// The proxy variables of the environment, cleared for a test and put back
// after it (the client reads them when it is made, on this thread).
class proxy_env {
public:
    proxy_env() {
        for (const char* n : names) {
            const char* v = std::getenv(n);
            m_saved.emplace_back(v ? std::optional<std::string>(v) : std::nullopt);
            ::unsetenv(n);
        }
    }
    ~proxy_env() {
        for (std::size_t i = 0; i < std::size(names); ++i) {
            if (m_saved[i]) {
                ::setenv(names[i], m_saved[i]->c_str(), 1);
            } else {
                ::unsetenv(names[i]);
            }
        }
    }
    void set(const char* name, const std::string& value) { ::setenv(name, value.c_str(), 1); }
    void unset(const char* name) { ::unsetenv(name); }

    static constexpr const char* names[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                                            "ALL_PROXY",  "no_proxy",   "NO_PROXY",    "REQUEST_METHOD"};

private:
    std::vector<std::optional<std::string>> m_saved;
};

// A proxy of the test's own on the running loop: takes one connection,
// reads the request head, then writes `answer` (maybe nothing) and closes.
hop::task<void> scripted_proxy(hop::tcp_listener& l, std::string answer) {
    hop::tcp_stream s = co_await l.accept();
    std::string got;
    char buf[4096];
    while (got.find("\r\n\r\n") == std::string::npos) {
        const std::size_t n = co_await s.read_some(buf);
        if (n == 0) co_return;
        got.append(buf, n);
    }
    CHECK(got.rfind("CONNECT ", 0) == 0);
    if (!answer.empty()) co_await s.write_all(answer);
    s.close();
}

}  // namespace

TEST_SUITE("http_client_proxy") {

// ---- parsing, without IO -----------------------------------------------------------------

TEST_CASE("proxy URLs: credentials percent-decoded, defaults, and bad values named without the password") {
    using hop::http::detail::parse_proxy_url;
    const auto p = parse_proxy_url("http://al%69ce:p%40ss%3Aw0rd@Proxy.Example:3128/", "client_options::proxy");
    CHECK(p.host == "proxy.example");
    CHECK(p.port == 3128);
    // base64("alice:p@ss:w0rd")
    CHECK(p.authorization == "Basic YWxpY2U6cEBzczp3MHJk");
    CHECK(p.shown == "http://al%69ce@proxy.example:3128");
    CHECK(parse_proxy_url("127.0.0.1:8080", "x").port == 8080);
    CHECK(parse_proxy_url("http://[::1]:3128", "x").host == "::1");
    CHECK(parse_proxy_url("http://[::1]:3128", "x").shown == "http://[::1]:3128");
    CHECK(parse_proxy_url("http://proxy", "x").port == 80);
    CHECK(parse_proxy_url("http://u:@proxy:1", "x").authorization == "Basic dTo=");

    const auto message = [](std::string_view text) {
        try {
            parse_proxy_url(text, "the environment variable HTTPS_PROXY");
        } catch (const std::invalid_argument& e) {
            return std::string(e.what());
        }
        return std::string("no exception");
    };
    for (std::string_view bad : {"socks5://127.0.0.1:1080", "https://proxy:443", "http://proxy:0", "http://proxy:99999",
                                 "http://proxy:3128/path", "http://", "", "http://a b:1", "http://u:%zz@proxy:1",
                                 "http://:pw@proxy:1"}) {
        const std::string m = message(bad);
        INFO(bad << " -> " << m);
        CHECK(has(m, "the environment variable HTTPS_PROXY"));
        CHECK(has(m, "is not a proxy URL"));
    }
    CHECK(has(message("socks5://127.0.0.1:1080"), "'socks5://127.0.0.1:1080'"));
    // The password is never shown.
    const std::string m = message("http://user:hunter2@proxy:3128/x");
    CHECK(!has(m, "hunter2"));
    CHECK(has(m, "user:***@proxy:3128/x"));
}

TEST_CASE("NO_PROXY: names and suffixes with or without a dot, *, addresses, CIDR, IPv6 and ports") {
    using hop::http::detail::no_proxy_list;
    const auto l = no_proxy_list::parse(" Example.org, .internal  *.corp.test,10.1.0.0/16,192.168.1.5,[::1],"
                                        "fd00::/8,api.test:8443,127.0.0.2:80", "NO_PROXY");
    CHECK(l.matches("example.org", 80));
    CHECK(l.matches("www.example.org", 443));
    CHECK(l.matches("a.b.example.org", 80));
    CHECK_FALSE(l.matches("notexample.org", 80));
    CHECK_FALSE(l.matches("example.org.evil", 80));
    CHECK(l.matches("internal", 80));
    CHECK(l.matches("db.internal", 80));
    CHECK(l.matches("x.corp.test", 80));
    CHECK(l.matches("corp.test", 80));
    CHECK(l.matches("10.1.200.3", 80));
    CHECK_FALSE(l.matches("10.2.0.1", 80));
    CHECK(l.matches("192.168.1.5", 1));
    CHECK_FALSE(l.matches("192.168.1.50", 1));
    CHECK(l.matches("::1", 8080));
    CHECK(l.matches("fd12::5", 80));
    CHECK_FALSE(l.matches("fe80::1", 80));
    CHECK(l.matches("api.test", 8443));
    CHECK_FALSE(l.matches("api.test", 443));
    CHECK(l.matches("127.0.0.2", 80));
    CHECK_FALSE(l.matches("127.0.0.2", 81));
    CHECK_FALSE(l.matches("127.0.0.1", 80));  // loopback is not special
    CHECK_FALSE(l.matches("localhost", 80));

    CHECK(no_proxy_list::parse("*", "x").matches("anything.example", 1));
    CHECK_FALSE(no_proxy_list::parse("", "x").matches("anything.example", 1));
    CHECK_FALSE(no_proxy_list::parse(" , ,", "x").matches("anything.example", 1));

    for (std::string_view bad : {"host:0", "host:http", "10.0.0.0/33", "name/8", "[::1", "[::1]x", "."}) {
        try {
            no_proxy_list::parse(bad, "client_options::no_proxy");
            FAIL("no exception for " << bad);
        } catch (const std::invalid_argument& e) {
            INFO(e.what());
            CHECK(has(e.what(), "client_options::no_proxy"));
            CHECK(has(e.what(), std::string(bad)));
        }
    }
}

TEST_CASE("the environment: lower case first, ALL_PROXY, NO_PROXY, and HTTP_PROXY ignored under CGI") {
    using hop::http::detail::proxy_table;
    hop::http::url h = hop::http::url::parse("http://example.org/");
    hop::http::url s = hop::http::url::parse("https://example.org/");
    std::vector<std::pair<std::string, std::string>> env;
    const auto getenv = [&](const char* n) -> const char* {
        for (const auto& [k, v] : env) {
            if (k == n) return v.c_str();
        }
        return nullptr;
    };
    const auto make = [&] { return proxy_table::make("", "", true, getenv); };
    CHECK(make().route(h) == nullptr);
    env = {{"HTTP_PROXY", "http://upper:1"}, {"http_proxy", "http://lower:2"}};
    CHECK(make().route(h)->host == "lower");
    CHECK(make().route(s) == nullptr);
    env = {{"HTTP_PROXY", "http://upper:1"}};
    CHECK(make().route(h)->host == "upper");
    env.push_back({"REQUEST_METHOD", "GET"});
    CHECK(make().route(h) == nullptr);
    env = {{"ALL_PROXY", "http://all:3"}, {"HTTPS_PROXY", "http://secure:4"}};
    CHECK(make().route(h)->host == "all");
    CHECK(make().route(s)->host == "secure");
    env.push_back({"NO_PROXY", ".example.org"});
    CHECK(make().route(h) == nullptr);
    CHECK(make().route(s) == nullptr);
    CHECK(make().route(hop::http::url::parse("http://other.test/"))->host == "all");
    // Without trust_env, the environment is not read.
    CHECK(proxy_table::make("", "", false, getenv).route(h) == nullptr);
    // An explicit proxy wins; its no_proxy applies.
    CHECK(proxy_table::make("http://mine:5", "", true, getenv).route(h)->host == "mine");
    CHECK(proxy_table::make("http://mine:5", "example.org", true, getenv).route(h) == nullptr);
    env = {{"https_proxy", "socks5h://x:1"}};
    try {
        make();
        FAIL("no exception");
    } catch (const std::invalid_argument& e) {
        CHECK(has(e.what(), "the environment variable https_proxy"));
        CHECK(has(e.what(), "socks5h://x:1"));
    }
}

TEST_CASE("a bad proxy option is refused when the client is made, naming the value") {
    try {
        http::client c({.proxy = "ftp://proxy:21"});
        FAIL("no exception");
    } catch (const std::invalid_argument& e) {
        CHECK(has(e.what(), "client_options::proxy"));
        CHECK(has(e.what(), "ftp://proxy:21"));
    }
    try {
        http::client c({.proxy = "http://proxy:3128", .no_proxy = "10.0.0.0/99"});
        FAIL("no exception");
    } catch (const std::invalid_argument& e) {
        CHECK(has(e.what(), "client_options::no_proxy"));
        CHECK(has(e.what(), "10.0.0.0/99"));
    }
}

// ---- through real proxies ---------------------------------------------------------------------

TEST_CASE("http:// and https:// through tinyproxy and squid") {
    for (proxy_kind k : {proxy_kind::tinyproxy, proxy_kind::squid}) {
        proxy_peer proxy(k);
        INFO("proxy: " << proxy.name());
        for_each_backend([&](hop::backend b) {
            hop::io_loop loop{options_for(b)};
            const auto& certs = hop_test::test_certs();
            std::uint16_t tls_port = 0;
            run_on(loop, hop_test::with_server(origin_a, tls_options(certs.localhost),
                                               [&](http::server& secure) -> hop::task<void> {
                co_await hop_test::with_server(origin_b, hop_test::test_options(),
                                               [&](http::server& plain) -> hop::task<void> {
                    tls_port = secure.local_endpoint().port();
                    http::client c({.tls = trusting_client(), .proxy = proxy.url()});
                    // http://: in absolute form to the proxy, which adds Via.
                    http::response r = co_await c.get(plain_url(plain, "/a?x=1"));
                    CHECK(r.status == 200);
                    INFO(r.body);
                    CHECK(has(r.body, "server=b\n"));
                    CHECK(has(r.body, "target=/a?x=1\n"));
                    CHECK(has(r.body, proxy.name()));  // in Via
                    CHECK(has(r.body, "proxy-authorization=\n"));
                    // A POST with a body through it.
                    http::response p = co_await c.post(plain_url(plain, "/form"), "k=v");
                    CHECK(p.status == 200);
                    CHECK(has(p.body, "target=/form\n"));
                    // https://: a CONNECT tunnel, TLS to the origin inside it
                    // (the proxy adds nothing to what it cannot read).
                    for (int i = 0; i < 3; ++i) {
                        http::response s = co_await c.get(tls_url(secure, "/s/" + std::to_string(i)));
                        CHECK(s.status == 200);
                        CHECK(has(s.body, "server=a\n"));
                        CHECK(has(s.body, "target=/s/" + std::to_string(i) + "\n"));
                        CHECK(has(s.body, "via=\n"));
                    }
                    const auto st = c.stats();
                    // The tunnel is one connection, kept alive.
                    CHECK(st.reuses >= 2);
                });
            }));
            CHECK_MESSAGE(proxy.logged_connect(tls_port), proxy.log());
        });
    }
}

TEST_CASE("https through a proxy checks the origin's certificate and name, not the proxy's") {
    proxy_peer proxy(proxy_kind::tinyproxy);
    const auto& certs = hop_test::test_certs();
    // A certificate for the name "localhost" only (no address): it passes
    // for https://localhost:P through the proxy at 127.0.0.1 only if the
    // name checked is the origin's.
    hop_test::detail_tls::make_leaf(certs.dir, "proxy_name_only", "localhost", "DNS:localhost", "ca", 4242);
    const auto name_only = hop_test::detail_tls::files_of(certs.dir, "proxy_name_only");
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        std::uint16_t name_port = 0;
        run_on(loop, hop_test::with_server(origin_a, tls_options(name_only), [&](http::server& secure) -> hop::task<void> {
            name_port = secure.local_endpoint().port();
            http::client c({.tls = trusting_client(), .proxy = proxy.url()});
            const std::string by_name = "https://localhost:" + std::to_string(secure.local_endpoint().port()) + "/n";
            http::response r = co_await c.get(by_name);
            CHECK(r.status == 200);
            CHECK(has(r.body, "server=a\ntarget=/n\nvia=\n"));
            // The same origin by address: the certificate does not name it.
            const failure f = co_await failure_of(c, tls_url(secure, "/a"));
            INFO(f.what);
            CHECK(f.type == "tls::error");
            CHECK(has(f.what, "through the proxy " + proxy.url()));
        }));
        // The tunnel was asked for by name: the proxy resolved it.
        CHECK_MESSAGE(proxy.logged_connect("localhost:" + std::to_string(name_port)), proxy.log());
        run_on(loop, hop_test::with_server(origin_a, tls_options(certs.wrong_host),
                                           [&](http::server& secure) -> hop::task<void> {
            http::client c({.tls = trusting_client(), .proxy = proxy.url()});
            const failure f = co_await failure_of(c, tls_url(secure, "/"));
            INFO(f.what);
            CHECK(f.type == "tls::error");
            CHECK(has(f.what, "through the proxy " + proxy.url()));
        }));
    });
}

TEST_CASE("proxy credentials: accepted, and a 407 is a proxy_error naming the proxy") {
    proxy_peer proxy(proxy_kind::tinyproxy, "alice s3cret");
    const std::string good = "http://alice:s3cr%65t@127.0.0.1:" + std::to_string(proxy.port());
    const std::string bad = "http://alice:wrong@127.0.0.1:" + std::to_string(proxy.port());
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(origin_a, tls_options(certs.localhost),
                                           [&](http::server& secure) -> hop::task<void> {
            co_await hop_test::with_server(origin_b, hop_test::test_options(),
                                           [&](http::server& plain) -> hop::task<void> {
                {
                    http::client c({.tls = trusting_client(), .proxy = good});
                    http::response r = co_await c.get(plain_url(plain, "/p"));
                    CHECK(r.status == 200);
                    INFO(r.body);
                    CHECK(has(r.body, "tinyproxy"));
                    // The proxy's credentials are for the proxy only.
                    CHECK(has(r.body, "proxy-authorization=\n"));
                    http::response s = co_await c.get(tls_url(secure, "/s"));
                    CHECK(s.status == 200);
                    CHECK(has(s.body, "server=a\n"));
                }
                // A Proxy-Authorization of the caller's goes with the CONNECT,
                // not into the tunnel.
                {
                    http::client c({.tls = trusting_client(), .proxy = proxy.url()});
                    http::headers own;
                    own.add("Proxy-Authorization", "Basic YWxpY2U6czNjcmV0");  // alice:s3cret
                    http::response s = co_await c.get(tls_url(secure, "/own"), std::move(own));
                    CHECK(s.status == 200);
                    CHECK(has(s.body, "target=/own\nvia=\nproxy-authorization=\n"));
                }
                // No credentials: a 407, for http:// and for CONNECT.
                {
                    http::client c({.tls = trusting_client(), .proxy = proxy.url()});
                    const failure h = co_await failure_of(c, plain_url(plain, "/p"));
                    INFO(h.what);
                    CHECK(h.type == "proxy_error");
                    CHECK(h.status == 407);
                    CHECK(has(h.what, "the proxy " + proxy.url() + " refused GET " + plain_url(plain, "/p") +
                                          ": 407 Proxy Authentication Required (it wants credentials"));
                    const failure s = co_await failure_of(c, tls_url(secure, "/s"));
                    INFO(s.what);
                    CHECK(s.type == "proxy_error");
                    CHECK(s.status == 407);
                    CHECK(has(s.what, "the proxy " + proxy.url() + " refused CONNECT 127.0.0.1:" +
                                          std::to_string(secure.local_endpoint().port()) + ": 407"));
                    CHECK(c.stats().open == 0);
                }
                // Wrong credentials: tinyproxy answers 401 (not 407). For a
                // CONNECT that is a refusal like any other; for http:// a
                // proxy's 401 cannot be told from the origin's, so it is the
                // response (the proxy's, not the origin's).
                {
                    http::client c({.tls = trusting_client(), .proxy = bad});
                    const failure s = co_await failure_of(c, tls_url(secure, "/s"));
                    INFO(s.what);
                    CHECK(s.type == "proxy_error");
                    CHECK(s.status == 401);
                    CHECK(has(s.what, "the proxy http://alice@127.0.0.1:" + std::to_string(proxy.port()) +
                                          " refused CONNECT"));
                    CHECK(!has(s.what, "wrong"));
                    http::response r = co_await c.get(plain_url(plain, "/p"));
                    CHECK(r.status == 401);
                    CHECK(!has(r.body, "server=b"));
                    CHECK(has(std::string(r.headers.get("Server").value_or("")), "tinyproxy"));
                }
            });
        }));
    });
}

TEST_CASE("a CONNECT the proxy refuses (nothing listens there) is a proxy_error with its status") {
    for (proxy_kind k : {proxy_kind::tinyproxy, proxy_kind::squid}) {
        proxy_peer proxy(k);
        INFO("proxy: " << proxy.name());
        const std::uint16_t closed = hop_test::free_port();
        for_each_backend([&](hop::backend b) {
            hop::io_loop loop{options_for(b)};
            run_on(loop, [&]() -> hop::task<void> {
                http::client c({.tls = trusting_client(), .proxy = proxy.url()});
                const failure f = co_await failure_of(c, "https://127.0.0.1:" + std::to_string(closed) + "/");
                INFO(f.what);
                CHECK(f.type == "proxy_error");
                CHECK(f.status >= 400);
                CHECK(has(f.what, "the proxy " + proxy.url() + " refused CONNECT 127.0.0.1:" + std::to_string(closed)));
                CHECK(has(f.what, std::to_string(f.status)));
                CHECK(c.stats().open == 0);
            }());
        });
    }
}

TEST_CASE("no_proxy and NO_PROXY send listed origins direct; one pool never mixes routes") {
    proxy_peer proxy(proxy_kind::squid);
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(origin_a, tls_options(certs.localhost),
                                           [&](http::server& secure_a) -> hop::task<void> {
            co_await hop_test::with_server(origin_b, tls_options(certs.localhost),
                                           [&](http::server& secure_b) -> hop::task<void> {
                co_await hop_test::with_server(origin_a, hop_test::test_options(),
                                               [&](http::server& plain_a) -> hop::task<void> {
                    co_await hop_test::with_server(origin_b, hop_test::test_options(),
                                                   [&](http::server& plain_b) -> hop::task<void> {
                        // plain_b is listed (with its port): direct; the rest
                        // through squid. Each route twice: every connection
                        // is reused by its own route only.
                        const std::string listed = "example.org, 127.0.0.1:" +
                                                   std::to_string(plain_b.local_endpoint().port());
                        http::client c({.tls = trusting_client(), .proxy = proxy.url(), .no_proxy = listed});
                        for (int round = 0; round < 2; ++round) {
                            http::response pa = co_await c.get(plain_url(plain_a, "/pa"));
                            http::response pb = co_await c.get(plain_url(plain_b, "/pb"));
                            http::response sa = co_await c.get(tls_url(secure_a, "/sa"));
                            http::response sb = co_await c.get(tls_url(secure_b, "/sb"));
                            INFO(pa.body << pb.body << sa.body << sb.body);
                            CHECK(has(pa.body, "server=a\ntarget=/pa\n"));
                            CHECK(has(pa.body, "squid"));
                            CHECK(has(pb.body, "server=b\ntarget=/pb\nvia=\n"));
                            CHECK(has(sa.body, "server=a\ntarget=/sa\nvia=\n"));
                            CHECK(has(sb.body, "server=b\ntarget=/sb\nvia=\n"));
                        }
                        const auto st = c.stats();
                        // squid's connection for http://, one direct, two
                        // tunnels: each made once, each reused once.
                        CHECK(st.connects == 4);
                        CHECK(st.reuses == 4);
                    });
                });
            });
        }));
    });
}

TEST_CASE("trust_env: http_proxy, https_proxy and NO_PROXY from the environment") {
    proxy_peer proxy(proxy_kind::tinyproxy);
    proxy_env env;
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(origin_a, tls_options(certs.localhost),
                                           [&](http::server& secure) -> hop::task<void> {
            co_await hop_test::with_server(origin_b, hop_test::test_options(),
                                           [&](http::server& plain) -> hop::task<void> {
                const std::string port = std::to_string(plain.local_endpoint().port());
                env.set("http_proxy", proxy.url());
                env.set("HTTPS_PROXY", proxy.url());
                {
                    http::client ignoring({.tls = trusting_client()});  // trust_env is opt-in
                    http::response r = co_await ignoring.get(plain_url(plain, "/d"));
                    CHECK(has(r.body, "via=\n"));
                }
                {
                    http::client c({.tls = trusting_client(), .trust_env = true});
                    http::response r = co_await c.get(plain_url(plain, "/e"));
                    CHECK(has(r.body, "tinyproxy"));
                    http::response s = co_await c.get(tls_url(secure, "/e"));
                    CHECK(has(s.body, "server=a\n"));
                }
                CHECK_MESSAGE(proxy.logged_connect(secure.local_endpoint().port()), proxy.log());
                for (const std::string& np : std::vector<std::string>{"127.0.0.1", "example.org,127.0.0.1:" + port, "*"}) {
                    env.set("NO_PROXY", np);
                    http::client c({.tls = trusting_client(), .trust_env = true});
                    http::response r = co_await c.get(plain_url(plain, "/n"));
                    INFO("NO_PROXY=" << np << ": " << r.body);
                    CHECK(has(r.body, "via=\n"));
                }
                env.set("NO_PROXY", "127.0.0.1:1");  // another port: still proxied
                {
                    http::client c({.tls = trusting_client(), .trust_env = true});
                    http::response r = co_await c.get(plain_url(plain, "/n"));
                    CHECK(has(r.body, "tinyproxy"));
                }
                env.unset("http_proxy");
                env.unset("HTTPS_PROXY");
                env.unset("NO_PROXY");
            });
        }));
    });
}

TEST_CASE("an unreachable proxy is a connect error naming the proxy") {
    const std::uint16_t closed = hop_test::free_port();
    const std::string p = "http://127.0.0.1:" + std::to_string(closed);
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, [&]() -> hop::task<void> {
            http::client c({.proxy = p});
            for (const char* u : {"http://origin.invalid/", "https://origin.invalid/"}) {
                const failure f = co_await failure_of(c, u);
                INFO(f.what);
                CHECK(f.type == "system_error");
                CHECK(f.code == std::errc::connection_refused);
                CHECK(has(f.what, "connecting to the proxy " + p));
                CHECK(has(f.what, u));
            }
            CHECK(c.stats().open == 0);
        }());
    });
}

TEST_CASE("a proxy that closes in the middle of a CONNECT, or answers it badly") {
    struct answer_case {
        std::string answer;
        const char* type;
        int status;
        const char* says;
    };
    const std::vector<answer_case> cases = {
        {"", "proxy_error", 0, "closed the connection before answering CONNECT"},
        {"HTTP/1.1 200 Connec", "proxy_error", 0, "closed the connection before answering CONNECT"},
        {"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "proxy_error", 403, "refused CONNECT"},
        {"SSH-2.0-OpenSSH\r\n\r\n", "other", -1, "with something not HTTP"},
    };
    for_each_backend([&](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        run_on(loop, [&]() -> hop::task<void> {
            for (const auto& ac : cases) {
                auto l = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
                const std::string p = "http://127.0.0.1:" + std::to_string(l.local_endpoint().port());
                hop::future<void> serving = hop::current_loop()->spawn(scripted_proxy(l, ac.answer));
                http::client c({.proxy = p});
                const failure f = co_await failure_of(c, "https://origin.test:8443/");
                co_await serving;
                INFO(ac.answer << " -> " << f.what);
                CHECK(f.type == ac.type);
                CHECK(f.status == ac.status);
                CHECK(has(f.what, "the proxy " + p));
                CHECK(has(f.what, ac.says));
                CHECK(has(f.what, "origin.test:8443"));
                CHECK(c.stats().open == 0);
            }
        }());
    });
}

}  // TEST_SUITE
