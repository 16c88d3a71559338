// https in hop::http: the client against hop's server, nginx and a plain
// redirect; the server against curl, wrk and clients that do not speak TLS.
// hop::tls::stream itself is tested in tls_test.cpp.

#include <hop/http.hpp>

#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>
#include <hop/time.hpp>
#include <hop/tls.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/http_server_fixture.hpp"
#include "support/sockets.hpp"
#include "support/tls_certs.hpp"
#include "support/tls_peers.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::peer_result;
using hop_test::run_on;
using hop_test::run_peer;
namespace http = hop::http;

namespace {

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

std::string https_url(const http::server& srv, std::string_view path) {
    return "https://localhost:" + std::to_string(srv.local_endpoint().port()) + std::string(path);
}

// A log sink for the server's lines (called on its loop).
struct log_lines {
    std::mutex m;
    std::vector<std::string> lines;
    std::function<void(std::string_view)> sink() {
        return [this](std::string_view l) {
            std::lock_guard g(m);
            lines.emplace_back(l);
        };
    }
    bool any_contains(std::string_view s) {
        std::lock_guard g(m);
        for (const auto& l : lines) {
            if (l.find(s) != std::string::npos) return true;
        }
        return false;
    }
    std::string all() {
        std::lock_guard g(m);
        std::string out;
        for (const auto& l : lines) out += l + "\n";
        return out;
    }
};

}  // namespace

TEST_SUITE("http_tls") {

TEST_CASE("hop client and hop server over https: GET, a 1 MiB POST, keep-alive, resumption, ALPN") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(hop_test::test_app, tls_options(certs.localhost),
                                           [](http::server& srv) -> hop::task<void> {
            const auto ctx = trusting_client();
            {
                http::client client({.tls = ctx});
                for (int i = 0; i < 5; ++i) {
                    const std::string u = https_url(srv, "/n/" + std::to_string(i));
                    http::response r = co_await client.get(u);
                    CHECK(r.status == 200);
                    CHECK(r.body == "hello GET /n/" + std::to_string(i));
                }
                std::string big(1 << 20, '\0');
                for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i * 7 % 26);
                http::request post{.method = "POST", .url = https_url(srv, "/echo"), .headers = {}, .body = big};
                http::response e = co_await client.fetch(std::move(post));
                CHECK(e.status == 200);
                CHECK(e.body == big);
                const auto st = client.stats();
                CHECK(st.connects == 1);
                CHECK(st.reuses == 5);
                CHECK(st.tls_resumed == 0);
            }
            // A new pool with the same context resumes the session.
            http::client again({.tls = ctx});
            http::response r = co_await again.get(https_url(srv, "/again"));
            CHECK(r.body == "hello GET /again");
            CHECK(again.stats().tls_resumed == 1);
            // By IP address: the certificate names 127.0.0.1 too.
            const std::string by_ip = "https://127.0.0.1:" + std::to_string(srv.local_endpoint().port()) + "/ip";
            http::response ip = co_await again.get(by_ip);
            CHECK(ip.body == "hello GET /ip");
        }));
    });
}

TEST_CASE("one client, http and https to the same host: separate pools, both kept alive") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(hop_test::test_app, tls_options(certs.localhost),
                                           [](http::server& tls_srv) -> hop::task<void> {
            co_await hop_test::with_server(hop_test::test_app, hop_test::test_options(),
                                           [&tls_srv](http::server& plain) -> hop::task<void> {
                http::client client({.tls = trusting_client()});
                for (int i = 0; i < 3; ++i) {
                    http::response a = co_await client.get(https_url(tls_srv, "/s"));
                    http::response p = co_await client.get(hop_test::url_of(plain, "/p"));
                    CHECK(a.body == "hello GET /s");
                    CHECK(p.body == "hello GET /p");
                }
                CHECK(client.stats().connects == 2);
                CHECK(client.stats().reuses == 4);
                CHECK(tls_srv.stats().accepted == 1);
                CHECK(plain.stats().accepted == 1);
            });
        }));
    });
}

TEST_CASE("a redirect from http to https is followed over TLS") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(hop_test::test_app, tls_options(certs.localhost),
                                           [](http::server& tls_srv) -> hop::task<void> {
            const std::string target = https_url(tls_srv, "/landed");
            auto redirector = [target](http::request&) -> hop::task<http::response> {
                http::response r{.status = 302};
                r.headers.add("Location", target);
                co_return r;
            };
            co_await hop_test::with_server(redirector, hop_test::test_options(),
                                           [&](http::server& plain) -> hop::task<void> {
                http::client client({.tls = trusting_client()});
                http::response r = co_await client.get(hop_test::url_of(plain, "/start"));
                CHECK(r.status == 200);
                CHECK(r.body == "hello GET /landed");
            });
        }));
    });
}

TEST_CASE("certificate failures through the client: tls::error with the reason and the URL") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        struct bad_case {
            const hop_test::tls_cert_files* cert;
            const char* reason;
        };
        for (const bad_case& c : {bad_case{&certs.wrong_host, "hostname mismatch"},
                                  bad_case{&certs.expired, "certificate has expired"},
                                  bad_case{&certs.other_ca, "unable to get local issuer certificate"}}) {
            log_lines log;
            auto o = tls_options(*c.cert);
            o.log = log.sink();
            run_on(loop, hop_test::with_server(hop_test::test_app, o, [&](http::server& srv) -> hop::task<void> {
                http::client client({.tls = trusting_client()});
                const std::string u = https_url(srv, "/x");
                std::string what;
                long verify = 0;
                try {
                    (void)co_await client.get(u);
                    what = "(nothing thrown)";
                } catch (const hop::tls::error& e) {
                    what = e.what();
                    verify = e.verify_result();
                }
                CHECK_MESSAGE(what.find(c.reason) != std::string::npos, what);
                CHECK_MESSAGE(what.find(u) != std::string::npos, what);
                CHECK(verify != 0);
                // The server saw the client's alert and said so in its log.
                CHECK(srv.stats().requests == 0);
                // insecure_skip_verify gets through (and is the only way).
                auto insecure = hop::tls::context::client();
                insecure.insecure_skip_verify();
                http::client lax({.tls = insecure});
                http::response r = co_await lax.get(u);
                CHECK(r.body == "hello GET /x");
            }));
            CHECK_MESSAGE(log.any_contains("hop::tls::stream::accept"), log.all());
        }
    });
}

TEST_CASE("the https server: plain HTTP, garbage and a silent client are closed; it goes on serving") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        log_lines log;
        auto o = tls_options(certs.localhost);
        o.log = log.sink();
        o.header_timeout = 300ms;  // bounds the handshake too
        run_on(loop, hop_test::with_server(hop_test::test_app, o, [&](http::server& srv) -> hop::task<void> {
            // Plain HTTP to the TLS port: the handshake fails, the
            // connection is closed (OpenSSL's alert is all it gets).
            std::string answer = co_await hop_test::exchange(srv.local_endpoint(), hop_test::get_request("/"));
            CHECK(answer.find("HTTP/1.1") == std::string::npos);
            std::string junk(3000, '\x16');
            answer = co_await hop_test::exchange(srv.local_endpoint(), junk);
            CHECK(answer.find("hello") == std::string::npos);
            // A client that connects and says nothing: closed by header_timeout.
            auto silent = co_await hop::tcp_stream::connect(srv.local_endpoint());
            std::string got = co_await hop_test::read_until_close(silent);
            CHECK(got.empty());
            // And it still serves.
            http::client client({.tls = trusting_client()});
            http::response r = co_await client.get(https_url(srv, "/after"));
            CHECK(r.body == "hello GET /after");
            CHECK(srv.stats().requests == 1);
        }));
        CHECK_MESSAGE(log.any_contains("hop::tls::stream::accept from 127.0.0.1"), log.all());
    });
}

TEST_CASE("curl --cacert against the https server: GET, POST, two URLs on one connection, ALPN http/1.1") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(hop_test::test_app, tls_options(certs.localhost),
                                           [&](http::server& srv) -> hop::task<void> {
            const std::string port = std::to_string(srv.local_endpoint().port());
            const std::string resolve = "localhost:" + port + ":127.0.0.1";
            // --http1.1: the server also offers h2 (http2_server_test.cpp tests it).
            auto get_run = run_peer({"curl", "-sS", "-v", "--http1.1", "--fail", "--cacert", certs.ca, "--resolve",
                                     resolve, https_url(srv, "/one"), https_url(srv, "/two")});
            peer_result get = co_await std::move(get_run);
            REQUIRE_MESSAGE(get.exited_ok(), get.describe());
            CHECK(get.out == "hello GET /onehello GET /two");
            CHECK_MESSAGE(get.err.find("ALPN: server accepted http/1.1") != std::string::npos, get.err);
            CHECK_MESSAGE(get.err.find("Re-using existing connection") != std::string::npos, get.err);
            CHECK(srv.stats().accepted == 1);

            std::string body(200000, 'q');
            auto post_run = run_peer({"curl", "-sS", "--fail", "--cacert", certs.ca, "--resolve", resolve,
                                      "--data-binary", "@-", "-H", "Content-Type: text/x-test", https_url(srv, "/echo")},
                                     body);
            peer_result post = co_await std::move(post_run);
            REQUIRE_MESSAGE(post.exited_ok(), post.describe());
            CHECK(post.out == body);
        }));
    });
}

TEST_CASE("wrk over https against the server: no errors, only 2xx") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(hop_test::test_app, tls_options(certs.localhost),
                                           [](http::server& srv) -> hop::task<void> {
            auto r_run = run_peer({"wrk", "-t1", "-c10", "-d1s", https_url(srv, "/size/4096")});
            peer_result r = co_await std::move(r_run);
            const long requests = hop_test::wrk_clean_requests(r);
            CHECK(srv.stats().requests >= static_cast<std::uint64_t>(requests));
        }));
    });
}

TEST_CASE("h2load --h1 over https: 2000 requests on 10 connections all succeed") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        run_on(loop, hop_test::with_server(hop_test::test_app, tls_options(certs.localhost),
                                           [](http::server& srv) -> hop::task<void> {
            auto r_run = run_peer({"h2load", "--h1", "-n", "2000", "-c", "10", https_url(srv, "/")});
            peer_result r = co_await std::move(r_run);
            REQUIRE_MESSAGE(r.exited_ok(), r.describe());
            CHECK_MESSAGE(r.out.find("2000 succeeded, 0 failed, 0 errored") != std::string::npos, r.out);
            CHECK(srv.stats().requests == 2000);
        }));
    });
}

TEST_CASE("the client against nginx over TLS: body, SNI, a resumed session on a new pool") {
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        hop_test::nginx_tls_origin nginx(certs.localhost);
        auto body = [&]() -> hop::task<void> {
            const std::string base = "https://localhost:" + std::to_string(nginx.port());
            const auto ctx = trusting_client();
            {
                http::client client({.tls = ctx});
                http::response h = co_await client.get(base + "/hello");
                CHECK(h.status == 200);
                CHECK(h.body == "hello over tls\n");
                http::response s = co_await client.get(base + "/sni");
                CHECK_MESSAGE(s.body.find("sni=localhost") != std::string::npos, s.body);
                CHECK(client.stats().connects == 1);
                http::response missing = co_await client.get(base + "/no-such-file");
                CHECK(missing.status == 404);
            }
            http::client again({.tls = ctx});
            http::response h = co_await again.get(base + "/hello");
            CHECK(h.body == "hello over tls\n");
            CHECK(again.stats().tls_resumed == 1);
        };
        run_on(loop, body());
    });
}

TEST_CASE("one server context shared across threads: binding another server while this one shakes hands") {
    // Each bind sets ALPN http/1.1 on the context; a context in use is only
    // read then (TSan: no race with the handshakes on the loop).
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{options_for(b)};
        const auto& certs = hop_test::test_certs();
        auto o = tls_options(certs.localhost);
        const hop::tls::context shared = *o.tls;
        std::atomic<bool> done{false};
        std::atomic<int> binds{0};
        run_on(loop, hop_test::with_server(hop_test::test_app, o, [&](http::server& srv) -> hop::task<void> {
            // This server is bound: from here on the context is in use.
            std::thread binder([&] {
                while (!done.load()) {
                    http::server_options other = hop_test::test_options();
                    other.tls = shared;
                    auto more = http::server::bind(hop::endpoint::loopback_v4(0), hop_test::test_app, other);
                    binds.fetch_add(1);
                }
            });
            auto offering = trusting_client();
            offering.set_alpn({"http/1.1"});  // so each handshake reads the server's list
            for (int i = 0; i < 20; ++i) {
                http::client fresh({.tls = offering});  // a new connection, a full handshake
                const std::string u = https_url(srv, "/h");
                http::response r = co_await fresh.get(u);
                CHECK(r.body == "hello GET /h");
            }
            done.store(true);
            binder.join();
        }));
        CHECK(binds.load() > 0);
    });
}

TEST_CASE("bad TLS options: a server context for the client, a client context for the server") {
    const auto& certs = hop_test::test_certs();
    const std::string client_side = hop_test::what_of<std::invalid_argument>([&] {
        http::client c({.tls = hop::tls::context::server(certs.localhost.cert, certs.localhost.key)});
    });
    CHECK_MESSAGE(client_side.find("client_options::tls is a server context") != std::string::npos, client_side);
    hop::io_loop loop;
    const std::string server_side = hop_test::what_of<std::invalid_argument>([&] {
        http::server_options o;
        o.tls = hop::tls::context::client();
        (void)http::server::bind(hop::endpoint::loopback_v4(0), hop_test::test_app, o);
    });
    CHECK_MESSAGE(server_side.find("tls is a client context") != std::string::npos, server_side);
}

}  // TEST_SUITE
